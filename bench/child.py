"""One measurement, in its own process (bench/run.py starts one per measurement).

    python bench/child.py '<task as JSON>'

Prints one JSON line: the timings taken inside this process (imports and
tensor generation excluded), the peak RSS of the process (ru_maxrss, KiB) and
the peak RSS measured just before the timed operation (`rss_before_kib`, so the
operation's own growth is the difference).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import torch


def maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def make_tensors(n: int, rows: int, cols: int, seed: int) -> dict[str, torch.Tensor]:
    """Random float32 tensors (normal, so no zero pages and no compressible runs)."""
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(rows, cols, generator=g) for i in range(n)}


def checksum(tensors: dict[str, torch.Tensor]) -> float:
    """Read every byte once: a float sum over every tensor."""
    return float(sum(float(t.sum()) for t in tensors.values()))


def cryptotensors_keys(keys_path: str) -> None:
    import cryptotensors

    cryptotensors.register_direct_key_provider(files=[keys_path])


def do_save(task: dict[str, Any]) -> dict[str, Any]:
    m = task["model"]
    tensors = make_tensors(m["tensors"], m["rows"], m["cols"], m["seed"])
    out = task["out"]
    system = task["system"]
    keys = task.get("keys", {})
    if os.path.exists(out):
        os.unlink(out)
    before = maxrss_kib()
    t0 = time.perf_counter()
    if system in ("safetensors", "safetensors+fsync"):
        import safetensors.torch

        safetensors.torch.save_file(tensors, out)
        if system == "safetensors+fsync":
            fd = os.open(out, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elif system == "cryptotensors":
        import cryptotensors.torch

        with open(keys["cryptotensors"]) as fh:
            jwks = json.load(fh)["keys"]
        enc = next(k for k in jwks if k["kty"] == "oct")
        sign = next(k for k in jwks if k["kty"] == "okp")
        cryptotensors.torch.save_file(tensors, out, config={"enc_key": enc, "sign_key": sign})
    else:
        import sealtensors.torch as st

        if system == "seal-aes":
            st.save_file(tensors, out, recipients=[keys["recipient"]], cipher="aes-256-gcm")
        elif system == "seal-chacha":
            st.save_file(tensors, out, recipients=[keys["recipient"]], cipher="chacha20-poly1305")
        elif system == "seal-sign":
            st.save_file(tensors, out, sign_key=keys["sign_key"])
        else:
            raise SystemExit(f"unknown save system {system}")
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rss_before_kib": before, "maxrss_kib": maxrss_kib()}


def do_load(task: dict[str, Any]) -> dict[str, Any]:
    path = task["path"]
    system = task["system"]
    keys = task.get("keys", {})
    if system == "cryptotensors":
        import cryptotensors.torch

        cryptotensors_keys(keys["cryptotensors"])
        load = cryptotensors.torch.load_file
    elif system == "safetensors":
        import safetensors.torch

        load = safetensors.torch.load_file
    else:
        import sealtensors.torch as st

        kw: dict[str, Any] = {}
        if system in ("seal-aes", "seal-chacha"):
            kw["identities"] = [keys["identity"]]
        elif system == "seal-sign":
            kw["trusted"] = [keys["signer"]]

        def load(p: str) -> dict[str, torch.Tensor]:
            return st.load_file(p, **kw)

    before = maxrss_kib()
    t0 = time.perf_counter()
    tensors = load(path)
    t1 = time.perf_counter()
    s = checksum(tensors)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "load_seconds": t1 - t0,
        "sum_seconds": t2 - t1,
        "checksum": s,
        "rss_before_kib": before,
        "maxrss_kib": maxrss_kib(),
    }


def do_slice(task: dict[str, Any]) -> dict[str, Any]:
    """One tensor, whole or its first 1/8 of rows, through safe_open + get_slice."""
    path = task["path"]
    system = task["system"]
    keys = task.get("keys", {})
    name = task["tensor"]
    part = task["part"]
    if system == "cryptotensors":
        import cryptotensors

        cryptotensors_keys(keys["cryptotensors"])
        opener = cryptotensors.safe_open
        kw: dict[str, Any] = {}
    elif system == "safetensors":
        import safetensors

        opener = safetensors.safe_open
        kw = {}
    else:
        import sealtensors

        opener = sealtensors.safe_open
        kw = {"identities": [keys["identity"]]} if system in ("seal-aes", "seal-chacha") else {}
    before = maxrss_kib()
    t0 = time.perf_counter()
    with opener(path, "pt", **kw) as f:
        t1 = time.perf_counter()
        if part == "full":
            x = f.get_tensor(name)
        else:
            sl = f.get_slice(name)
            rows = sl.get_shape()[0]
            x = sl[0 : rows // 8]
        s = float(x.sum())
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "open_seconds": t1 - t0,
        "bytes": x.numel() * x.element_size(),
        "checksum": s,
        "rss_before_kib": before,
        "maxrss_kib": maxrss_kib(),
    }


def main() -> None:
    task = json.loads(sys.argv[1])
    torch.set_num_threads(os.cpu_count() or 1)
    fn = {"save": do_save, "load": do_load, "slice": do_slice}[task["kind"]]
    print(json.dumps(fn(task)))


if __name__ == "__main__":
    main()

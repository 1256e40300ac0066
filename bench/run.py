"""The sealtensors benchmark suite: `make bench` (full) or `make bench ARGS=--quick`.

Generates one model of 8 large random float32 tensors (1 GiB; 256 MiB with
--quick), saves it with every system, then measures side by side, each
measurement in its own subprocess (bench/child.py), after one warm-up round,
rounds interleaved across systems, medians over --reps repetitions:

- save/seal time and peak RSS;
- load time with every byte materialised (load_file, then a float sum over
  every tensor), warm page cache, and peak RSS;
- the floor (bench/floor: pread + aws-lc-rs AES-256-GCM on all cores);
- a 1/8 row slice of one tensor against the whole tensor;
- file sizes.

Results go to bench/results/<date>-<mode>.json and docs/benchmarks.md
(bench/report.py renders the latter from the former).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = HERE / "child.py"
FLOOR_DIR = HERE / "floor"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", str(ROOT / "bench" / "floor" / "target")))

SAVE_SYSTEMS = [
    "safetensors",
    "safetensors+fsync",
    "seal-aes",
    "seal-chacha",
    "seal-sign",
    "cryptotensors",
]
# Which saved file each load system reads.
LOAD_SYSTEMS = {
    "safetensors": "safetensors",
    "sealtensors-plain": "safetensors",
    "seal-aes": "seal-aes",
    "seal-chacha": "seal-chacha",
    "seal-sign": "seal-sign",
    "cryptotensors": "cryptotensors",
}
SLICE_SYSTEMS = ["safetensors", "seal-aes", "cryptotensors"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def child(task: dict[str, Any]) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(task)], capture_output=True, text=True
    )
    if p.returncode != 0:
        raise SystemExit(f"child failed: {task}\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def b64std(b: bytes) -> str:
    return base64.b64encode(b).decode()


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def make_keys(work: Path) -> dict[str, str]:
    import sealtensors

    recipient = sealtensors.keygen(work / "id.jwk", overwrite=True)
    signer = sealtensors.keygen(work / "sign.jwk", "ed25519", overwrite=True)
    # cryptotensors: a symmetric AES-256-GCM key and an Ed25519 signing key (its
    # save requires both), standard padded base64 as it expects.
    sign = json.loads((work / "sign.jwk").read_text())
    jwks = {
        "keys": [
            {"kty": "oct", "alg": "aes256gcm", "kid": "bench-enc", "k": b64std(os.urandom(32))},
            {
                "kty": "okp",
                "alg": "ed25519",
                "kid": "bench-sign",
                "d": b64std(b64u_decode(sign["d"])),
                "x": b64std(b64u_decode(sign["x"])),
            },
        ]
    }
    (work / "cryptotensors-keys.json").write_text(json.dumps(jwks))
    return {
        "recipient": recipient,
        "identity": str(work / "id.jwk"),
        "sign_key": str(work / "sign.jwk"),
        "signer": signer,
        "cryptotensors": str(work / "cryptotensors-keys.json"),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every numeric field, plus the raw runs."""
    out: dict[str, Any] = {"runs": runs}
    for k in runs[0]:
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        if vals and k != "checksum":
            out[k] = statistics.median(vals)
    if "checksum" in runs[0]:
        out["checksum"] = runs[0]["checksum"]
    return out


LOADAVG: list[float] = []


def rounds(
    names: list[str], task_of: Any, reps: int, warmup: int, what: str
) -> dict[str, dict[str, Any]]:
    """Run every system once per round, warm-up rounds discarded."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(warmup + reps):
        for n in names:
            LOADAVG.append(os.getloadavg()[0])
            res = task_of(n)
            tag = "warm-up" if r < warmup else f"rep {r - warmup + 1}/{reps}"
            log(f"{what} {n:<18} {tag:<10} {res['seconds']:.3f} s")
            if r >= warmup:
                runs[n].append(res)
    return {n: summary(v) for n, v in runs.items()}


def build_floor() -> Path:
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR))
    subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "--quiet",
            "--manifest-path",
            str(FLOOR_DIR / "Cargo.toml"),
        ],
        check=True,
        env=env,
    )
    return TARGET_DIR / "release" / "sealtensors-bench-floor"


def chunk_size_of(path: Path) -> int:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    seal = json.loads(header["__metadata__"]["sealtensors.seal"])
    return int(seal["chunk_size"])


def machine() -> dict[str, Any]:
    cpu = ""
    flags: list[str] = []
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    versions = {}
    for mod in ("torch", "safetensors", "cryptotensors", "sealtensors", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 (report, do not fail)
            versions[mod] = f"unavailable: {e}"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "crates", "python"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "cpu_flags": [f for f in ("aes", "pclmulqdq", "avx2", "avx512f", "vaes") if f in flags],
        "mem_total_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "thp": thp.read_text().strip() if thp.exists() else "",
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit + (" (library tree modified)" if dirty else ""),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB model, 3 reps")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rows", type=int, default=None, help="rows per tensor (testing only)")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/sealtensors-bench"))
    ap.add_argument("--no-render", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args()

    mode = "quick" if args.quick else "full"
    reps = args.reps or (3 if args.quick else 5)
    if reps < 3:
        raise SystemExit("--reps must be at least 3")
    rows, cols, n = args.rows or (2048 if args.quick else 8192), 4096, 8
    model = {"tensors": n, "rows": rows, "cols": cols, "dtype": "F32", "seed": 1234}
    total = n * rows * cols * 4
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log(
        f"mode {mode}: {n} float32 tensors of [{rows}, {cols}], {total / 2**20:.0f} MiB in all"
        + (" (quick mode: 256 MiB, not the 1 GiB of the full run)" if args.quick else "")
        + f"; {args.warmup} warm-up round, {reps} reps, files in {work}"
    )

    keys = make_keys(work)
    files = {s: str(work / f"{s.replace('+', '-')}.safetensors") for s in SAVE_SYSTEMS}
    files["cryptotensors"] = str(work / "model.cryptotensors")

    log("building the floor (bench/floor)")
    floor_bin = build_floor()

    # Saves: each writes the file the loads read (the last rep's output stays).
    save = rounds(
        SAVE_SYSTEMS,
        lambda s: child(
            {"kind": "save", "system": s, "model": model, "out": files[s], "keys": keys}
        ),
        reps,
        args.warmup,
        "save",
    )
    sizes = {s: os.path.getsize(files[s]) for s in SAVE_SYSTEMS if s != "safetensors+fsync"}
    os.unlink(files["safetensors+fsync"])

    chunk = chunk_size_of(Path(files["seal-aes"]))
    floor_out = str(work / "floor")
    subprocess.run(
        [str(floor_bin), "prepare", files["seal-aes"], floor_out, str(chunk)], check=True
    )

    def floor_task(variant: str) -> dict[str, Any]:
        argv = [str(floor_bin), "run", floor_out] + (["--no-thp"] if variant == "no-thp" else [])
        p = subprocess.run(argv, capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])

    load_names = list(LOAD_SYSTEMS) + ["floor", "floor-no-thp"]

    def load_task(s: str) -> dict[str, Any]:
        if s == "floor":
            return floor_task("thp")
        if s == "floor-no-thp":
            return floor_task("no-thp")
        return child({"kind": "load", "system": s, "path": files[LOAD_SYSTEMS[s]], "keys": keys})

    load = rounds(load_names, load_task, reps, args.warmup, "load")

    slice_names = [f"{s}:{p}" for s in SLICE_SYSTEMS for p in ("full", "slice")]

    def slice_task(sp: str) -> dict[str, Any]:
        s, part = sp.split(":")
        return child(
            {
                "kind": "slice",
                "system": s,
                "part": part,
                "path": files[s],
                "tensor": "layers.3.weight",
                "keys": keys,
            }
        )

    sl = rounds(slice_names, slice_task, reps, args.warmup, "slice")

    # Every system must have read the same numbers.
    ref = load["safetensors"]["checksum"]
    mismatches = {
        s: v["checksum"]
        for s, v in load.items()
        if "checksum" in v and not s.startswith("floor") and abs(v["checksum"] - ref) > 1e-3
    }
    if mismatches:
        log(f"WARNING: checksums differ from safetensors ({ref}): {mismatches}")

    date = datetime.date.today().isoformat()
    result = {
        "date": date,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "elapsed_seconds": round(time.time() - started, 1),
        "command": "make bench" + (" ARGS=--quick" if args.quick else ""),
        "machine": machine(),
        "model": {**model, "bytes": total, "chunk_size": chunk, "slice_tensor": "layers.3.weight"},
        "reps": reps,
        "warmup": args.warmup,
        "sizes": sizes,
        "save": save,
        "load": load,
        "slice": sl,
        "checksum_mismatches": mismatches,
        "loadavg": {"start": LOADAVG[0], "end": os.getloadavg()[0], "max": max(LOADAVG)},
    }
    out = HERE / "results" / f"{date}-{mode}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out.relative_to(ROOT)} ({result['elapsed_seconds']} s)")

    sys.path.insert(0, str(HERE))
    import report

    print(report.console(result))
    if not args.no_render:
        doc = ROOT / "docs" / "benchmarks.md"
        doc.write_text(report.markdown(result, out.relative_to(ROOT).as_posix()))
        log(f"wrote {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

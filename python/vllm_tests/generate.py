"""Greedy text from vLLM, in a process of its own (vLLM spawns its workers, so
this runs under a `__main__` guard).

    python generate.py MODEL_DIR LOAD_FORMAT [PROMPT]

Prints one line, ``TEXT=`` and the generated text as JSON. Extra engine
arguments (tensor_parallel_size, model_loader_extra_config, ...) come as a
JSON object in VLLM_TEST_ENGINE_EXTRA.
"""

from __future__ import annotations

import json
import os
import sys

PROMPT = "The capital of France is"
MAX_TOKENS = 8
# The engine settings shared with the `vllm serve` test: small, CPU-friendly.
ENGINE = {
    "dtype": "float32",
    "max_model_len": 256,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.1,  # on CPU: the share of RAM vLLM reserves
}


def main() -> None:
    from vllm import LLM, SamplingParams

    model, load_format = sys.argv[1], sys.argv[2]
    prompt = sys.argv[3] if len(sys.argv) > 3 else PROMPT
    extra = json.loads(os.environ.get("VLLM_TEST_ENGINE_EXTRA", "{}"))
    llm = LLM(model=model, load_format=load_format, seed=0, **{**ENGINE, **extra})
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    print("TEXT=" + json.dumps(out[0].outputs[0].text), flush=True)


if __name__ == "__main__":
    main()

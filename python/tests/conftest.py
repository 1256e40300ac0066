"""Shared fixtures: build the Rust interop driver once per session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


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

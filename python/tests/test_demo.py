"""The README's first command, as a test: seal the real MiniLM model, load it
back through transformers, and check the embeddings match exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_minilm_demo_end_to_end(tmp_path: Path) -> None:
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "-p", "sealtensors", "--example", "model_demo"],
        cwd=ROOT,
        check=True,
    )
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"))
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "embeddings from the unsealed model equal the original: True" in r.stdout
    assert "unsealed file byte-identical to the original: True" in r.stdout
    assert "DEMO OK" in r.stdout
    sealed = tmp_path / "demo" / "sealed" / "model.safetensors"
    keys = tmp_path / "demo" / "keys"
    assert sealed.exists()
    for k in keys.iterdir():
        assert k.stat().st_mode & 0o777 == 0o600, k

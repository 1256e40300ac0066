"""The README's first command, as a test: seal the real MiniLM model, load it
through unmodified transformers, and check the embeddings match exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_minilm_demo_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"))
    for k in ("SEALTENSORS_IDENTITY", "SEALTENSORS_TRUST"):
        env.pop(k, None)
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "embeddings from the sealed model equal the original: True" in r.stdout
    assert "DEMO OK" in r.stdout
    for k in (tmp_path / "demo" / "keys").iterdir():
        assert k.stat().st_mode & 0o777 == 0o600, k

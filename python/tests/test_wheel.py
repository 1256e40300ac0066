"""The built wheel installs with pip into a fresh venv, imports, ships its type
stubs, and its `.pth` line turns SEALTENSORS_AUTO=1 on in a new process.

Builds the wheel with maturin (the Rust build is shared with `make py-build`,
so it is mostly cached) and installs it with its declared dependencies
(numpy, safetensors) from the package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sealtensors
import sealtensors.numpy as snp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent))
    if maturin is None:
        pytest.skip("maturin is not installed in this environment")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [maturin, "build", "--release", "--quiet", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=1800,
    )
    (wheel,) = out.glob("sealtensors-*.whl")
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=900,
    )
    return py


def _site(py: Path) -> Path:
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def test_wheel_installs_imports_and_ships_stubs(venv: Path) -> None:
    site = _site(venv)
    assert (site / "sealtensors" / "_native.pyi").is_file()
    assert (site / "sealtensors" / "py.typed").is_file()
    assert (site / "sealtensors_auto.pth").is_file()
    assert (site / "_sealtensors_autohook.py").is_file()
    proc = subprocess.run(
        [str(venv), "-c", "import sealtensors, sealtensors.numpy; print(sealtensors.__version__)"],
        capture_output=True,
        text=True,
        cwd="/",  # not the repository: the installed package, not python/
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == sealtensors.__version__


def test_installed_pth_turns_the_switch_on(venv: Path, tmp_path: Path) -> None:
    ident = tmp_path / "id.jwk"
    recipient = sealtensors.keygen(ident)
    data = np.linspace(-1, 1, 4096, dtype=np.float32)
    path = tmp_path / "m.safetensors"
    snp.save_file({"w": data}, path, recipients=[recipient])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALTENSORS_")}
    env["SEALTENSORS_IDENTITY"] = str(ident)
    code = (
        "import safetensors.numpy as s, sys\n"
        f"print('SUM', float(s.load_file({str(path)!r})['w'].sum()))\n"
        "print('FROM', sys.modules['sealtensors'].__file__)\n"
    )
    on = subprocess.run(
        [str(venv), "-c", code],
        env={**env, "SEALTENSORS_AUTO": "1"},
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert on.returncode == 0, on.stderr
    assert f"SUM {float(data.sum())}" in on.stdout
    assert str(_site(venv)) in on.stdout  # the installed copy did the work
    off = subprocess.run([str(venv), "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert f"SUM {float(data.sum())}" not in off.stdout

"""SEALTENSORS_AUTO=1: transparent loading in every Python process, through the
`.pth` line the wheel installs (python/sealtensors_auto.pth), and `make
py-build` installs in the development venv.

Each case runs a fresh interpreter. Most process the `.pth` file the way
site-packages processes it at start-up (`site.addsitedir` on a folder that
holds a copy of it), so the line itself and the import hook are what is
tested; test_wheel.py checks that the built wheel installs the file, and
`test_the_switch_works_in_this_installation` that this environment has it.
Where it is missing (`python -S` here), importing sealtensors warns and turns
sealtensors.auto on.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sealtensors
import sealtensors.numpy as snp

ROOT = Path(__file__).resolve().parents[2]
PTH = ROOT / "python" / "sealtensors_auto.pth"


@pytest.fixture()
def setup(tmp_path: Path) -> dict:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(PTH, site_dir / PTH.name)
    ident = tmp_path / "id.jwk"
    recipient = sealtensors.keygen(ident)
    data = np.arange(1000, dtype=np.float32).reshape(10, 100)
    sealed = tmp_path / "sealed.safetensors"
    snp.save_file({"w": data}, sealed, recipients=[recipient])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALTENSORS_")}
    env["SEALTENSORS_IDENTITY"] = str(ident)
    return {"site": site_dir, "sealed": sealed, "data": data, "env": env, "tmp": tmp_path}


def _run(setup: dict, code: str, auto: str | None, extra_path: str | None = None):
    env = dict(setup["env"])
    if auto is not None:
        env["SEALTENSORS_AUTO"] = auto
    if extra_path is not None:
        env["PYTHONPATH"] = extra_path
    prelude = f"import site, sys\nsite.addsitedir({str(setup['site'])!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


LOAD_EVERY_WAY = """
    before = ("sealtensors" in sys.modules, "safetensors" in sys.modules)
    from safetensors import safe_open
    import safetensors.numpy
    import numpy as np
    path = {path!r}
    with safe_open(path, framework="np") as f:
        a = f.get_tensor("w")
    b = safetensors.numpy.load_file(path)["w"]
    with open(path, "rb") as fh:
        c = safetensors.numpy.load(fh.read())["w"]
    # The lower-level entry points: bytes, and an open file.
    import safetensors
    with open(path, "rb") as fh:
        (name, d), = safetensors.deserialize(fh.read())
        with safetensors._safe_open_handle(fh, "np") as f:
            e = f.get_tensor("w")
    d = np.frombuffer(d["data"], dtype=np.float32)
    print("BEFORE", before)
    print("TORCH", "torch" in sys.modules)
    print("SUMS", float(a.sum()), float(b.sum()), float(c.sum()))
    print("LOW", float(d.sum()), float(e.sum()))
"""


@pytest.mark.parametrize("value", ["1", "true", "ON", "2", "enabled"])
def test_env_switch_opens_sealed_files_in_a_fresh_process(setup: dict, value: str) -> None:
    proc = _run(setup, LOAD_EVERY_WAY.format(path=str(setup["sealed"])), value)
    assert proc.returncode == 0, proc.stderr
    total = float(setup["data"].sum())
    assert f"SUMS {total} {total} {total}" in proc.stdout
    assert f"LOW {total} {total}" in proc.stdout
    # Nothing is imported at start-up, and torch is never pulled in by the hook.
    assert "BEFORE (False, False)" in proc.stdout
    assert "TORCH False" in proc.stdout


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_without_the_switch_safetensors_is_untouched(setup: dict, value: str | None) -> None:
    code = """
        from safetensors import safe_open
        print("SEALTENSORS", "sealtensors" in sys.modules)
        with safe_open({path!r}, framework="np") as f:
            print("SUM", float(f.get_tensor("w").sum()))
    """.format(path=str(setup["sealed"]))
    proc = _run(setup, code, value)
    assert proc.returncode == 0, proc.stderr
    assert "SEALTENSORS False" in proc.stdout
    # The real safetensors reads the ciphertext as floats: not the data.
    assert f"SUM {float(setup['data'].sum())}" not in proc.stdout


def test_the_switch_fails_closed_when_sealtensors_cannot_load(setup: dict) -> None:
    """A broken sealtensors makes `import safetensors` fail, never silently
    hand ciphertext to the model."""
    fake = setup["tmp"] / "fake"
    (fake / "sealtensors").mkdir(parents=True)
    (fake / "sealtensors" / "__init__.py").write_text("raise ImportError('broken install')\n")
    # The hook module itself must stay importable (it lives beside the package).
    shutil.copy(ROOT / "python" / "_sealtensors_autohook.py", fake)
    proc = _run(setup, "import safetensors\nprint('LOADED')", "1", extra_path=str(fake))
    assert proc.returncode != 0
    assert "broken install" in proc.stderr
    assert "LOADED" not in proc.stdout


def test_plain_files_are_unchanged_under_the_switch(setup: dict) -> None:
    plain = setup["tmp"] / "plain.safetensors"
    snp.save_file({"w": setup["data"]}, plain)
    code = f"""
        import safetensors.numpy
        print("SUM", float(safetensors.numpy.load_file({str(plain)!r})["w"].sum()))
    """
    proc = _run(setup, code, "1")
    assert proc.returncode == 0, proc.stderr
    assert f"SUM {float(setup['data'].sum())}" in proc.stdout


def test_the_switch_reaches_transformers(setup: dict) -> None:
    """Unmodified transformers code, no sealtensors import anywhere in it."""
    import sealtensors.hf
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    model = BertModel(cfg).eval()
    folder = setup["tmp"] / "bert"
    recipient = sealtensors.keygen(setup["tmp"] / "deployer.jwk")
    sealtensors.hf.save_pretrained(model, folder, recipients=[recipient])
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    np.save(setup["tmp"] / "expected.npy", expected.numpy())
    setup["env"]["SEALTENSORS_IDENTITY"] = str(setup["tmp"] / "deployer.jwk")
    setup["env"]["HF_HUB_OFFLINE"] = "1"
    code = """
        import numpy as np, torch
        from transformers import BertModel
        m = BertModel.from_pretrained({folder!r}).eval()
        with torch.no_grad():
            out = m(input_ids=torch.arange(8).reshape(1, 8)).last_hidden_state
        print("EQUAL", bool((out.numpy() == np.load({exp!r})).all()))
    """.format(folder=str(folder), exp=str(setup["tmp"] / "expected.npy"))
    proc = _run(setup, code, "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "EQUAL True" in proc.stdout


@pytest.mark.parametrize(
    "first",
    ["import sealtensors", "import sealtensors.torch", "from sealtensors.vllm import register"],
)
def test_sealtensors_imported_before_safetensors(setup: dict, first: str) -> None:
    """The vLLM plugin (and any user) imports sealtensors first: the hook
    then runs while sealtensors is importing, and must not trip over it."""
    code = first + "\n" + textwrap.dedent(LOAD_EVERY_WAY.format(path=str(setup["sealed"])))
    proc = _run(setup, code, "1")
    assert proc.returncode == 0, proc.stderr
    total = float(setup["data"].sum())
    assert f"SUMS {total} {total} {total}" in proc.stdout
    assert f"LOW {total} {total}" in proc.stdout


def test_reimported_submodules_are_patched_again(setup: dict) -> None:
    """A reload (or a fresh import after `del sys.modules[...]`) defines a new
    `load`: it is patched as it arrives, never left reading ciphertext."""
    code = """
        import importlib
        import safetensors.numpy
        path = {path!r}
        data = open(path, "rb").read()
        importlib.reload(safetensors.numpy)
        a = safetensors.numpy.load(data)["w"]
        for name in [m for m in sys.modules if m.startswith("safetensors")]:
            del sys.modules[name]
        import safetensors.numpy as again
        b = again.load(data)["w"]
        with again.safe_open(path, framework="np") as f:
            c = f.get_tensor("w")
        print("SUMS", float(a.sum()), float(b.sum()), float(c.sum()))
    """.format(path=str(setup["sealed"]))
    proc = _run(setup, code, "1")
    assert proc.returncode == 0, proc.stderr
    total = float(setup["data"].sum())
    assert f"SUMS {total} {total} {total}" in proc.stdout


def test_start_up_imports_only_the_hook(setup: dict) -> None:
    """A process that never loads safetensors pays for one small module: the
    modules loaded at start-up with the switch on and off differ by it alone
    (whether or not this installation's site-packages has the line too)."""
    code = "print('MODS', sorted(sys.modules))"
    on, off = (_run(setup, code, value) for value in ("1", None))
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    mods_on, mods_off = (set(ast.literal_eval(p.stdout.split("MODS", 1)[1])) for p in (on, off))
    assert mods_on - mods_off <= {"__future__", "_sealtensors_autohook"}, mods_on - mods_off
    assert "_sealtensors_autohook" in mods_on - mods_off


def test_the_wrapped_loader_copies_and_serves_resources(setup: dict) -> None:
    code = """
        import copy, importlib.util, importlib.resources
        spec = importlib.util.find_spec("safetensors.numpy")
        copy.copy(spec.loader)
        copy.deepcopy(spec)
        print("PKG", spec.loader.is_package("safetensors.numpy"))
        print("RES", importlib.resources.files("safetensors").joinpath("__init__.py").is_file())
    """
    proc = _run(setup, code, "1")
    assert proc.returncode == 0, proc.stderr
    assert "PKG False" in proc.stdout and "RES True" in proc.stdout


PLAIN_SAFETENSORS = textwrap.dedent("""
    hook = "_sealtensors_autohook" in sys.modules
    from safetensors import safe_open
    with safe_open({path!r}, framework="np") as f:
        print("SUM", float(f.get_tensor("w").sum()))
    print("HOOK", hook, "SEALTENSORS", "sealtensors" in sys.modules)
""")


def test_the_switch_works_in_this_installation(setup: dict) -> None:
    """This environment's own site-packages carries the `.pth` line: no
    site.addsitedir here. In the development venv `make py-build` puts it
    there (`maturin develop` does not); before it did, SEALTENSORS_AUTO=1
    did nothing in that venv, and plain safetensors read the ciphertext with
    no error."""
    code = "import sys\n" + PLAIN_SAFETENSORS.format(path=str(setup["sealed"]))
    env = dict(setup["env"], SEALTENSORS_AUTO="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"SUM {float(setup['data'].sum())}" in proc.stdout
    assert "HOOK True SEALTENSORS True" in proc.stdout
    assert "start-up hook did not run" not in proc.stderr


def _without_site(setup: dict, code: str, auto: str | None) -> subprocess.CompletedProcess:
    """`python -S`: no .pth file is processed, as where the hook is not installed.
    The packages stay importable through PYTHONPATH (sealtensors' own folder
    first: in an editable install it is the source tree)."""
    import sysconfig

    env = dict(setup["env"])
    if auto is not None:
        env["SEALTENSORS_AUTO"] = auto
    pkg_root = Path(sealtensors.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(pkg_root), sysconfig.get_paths()["purelib"]])
    return subprocess.run(
        [sys.executable, "-S", "-c", "import sys\n" + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_the_hook_plain_safetensors_reads_ciphertext(setup: dict) -> None:
    """What the missing hook means (the documented limit of the switch): a
    process that never imports sealtensors gets the ciphertext."""
    proc = _without_site(setup, PLAIN_SAFETENSORS.format(path=str(setup["sealed"])), "1")
    assert proc.returncode == 0, proc.stderr
    assert "HOOK False SEALTENSORS False" in proc.stdout
    assert f"SUM {float(setup['data'].sum())}" not in proc.stdout


def test_import_sealtensors_warns_and_falls_back_without_the_hook(setup: dict) -> None:
    """A process that imports sealtensors with the variable on but no hook
    installed says so on stderr and turns sealtensors.auto on itself."""
    code = "import sealtensors\n" + PLAIN_SAFETENSORS.format(path=str(setup["sealed"]))
    proc = _without_site(setup, code, "1")
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning: SEALTENSORS_AUTO is set but its start-up hook did not run" in (
        proc.stderr
    )
    assert f"SUM {float(setup['data'].sum())}" in proc.stdout


@pytest.mark.parametrize("value", [None, "0"])
def test_import_sealtensors_is_quiet_without_the_switch(setup: dict, value: str | None) -> None:
    code = "import sealtensors\n" + PLAIN_SAFETENSORS.format(path=str(setup["sealed"]))
    proc = _without_site(setup, code, value)
    assert proc.returncode == 0, proc.stderr
    assert "start-up hook did not run" not in proc.stderr
    assert f"SUM {float(setup['data'].sum())}" not in proc.stdout  # auto stays off

"""Edited sealed model folders are refused by every Python reader: transformers
under `sealtensors.auto` (which opens shards one at a time), `safe_open` of a
shard, `sealtensors.verify`, and the CLI (SPEC §8.5; before it, a deleted shard loaded
with random weights; a shard of another sealing, or one outside the folder,
loaded without a word)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sealtensors
import sealtensors.hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import _target_dir, tiny_llama  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

CLI = _target_dir() / "release" / "sealtensors"


@pytest.fixture()
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two sealings of one tiny Llama in shards, for one deployer, signed by
    one publisher whom the loader trusts."""
    ident = tmp_path / "deployer.jwk"
    recipient = sealtensors.keygen(ident)
    signer = sealtensors.keygen(tmp_path / "publisher.jwk", "ed25519")
    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(ident))
    monkeypatch.setenv("SEALTENSORS_TRUST", signer)
    model = tiny_llama(3)
    out = {}
    for name in ("a", "b"):
        sealtensors.hf.save_pretrained(
            model,
            tmp_path / name,
            recipients=[recipient],
            sign_key=tmp_path / "publisher.jwk",
            max_shard_size="40KB",
        )
        out[name] = tmp_path / name
    shards = sorted(p.name for p in out["a"].glob("*.safetensors"))
    assert len(shards) >= 3, shards
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    yield {**out, "shards": shards, "ident": ident, "signer": signer}
    auto.disable()


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _write_index(folder: Path, index: dict) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _cli_verify(folder: Path, sealed: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), "verify", "-i", str(sealed["ident"]), "--trust", sealed["signer"], str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_intact_folder_loads(sealed: dict) -> None:
    AutoModelForCausalLM.from_pretrained(sealed["a"])
    assert _cli_verify(sealed["a"], sealed).returncode == 0


def test_deleted_shard_is_refused(sealed: dict) -> None:
    folder, victim = sealed["a"], sealed["shards"][1]
    (folder / victim).unlink()
    index = _index(folder)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != victim}
    _write_index(folder, index)
    with pytest.raises(sealtensors.NotAuthenticError, match="missing: shard 2"):
        AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(sealtensors.NotAuthenticError, match="missing"):
        sealtensors.safe_open(folder / sealed["shards"][0], framework="pt")
    with pytest.raises(sealtensors.NotAuthenticError, match="missing"):
        sealtensors.verify(folder)
    # One shard verified on its own is judged with its folder, by Python
    # and the CLI alike (model::open_path).
    with pytest.raises(sealtensors.NotAuthenticError, match="missing"):
        sealtensors.verify(folder / sealed["shards"][0])
    for target in (folder, folder / sealed["shards"][0]):
        r = _cli_verify(target, sealed)
        assert r.returncode == 3, r.stderr
        assert "missing" in r.stderr


def test_shard_of_another_sealing_is_refused(sealed: dict) -> None:
    name = sealed["shards"][1]
    shutil.copy(sealed["b"] / name, sealed["a"] / name)
    with pytest.raises(sealtensors.NotAuthenticError, match="not shards of one sealed model"):
        AutoModelForCausalLM.from_pretrained(sealed["a"])
    r = _cli_verify(sealed["a"], sealed)
    assert r.returncode == 3, r.stderr


def test_index_entry_outside_the_folder_is_refused(sealed: dict) -> None:
    folder, last = sealed["a"], sealed["shards"][-1]
    index = _index(folder)
    outside = f"../b/{last}"
    index["weight_map"] = {k: (outside if v == last else v) for k, v in index["weight_map"].items()}
    _write_index(folder, index)
    with pytest.raises(sealtensors.InvalidFileError, match="not a file name"):
        AutoModelForCausalLM.from_pretrained(folder)
    r = _cli_verify(folder, sealed)
    assert r.returncode == 5, r.stderr

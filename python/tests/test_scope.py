"""Load scopes (`sealtensors.load_scope()`, SPEC §8.5): the opens of one
folder share a key only within one thread's scope, only under the same keys
as loaded (not merely the same key paths), and not after
`forget_released_keys()`."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import sealtensors
import sealtensors.torch as stt
import torch
from sealtensors import safe_open
from sealtensors._lazy import LazyTensor


@pytest.fixture()
def folder(tmp_path: Path) -> dict:
    plain = tmp_path / "plain"
    plain.mkdir()
    for k in range(1, 4):
        stt.save_file({f"w{k}": torch.randn(16, 16)}, plain / f"model-0000{k}-of-00003.safetensors")
    a, b = tmp_path / "a.jwk", tmp_path / "b.jwk"
    rec = sealtensors.keygen(a)
    sealtensors.keygen(b)
    sealed = tmp_path / "sealed"
    sealtensors.seal(plain, sealed, recipients=[rec])
    shards = sorted(sealed.glob("*.safetensors"))
    assert len(shards) == 3
    ident = tmp_path / "id.jwk"  # the path a loader is given; its content changes
    shutil.copy(a, ident)
    return {"shards": shards, "ident": ident, "a": a, "b": b}


def _open(folder: dict, i: int) -> safe_open:
    return safe_open(folder["shards"][i], "pt", identities=[folder["ident"]])


def test_a_scope_belongs_to_its_thread_and_to_the_keys_as_loaded(folder: dict) -> None:
    opened, rotated, done = threading.Event(), threading.Event(), threading.Event()

    def other_load() -> None:
        with sealtensors.load_scope():
            _open(folder, 0).keys()
            opened.set()
            rotated.wait(10)
        done.set()

    t = threading.Thread(target=other_load)
    t.start()
    assert opened.wait(10)
    # The identity file now holds another key (rotated, revoked): no open
    # outside that thread's scope may use the key its open unwrapped.
    shutil.copy(folder["b"], folder["ident"])
    with pytest.raises(sealtensors.NoKeyError):
        _open(folder, 1)
    # Nor inside a scope of this thread: same path, other key.
    with sealtensors.load_scope():
        with pytest.raises(sealtensors.NoKeyError):
            _open(folder, 1)
    rotated.set()
    t.join(10)
    assert done.is_set()


def test_opens_in_one_scope_share_the_key_until_forgotten(folder: dict) -> None:
    with sealtensors.load_scope():
        _open(folder, 0).keys()
        # The same keys as loaded: the shards share the key (and an identity
        # swapped under the same path afterwards is a different credential).
        assert _open(folder, 1).keys() == ["w2"]
        sealtensors.forget_released_keys()
        shutil.copy(folder["b"], folder["ident"])
        with pytest.raises(sealtensors.NoKeyError):
            _open(folder, 2)


def test_in_place_copy_counts_as_a_write_and_leaves_inference_tensors_alone(
    folder: dict,
) -> None:
    f = _open(folder, 0)
    want = f.get_tensor("w1")
    dst = torch.empty(16, 16)
    v = dst._version
    dst.copy_(LazyTensor(f, "w1"))
    assert torch.equal(dst, want) and dst._version > v  # as torch's copy_ counts it
    with torch.inference_mode():
        frozen = torch.empty(16, 16)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        frozen.copy_(LazyTensor(f, "w1"))  # torch's own refusal, as for any copy

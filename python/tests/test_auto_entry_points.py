"""`sealtensors.auto` covers every safetensors entry point that reads a file's
bytes, not only `safe_open` and the `load` functions: `safetensors.deserialize`
(bytes; safetensors.torch.load and safetensors.paddle.load call it) and
`safetensors._safe_open_handle` (an open file). Each either opens sealed content
through sealtensors or refuses it with a sealtensors error: it never returns
the ciphertext as tensor data. Plain content gives exactly what safetensors
gives.

Each attack is first shown against the real safetensors (ciphertext comes back
as data), then against the patched entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import sealtensors
import sealtensors.numpy as snp
from sealtensors import _open


# The real entry points, always looked up on sealtensors._open at call time:
# `enable()` replaces every other module's reference to them, this one's included.
def real_deserialize(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return _open._REAL_DESERIALIZE(data)


def real_handle() -> Any:
    return _open._REAL_SAFE_OPEN_HANDLE


TENSORS = {
    "z.weight": np.arange(600, dtype=np.float32).reshape(20, 30),
    "a.bias": np.arange(7, dtype=np.int64),
    "m.norm": np.linspace(0.0, 1.0, 16, dtype=np.float64).reshape(4, 4),
}


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Any]:
    ident = tmp_path / "deployer.jwk"
    recipient = sealtensors.keygen(ident)
    plain = tmp_path / "plain.safetensors"
    sealed = tmp_path / "sealed.safetensors"
    snp.save_file(TENSORS, plain)
    snp.save_file(TENSORS, sealed, recipients=[recipient])
    return {"ident": ident, "plain": plain, "sealed": sealed, "tmp": tmp_path}


@pytest.fixture()
def auto(files: dict[str, Any]) -> Iterator[ModuleType]:
    mod = importlib.import_module("sealtensors.auto")
    mod.enable(identities=[files["ident"]])
    try:
        yield mod
    finally:
        mod.disable()


def _as_dict(flat: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, list[int], bytes]]:
    return {name: (v["dtype"], list(v["shape"]), bytes(v["data"])) for name, v in flat}


def _expected() -> dict[str, tuple[str, list[int], bytes]]:
    return _as_dict(real_deserialize(safetensors.numpy.save(TENSORS)))


def test_real_deserialize_returns_ciphertext(files: dict[str, Any]) -> None:
    """The attack: without sealtensors.auto, deserialize hands back noise."""
    got = _as_dict(real_deserialize(files["sealed"].read_bytes()))
    assert got.keys() == _expected().keys()
    assert got["z.weight"][2] != _expected()["z.weight"][2]


def test_deserialize_decrypts_sealed_bytes(files: dict[str, Any], auto: ModuleType) -> None:
    flat = safetensors.deserialize(files["sealed"].read_bytes())
    # The same form as the real function's (in file order; its order varies), the
    # plaintext bytes.
    with sealtensors.safe_open(files["sealed"], "np", identities=[files["ident"]]) as f:
        assert [n for n, _ in flat] == f.offset_keys()
    assert all(isinstance(v["data"], bytearray) for _, v in flat)
    assert _as_dict(flat) == _expected()


def test_deserialize_of_plain_bytes_is_unchanged(files: dict[str, Any], auto: ModuleType) -> None:
    data = files["plain"].read_bytes()
    flat = safetensors.deserialize(data)
    # The real function's list, whose order varies from call to call (a hash map).
    assert sorted(flat, key=lambda t: t[0]) == sorted(real_deserialize(data), key=lambda t: t[0])


def test_deserialize_without_a_key_refuses(files: dict[str, Any], auto: ModuleType) -> None:
    auto.disable()
    other = files["tmp"] / "other.jwk"
    sealtensors.keygen(other)
    auto.enable(identities=[other])
    with pytest.raises(sealtensors.NoKeyError):
        safetensors.deserialize(files["sealed"].read_bytes())


def test_deserialize_of_tampered_bytes_refuses(files: dict[str, Any], auto: ModuleType) -> None:
    data = bytearray(files["sealed"].read_bytes())
    data[-1] ^= 1  # the last tensor's ciphertext
    with pytest.raises(sealtensors.SealtensorsError):
        safetensors.deserialize(bytes(data))


def test_modules_that_imported_deserialize_are_patched(
    files: dict[str, Any], auto: ModuleType
) -> None:
    """safetensors.torch.load (and safetensors.paddle.load) call the name
    `deserialize` they imported: the original torch.load now decrypts too."""
    pytest.importorskip("torch")
    import safetensors.torch

    original_load = auto._REAL["torch.load"][-1]
    got = original_load(files["sealed"].read_bytes())
    np.testing.assert_array_equal(got["z.weight"].numpy(), TENSORS["z.weight"])
    assert safetensors.torch.deserialize is auto._patched_deserialize


needs_handle = pytest.mark.skipif(
    real_handle() is None, reason="this safetensors has no _safe_open_handle"
)


@needs_handle
def test_real_handle_open_returns_ciphertext(files: dict[str, Any]) -> None:
    """The attack: without sealtensors.auto, an open file handle gives noise."""
    with open(files["sealed"], "rb") as fh, real_handle()(fh, "np") as f:
        assert not np.array_equal(f.get_tensor("z.weight"), TENSORS["z.weight"])


@needs_handle
def test_handle_open_decrypts_sealed_files(files: dict[str, Any], auto: ModuleType) -> None:
    with open(files["sealed"], "rb") as fh, safetensors._safe_open_handle(fh, "np") as f:
        assert sorted(f.keys()) == sorted(TENSORS)
        for name, want in TENSORS.items():
            np.testing.assert_array_equal(f.get_tensor(name), want)
        np.testing.assert_array_equal(f.get_slice("z.weight")[3:5], TENSORS["z.weight"][3:5])


@needs_handle
def test_handle_open_of_a_deleted_file(files: dict[str, Any], auto: ModuleType) -> None:
    """An open handle whose file was removed: reopened through /proc/self/fd."""
    fh = open(files["sealed"], "rb")  # noqa: SIM115 (closed below)
    try:
        files["sealed"].unlink()
        with safetensors._safe_open_handle(fh, "np") as f:
            np.testing.assert_array_equal(f.get_tensor("a.bias"), TENSORS["a.bias"])
    finally:
        fh.close()


@needs_handle
def test_handle_open_of_plain_files_is_unchanged(files: dict[str, Any], auto: ModuleType) -> None:
    with open(files["plain"], "rb") as fh, safetensors._safe_open_handle(fh, "np") as f:
        assert isinstance(f._plain, real_handle())  # the real opener, on the same handle
        with real_handle()(fh, "np") as real:
            assert f.keys() == real.keys() and f.metadata() == real.metadata()
        for name, want in TENSORS.items():
            np.testing.assert_array_equal(f.get_tensor(name), want)


@needs_handle
def test_handle_open_without_a_key_refuses(files: dict[str, Any], auto: ModuleType) -> None:
    auto.disable()
    other = files["tmp"] / "other.jwk"
    sealtensors.keygen(other)
    auto.enable(identities=[other])
    with open(files["sealed"], "rb") as fh, pytest.raises(sealtensors.NoKeyError):
        safetensors._safe_open_handle(fh, "np")


@needs_handle
def test_handle_without_a_path_refuses_sealed_content(
    files: dict[str, Any], auto: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the handle's file cannot be reopened by path (no /proc/self/fd, a
    name that is not the file's), sealed content is refused, plain content
    still opens with the real opener."""
    monkeypatch.setattr(auto, "_path_of", lambda handle: None)
    with open(files["sealed"], "rb") as fh:
        with pytest.raises(sealtensors.InvalidFileError, match="sealtensors file"):
            safetensors._safe_open_handle(fh, "np")
        assert fh.tell() == 0  # the header was read without moving the handle
    with open(files["plain"], "rb") as fh, safetensors._safe_open_handle(fh, "np") as f:
        np.testing.assert_array_equal(f.get_tensor("a.bias"), TENSORS["a.bias"])


def test_disable_restores_the_real_entry_points(files: dict[str, Any]) -> None:
    auto = importlib.import_module("sealtensors.auto")
    auto.enable(identities=[files["ident"]])
    assert safetensors.deserialize is auto._patched_deserialize
    auto.disable()
    assert safetensors.deserialize is _open._REAL_DESERIALIZE
    assert getattr(safetensors, "_safe_open_handle", None) is real_handle()

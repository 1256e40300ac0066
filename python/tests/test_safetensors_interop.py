"""The official safetensors package against files written by sealtensors.

SPEC §2: a sealed file is a valid safetensors file (names, dtypes, shapes and
offsets stay plaintext); a plain file written by sealtensors is byte-identical
to what safetensors writes; unsealing gives back the original bytes.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

SEALED = ["aes", "chacha", "partial", "signed", "multi"]


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {
        "embed.weight": rng.standard_normal((64, 96)).astype(np.float32),
        "layer.0.attn.weight": rng.standard_normal((33, 17)).astype(np.float16),
        "layer.0.attn.bias": rng.standard_normal((17,)).astype(np.float64),
        "layer.0.norm.bias": rng.integers(-5, 5, (9,)).astype(np.int64),
        "position_ids": rng.integers(0, 512, (1, 40)).astype(np.int32),
        "mask": rng.integers(0, 2, (7,)).astype(np.bool_),
        "tiny": rng.integers(0, 255, (3,)).astype(np.uint8),
        "empty": np.zeros((0, 4), dtype=np.float32),
        'ünïcødé "name"': rng.standard_normal((5,)).astype(np.float32),
    }


@pytest.fixture(scope="module", params=[None, {"format": "np"}], ids=["nometa", "meta"])
def corpus(request, tmp_path_factory, interop_bin: Path) -> tuple[Path, Path, dict]:
    d = tmp_path_factory.mktemp("interop")
    src = d / "original.safetensors"
    tensors = _tensors()
    save_file(tensors, str(src), metadata=request.param)
    out = d / "out"
    subprocess.run([str(interop_bin), str(src), str(out)], check=True)
    return src, out, tensors


def _raw_header(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


@pytest.mark.parametrize("name", SEALED)
def test_official_parser_accepts_sealed_headers(corpus, name: str) -> None:
    src, out, tensors = corpus
    path = out / f"{name}.safetensors"
    with safe_open(str(path), framework="np") as f:
        assert sorted(f.keys()) == sorted(tensors)
        meta = f.metadata()
        assert isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        assert "sealtensors.seal" in meta
        for k, v in tensors.items():
            sl = f.get_slice(k)
            assert sl.get_shape() == list(v.shape), k
            # Every tensor is readable as raw bytes of the right size.
            assert f.get_tensor(k).nbytes == v.nbytes
    # the on-disk size is unchanged apart from the header
    assert path.stat().st_size - 8 - struct.unpack("<Q", path.read_bytes()[:8])[0] == sum(
        v.nbytes for v in tensors.values()
    )


def test_encrypted_tensors_do_not_leak(corpus) -> None:
    _, out, tensors = corpus
    got = load_file(str(out / "aes.safetensors"))
    for k, v in tensors.items():
        if v.nbytes >= 16:
            assert got[k].tobytes() != v.tobytes(), k


def test_partial_and_signed_keep_plaintext_where_unencrypted(corpus) -> None:
    _, out, tensors = corpus
    signed = load_file(str(out / "signed.safetensors"))
    for k, v in tensors.items():
        np.testing.assert_array_equal(signed[k], v)
    partial = load_file(str(out / "partial.safetensors"))
    seal_doc = json.loads(
        _raw_header(out / "partial.safetensors")["__metadata__"]["sealtensors.tensors"]
    )
    for k, v in tensors.items():
        encrypted = "tags" in seal_doc[k]
        assert encrypted == ("weight" in k), k
        if not encrypted:
            np.testing.assert_array_equal(partial[k], v)
        elif v.nbytes >= 16:
            assert partial[k].tobytes() != v.tobytes()


@pytest.mark.parametrize("name", SEALED)
def test_unseal_is_byte_identical(corpus, name: str) -> None:
    src, out, _ = corpus
    assert (out / f"{name}.unsealed.safetensors").read_bytes() == src.read_bytes()


def test_plain_writer_is_byte_identical(corpus) -> None:
    src, out, _ = corpus
    assert (out / "rewrite.safetensors").read_bytes() == src.read_bytes()


def test_header_layout_is_plain_safetensors(corpus) -> None:
    """Sealed headers keep each tensor's true dtype, shape and offsets."""
    src, out, _ = corpus
    orig = _raw_header(src)
    for name in SEALED:
        h = _raw_header(out / f"{name}.safetensors")
        for k, entry in orig.items():
            if k != "__metadata__":
                assert h[k] == entry, (name, k)
        user = {k: v for k, v in h["__metadata__"].items() if not k.startswith("sealtensors.")}
        assert user == orig.get("__metadata__", {})

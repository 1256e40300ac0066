"""LazyTensor: what vLLM's weight loaders get under tensor parallelism.
Rows cut with `narrow(0, ...)` decrypt only their chunks; everything else
reads the whole tensor, authenticated, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import sealtensors
import sealtensors.torch as stt
import torch
from sealtensors import safe_open
from sealtensors._lazy import LazyTensor


@pytest.fixture()
def sealed(tmp_path: Path) -> dict:
    ident = tmp_path / "id.jwk"
    recipient = sealtensors.keygen(ident)
    torch.manual_seed(0)
    tensors = {
        "w": torch.randn(256, 64),  # 64 KiB: 16 chunks of 4 KiB, 16 rows per chunk
        "b": torch.randn(64, dtype=torch.float64),
        "h": torch.randn(8, 8).to(torch.bfloat16),
    }
    path = tmp_path / "m.safetensors"
    stt.save_file(tensors, path, recipients=[recipient], chunk_size=4096)
    return {"path": path, "ident": str(ident), "tensors": tensors}


def _open(s: dict) -> safe_open:
    return safe_open(s["path"], framework="pt", identities=[s["ident"]])


def test_metadata_reads_nothing(sealed: dict) -> None:
    stats: dict[str, int] = {}
    lazy = LazyTensor(_open(sealed), "w", stats)
    assert lazy.shape == torch.Size([256, 64]) and lazy.size(0) == 256 and lazy.size() == lazy.shape
    assert lazy.dtype == torch.float32 and lazy.dim() == 2 and lazy.ndim == 2
    assert lazy.numel() == 256 * 64 and len(lazy) == 256
    assert lazy.device == torch.device("cpu")
    assert stats == {"bytes_total": 256 * 64 * 4, "bytes_read": 0}
    assert LazyTensor(_open(sealed), "h").dtype == torch.bfloat16


def test_narrow_rows_decrypts_only_their_chunks(sealed: dict) -> None:
    full = sealed["tensors"]["w"]
    stats: dict[str, int] = {}
    f = _open(sealed)
    for start, length in [(0, 128), (128, 128), (17, 3), (255, 1), (0, 0)]:
        part = LazyTensor(f, "w", stats).narrow(0, start, length)
        assert isinstance(part, torch.Tensor)
        assert torch.equal(part, full.narrow(0, start, length))
    # rows 0..128 and 128..256 are half the tensor each
    assert stats["bytes_read"] == (128 + 128 + 3 + 1 + 0) * 64 * 4
    # The whole extent (a single rank's "shard") is the lazy tensor itself:
    # nothing is read until it is used.
    whole = LazyTensor(f, "w", stats)
    assert whole.narrow(0, 0, 256) is whole and whole.narrow(1, 0, 64) is whole
    assert stats["bytes_read"] == (128 + 128 + 3 + 1 + 0) * 64 * 4
    assert torch.equal(whole.narrow(-2, 0, 256), full)
    # negative dim, the torch way
    assert torch.equal(LazyTensor(f, "w").narrow(-2, 5, 10), full[5:15])
    assert torch.equal(LazyTensor(f, "w")[10:20], full[10:20])


def test_other_dimensions_and_ops_read_the_whole_tensor_once(sealed: dict) -> None:
    full = sealed["tensors"]["w"]
    stats: dict[str, int] = {}
    lazy = LazyTensor(_open(sealed), "w", stats)
    assert torch.equal(lazy.narrow(1, 32, 32), full[:, 32:])
    assert torch.equal(lazy.t(), full.t())  # attribute access: the real tensor's
    assert torch.equal(lazy.narrow(0, 0, 4), full[:4])  # served from the kept copy
    assert stats["bytes_read"] == full.numel() * 4  # once
    # torch functions and operators see the real tensor
    dst = torch.empty_like(full)
    dst.copy_(LazyTensor(_open(sealed), "w"))
    assert torch.equal(dst, full)
    assert torch.equal(torch.cat([LazyTensor(_open(sealed), "w"), full]), torch.cat([full, full]))
    assert torch.equal(LazyTensor(_open(sealed), "w") * 2, full * 2)
    assert torch.equal(2 + LazyTensor(_open(sealed), "w"), 2 + full)
    assert torch.equal(-LazyTensor(_open(sealed), "w"), -full)
    assert torch.equal(LazyTensor(_open(sealed), "w")[3], full[3])
    b = LazyTensor(_open(sealed), "b")
    assert torch.equal(b.to(torch.float32), sealed["tensors"]["b"].to(torch.float32))


def test_narrow_out_of_range_fails_like_torch(sealed: dict) -> None:
    lazy = LazyTensor(_open(sealed), "w")
    with pytest.raises((RuntimeError, IndexError)):
        lazy.narrow(0, 250, 10)
    with pytest.raises((RuntimeError, IndexError)):
        lazy.narrow(0, 300, 1)


def test_tampered_chunk_outside_the_rows_is_not_read_inside_is_refused(sealed: dict) -> None:
    import json
    import struct

    path = sealed["path"]
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    begin, end = header["w"]["data_offsets"]
    raw[8 + n + end - 1] ^= 1  # the last chunk of w (rows 240..256)
    path.write_bytes(bytes(raw))
    f = _open(sealed)
    full = sealed["tensors"]["w"]
    # rows 0..240 never touch the tampered chunk
    assert torch.equal(LazyTensor(f, "w").narrow(0, 0, 240), full[:240])
    with pytest.raises(sealtensors.NotAuthenticError):
        LazyTensor(f, "w").narrow(0, 200, 56)
    with pytest.raises(sealtensors.NotAuthenticError):
        LazyTensor(f, "w").materialize()


def test_negative_start_and_one_operand_protocols_match_torch(sealed: dict) -> None:
    full = sealed["tensors"]["w"]
    f = _open(sealed)
    assert torch.equal(LazyTensor(f, "w").narrow(0, -16, 16), full.narrow(0, -16, 16))
    with pytest.raises((RuntimeError, IndexError)):
        LazyTensor(f, "w").narrow(0, -300, 1)
    one = sealed["tensors"]["b"][:1]
    path = sealed["path"].with_name("one.safetensors")
    stt.save_file(
        {"zero": torch.zeros(1), "one": one.clone(), "two": torch.ones(2)},
        path,
        recipients=[sealtensors.keygen(sealed["path"].with_name("k1.jwk"))],
    )
    g = safe_open(path, framework="pt", identities=[str(sealed["path"].with_name("k1.jwk"))])
    assert bool(LazyTensor(g, "zero")) is False
    assert float(LazyTensor(g, "one")) == float(one)
    with pytest.raises(RuntimeError):
        bool(LazyTensor(g, "two"))  # ambiguous, as torch says
    assert [float(x) for x in LazyTensor(g, "two")] == [1.0, 1.0]
    assert f"{LazyTensor(g, 'zero')}" == f"{torch.zeros(1)}"


def test_probing_for_attributes_a_tensor_lacks_reads_nothing(sealed: dict) -> None:
    stats: dict[str, int] = {}
    lazy = LazyTensor(_open(sealed), "w", stats)
    assert getattr(lazy, "shard_id", None) is None  # what vLLM's loaders ask
    assert not hasattr(lazy, "weight_loader")
    assert stats["bytes_read"] == 0


def test_copy_into_a_parameter_decrypts_in_place(sealed: dict) -> None:
    """What vLLM's weight loaders do (`param.data.copy_(loaded)`, or into a row
    block of a fused parameter): the tensor is decrypted straight into the
    parameter's memory, with no tensor in between."""
    full, h = sealed["tensors"]["w"], sealed["tensors"]["h"]
    f = _open(sealed)
    stats: dict[str, int] = {}
    param = torch.nn.Parameter(torch.empty(256, 64), requires_grad=False)
    lazy = LazyTensor(f, "w", stats)
    assert param.data.copy_(lazy) is not None
    assert torch.equal(param, full) and lazy._full_tensor is None  # never materialised
    assert stats["bytes_read"] == full.numel() * 4
    # A row block of a fused parameter (qkv): contiguous, decrypted in place.
    fused = torch.zeros(8 + 8, 8, dtype=torch.bfloat16)
    fused.narrow(0, 8, 8).copy_(LazyTensor(f, "h").narrow(0, 0, 8))
    assert torch.equal(fused[8:], h) and torch.count_nonzero(fused[:8]) == 0
    # Not such a target (another dtype, a column block): the copy torch does.
    other = torch.empty(256, 64, dtype=torch.float64)
    other.copy_(LazyTensor(f, "w"))
    assert torch.equal(other, full.double())
    cols = torch.zeros(256, 128)
    cols[:, 64:].copy_(LazyTensor(f, "w"))
    assert torch.equal(cols[:, 64:], full)


def test_copy_in_place_of_a_tampered_tensor_fails_and_leaves_zeros(sealed: dict) -> None:
    import json
    import struct

    path = sealed["path"]
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    begin, _ = json.loads(raw[8 : 8 + n])["w"]["data_offsets"]
    raw[8 + n + begin + 5] ^= 1
    path.write_bytes(bytes(raw))
    param = torch.full((256, 64), 7.0)
    with pytest.raises(sealtensors.NotAuthenticError):
        param.copy_(LazyTensor(_open(sealed), "w"))
    assert torch.count_nonzero(param) == 0  # no unauthenticated byte is left in it

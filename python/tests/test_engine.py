"""The loading engine through Python (`safe_open.iter_tensors`,
`stream_tensors`, the vLLM loader's path): the same tensors as `get_tensor`,
buffers reused only once nothing references them, memory within the pool,
authentication before anything is handed out. The GPU upload runs on CUDA
machines only; elsewhere its test is skipped, saying so."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import sealtensors
import sealtensors.torch as stt
import torch
from sealtensors import safe_open
from sealtensors._native import NotAuthenticError
from sealtensors._open import stream_tensors


def _model(n: int, rows: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {f"layer.{i:02d}.w": torch.randn(rows, 64, generator=g) for i in range(n)}
    t["embed"] = torch.randn(4 * rows, 64, generator=g).to(torch.bfloat16)
    t["ids"] = torch.arange(7, dtype=torch.int64)
    return t


@pytest.fixture()
def sealed(tmp_path: Path) -> dict:
    ident = tmp_path / "id.jwk"
    recipient = sealtensors.keygen(ident)
    shards = []
    tensors: dict[str, torch.Tensor] = {}
    for k in range(3):
        part = {f"s{k}.{name}": v for name, v in _model(12, 64, k).items()}
        path = tmp_path / f"model-{k}.safetensors"
        stt.save_file(part, path, recipients=[recipient], chunk_size=4096)
        shards.append(path)
        tensors.update(part)
    return {"shards": shards, "ident": str(ident), "tensors": tensors}


def _open(s: dict, path: Path, **kw: object) -> safe_open:
    return safe_open(path, framework="pt", identities=[s["ident"]], **kw)


def test_iter_tensors_gives_what_get_tensor_gives_in_the_order_asked(sealed: dict) -> None:
    f = _open(sealed, sealed["shards"][0])
    names = f.offset_keys()[::-1] + ["s0.ids"]
    got = list(f.iter_tensors(names))
    assert [n for n, _ in got] == names
    for name, t in got:  # every tensor kept: none was overwritten by a later one
        want = sealed["tensors"][name]
        assert t.dtype == want.dtype and torch.equal(t, want), name
    plain = list(f.iter_tensors())
    assert [n for n, _ in plain] == f.offset_keys()


def test_buffers_are_reused_once_dropped_and_stay_within_the_pool(sealed: dict) -> None:
    f = _open(sealed, sealed["shards"][0])
    slab = 4 * 64 * 64 * 2  # the largest tensor (embed, bf16)
    stream = f._file.stream(None, 3 * slab, None)
    n = 0
    for name, raw in stream:
        dtype, shape, _, _ = f._file.info(name)
        t = raw.view("uint8")
        assert t.nbytes == f._file.info(name)[2]
        n += 1
    st = stream.stats()
    assert n == 14
    assert st["peak"] <= 3 * slab, st
    assert st["allocated"] <= 3 and st["reused"] >= 10, st
    assert st["recycled"] >= 10, st


def test_kept_tensors_stay_valid_and_a_consumer_keeping_all_never_blocks(sealed: dict) -> None:
    f = _open(sealed, sealed["shards"][1])
    names = f.offset_keys()
    # A pool of one slab: every tensor kept (as transformers keeps them) must
    # still come out, each in its own memory, right to the end.
    kept = dict(f.iter_tensors(names, pool_bytes=1))
    gc.collect()
    for name in names:
        assert torch.equal(kept[name], sealed["tensors"][name]), name
    # Keep every third: the others are recycled, the kept ones not touched.
    some = {}
    for i, (name, t) in enumerate(f.iter_tensors(names)):
        if i % 3 == 0:
            some[name] = t
    for name, t in some.items():
        assert torch.equal(t, sealed["tensors"][name]), name


def test_one_stream_over_the_shards_of_a_model(sealed: dict) -> None:
    handles = [_open(sealed, p) for p in sealed["shards"]]
    pieces = [(i, n) for i, h in enumerate(handles) for n in h.offset_keys()]
    seen = []
    for name, t in stream_tensors(handles, pieces):
        assert torch.equal(t, sealed["tensors"][name]), name
        seen.append(name)
    assert seen == [n for _, n in pieces]


def test_plain_files_are_read_the_safetensors_way(tmp_path: Path, sealed: dict) -> None:
    plain = tmp_path / "plain.safetensors"
    tensors = _model(3, 16, 9)
    stt.save_file(tensors, plain)
    with safe_open(plain, framework="pt") as f:
        got = dict(f.iter_tensors())
    assert got.keys() == tensors.keys()
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_a_tampered_chunk_stops_the_stream_before_its_tensor(tmp_path: Path, sealed: dict) -> None:
    src = sealed["shards"][2]
    raw = bytearray(src.read_bytes())
    f = _open(sealed, src)
    target = f.offset_keys()[5]
    # The tensor's first data byte: after the header (8 + n bytes) at its offset.
    import json

    n = int.from_bytes(raw[:8], "little")
    begin = json.loads(raw[8 : 8 + n])[target]["data_offsets"][0]
    raw[8 + n + begin + 100] ^= 0x01
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    g = _open(sealed, bad)
    handed = []
    with pytest.raises(NotAuthenticError, match="authenticat"):
        for name, _ in g.iter_tensors():
            handed.append(name)
    assert target not in handed
    assert handed == g.offset_keys()[: len(handed)]


def test_pinned_buffers_fall_back_to_pageable_without_cuda(sealed: dict) -> None:
    f = _open(sealed, sealed["shards"][0])
    got = dict(f.iter_tensors(pin_memory=True))
    assert all(torch.equal(got[k], sealed["tensors"][k]) for k in got)


def test_breaking_out_early_leaves_kept_tensors_intact(sealed: dict) -> None:
    f = _open(sealed, sealed["shards"][0])
    it = f.iter_tensors()
    first_name, first = next(it)
    it.close()
    gc.collect()
    assert torch.equal(first, sealed["tensors"][first_name])


def test_an_alloc_that_returns_a_view_is_refused(sealed: dict) -> None:
    import numpy as np

    f = _open(sealed, sealed["shards"][0])
    # A view's references count on its owner: the pool could not tell when
    # Python lets go of it, so it must not take one.
    stream = f._file.stream(None, None, lambda n: np.zeros(n + 128, dtype=np.uint8)[64:])
    with pytest.raises(sealtensors.SealtensorsError, match="view of another NumPy array"):
        next(stream)


def test_empty_tensors_and_other_devices(tmp_path: Path, sealed: dict) -> None:
    path = tmp_path / "e.safetensors"
    tensors = {"e0": torch.zeros(0, 4), "e1": torch.zeros(3, 0, dtype=torch.bfloat16)}
    stt.save_file(tensors, path, recipients=[sealtensors.keygen(tmp_path / "k.jwk")])
    with safe_open(path, framework="pt", identities=[tmp_path / "k.jwk"]) as f:
        got = dict(f.iter_tensors())
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {
        k: (v.shape, v.dtype) for k, v in tensors.items()
    }
    # The device asked for is honoured as get_tensor honours it.
    f = _open(sealed, sealed["shards"][0], device="meta")
    name, t = next(iter(f.iter_tensors()))
    assert t.device.type == "meta" and t.device == f.get_tensor(name).device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NO GPU HERE: GPU upload not tested")
def test_gpu_upload_through_page_locked_buffers(sealed: dict) -> None:
    f = _open(sealed, sealed["shards"][0], device="cuda")
    got = dict(f.iter_tensors())
    torch.cuda.synchronize()
    for name, t in got.items():
        assert t.device.type == "cuda"
        assert torch.equal(t.cpu(), sealed["tensors"][name]), name


def test_say_loudly_when_the_gpu_path_is_not_exercised() -> None:
    if not torch.cuda.is_available():
        warnings.warn(
            "no CUDA device: the engine's GPU upload (page-locked buffers, side-stream "
            "copies) was not exercised here; its test is skipped",
            stacklevel=1,
        )

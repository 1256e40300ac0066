"""The Python API: safetensors' surface, sealed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import sealtensors
import sealtensors.numpy as snp
import sealtensors.torch as st
import torch


@pytest.fixture()
def keys(tmp_path: Path) -> dict:
    return {
        "id": tmp_path / "id.jwk",
        "r": sealtensors.keygen(tmp_path / "id.jwk"),
        "sign": tmp_path / "sign.jwk",
        "signer": sealtensors.keygen(tmp_path / "sign.jwk", "ed25519"),
        "dir": tmp_path,
    }


def _torch_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "f32": torch.randn(70, 33, generator=g),
        "f16": torch.randn(17, generator=g).half(),
        "bf16": torch.randn(129, 65, generator=g).bfloat16(),
        "f64": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "i64": torch.arange(-5, 5),
        "i32": torch.arange(7, dtype=torch.int32),
        "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(9, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
        "c64": torch.randn(4, dtype=torch.complex64, generator=g),
    }
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            out[name] = torch.randn(33, generator=g).to(getattr(torch, name))
    return out


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.view(-1).view(torch.uint8) if a.numel() else a,
            b.view(-1).view(torch.uint8) if b.numel() else b,
        )
    )


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_torch_round_trip_every_dtype(keys: dict, cipher: str) -> None:
    t = _torch_tensors()
    p = keys["dir"] / "m.safetensors"
    st.save_file(
        t,
        p,
        {"format": "pt"},
        recipients=[keys["r"]],
        sign_key=keys["sign"],
        cipher=cipher,
        chunk_size=4096,
    )
    got = st.load_file(p, identities=[keys["id"]], trusted=[keys["signer"]])
    assert sorted(got) == sorted(t)
    for k in t:
        assert _equal(t[k], got[k]), k
    # the official parser still reads the header
    with safetensors.safe_open(str(p), framework="pt") as f:
        assert sorted(f.keys()) == sorted(t)
        assert f.metadata()["format"] == "pt"
    with sealtensors.safe_open(p, "pt", identities=[keys["id"]], trusted=[keys["signer"]]) as f:
        assert f.authenticity() == ("signed-trusted", keys["signer"])
        assert f.metadata() == {"format": "pt"}


def test_numpy_round_trip(keys: dict) -> None:
    rng = np.random.default_rng(1)
    a = {
        "x": rng.standard_normal((40, 9)).astype(np.float32),
        "y": np.arange(6, dtype=np.int16),
        "z": np.zeros((0,), np.float64),
    }
    p = keys["dir"] / "n.safetensors"
    snp.save_file(a, p, recipients=[keys["r"]])
    got = snp.load_file(p, identities=[keys["id"]])
    for k in a:
        np.testing.assert_array_equal(a[k], got[k])
        assert a[k].dtype == got[k].dtype
    blob = snp.save(a, recipients=[keys["r"]])
    got = snp.load(blob, identities=[keys["id"]])
    np.testing.assert_array_equal(a["x"], got["x"])


def test_plain_files_are_exactly_safetensors(tmp_path: Path) -> None:
    t = {"a": torch.randn(10, 10), "b": torch.arange(3)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    st.save_file(t, ours, {"k": "v"})
    safetensors.torch.save_file(t, theirs, {"k": "v"})
    assert ours.read_bytes() == theirs.read_bytes()
    assert st.save(t) == safetensors.torch.save(t)
    got = st.load_file(theirs)
    assert torch.equal(got["a"], t["a"])
    with sealtensors.safe_open(theirs, "pt") as f:
        assert f.authenticity() == ("plain", None)
        assert torch.equal(f.get_slice("a")[2:5], t["a"][2:5])


def test_slices_read_only_what_they_need(keys: dict) -> None:
    w = torch.randn(256, 96)
    p = keys["dir"] / "s.safetensors"
    st.save_file({"w": w}, p, recipients=[keys["r"]], chunk_size=4096)
    with sealtensors.safe_open(p, "pt", identities=[keys["id"]]) as f:
        s = f.get_slice("w")
        assert s.get_shape() == [256, 96] and s.get_dtype() == "F32"
        for idx in [
            slice(0, 32),
            slice(100, 101),
            slice(200, None),
            7,
            -1,
            (slice(3, 9), slice(1, 4)),
            Ellipsis,
            slice(None, None, 2),
        ]:
            assert torch.equal(s[idx], w[idx]), idx


def test_errors_say_what_to_do(keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALTENSORS_IDENTITY", raising=False)
    monkeypatch.delenv("SEALTENSORS_TRUST", raising=False)
    monkeypatch.setenv("SEALTENSORS_CONFIG_DIR", str(keys["dir"] / "no-config"))
    t = {"w": torch.randn(64, 64)}
    p = keys["dir"] / "e.safetensors"
    st.save_file(t, p, recipients=[keys["r"]], sign_key=keys["sign"])
    # The hints name Python's arguments, never the CLI's flags.
    with pytest.raises(sealtensors.NoKeyError, match="SEALTENSORS_IDENTITY") as e:
        st.load_file(p)
    assert "identities=" in str(e.value) and "-i FILE" not in str(e.value)
    other = sealtensors.keygen(keys["dir"] / "other.jwk", "ed25519")
    with pytest.raises(sealtensors.NotAuthenticError, match="not among") as e:
        st.load_file(p, identities=[keys["id"]], trusted=[other])
    assert "trusted=" in str(e.value) and "--trust" not in str(e.value)
    raw = bytearray(p.read_bytes())
    raw[-10] ^= 1
    bad = keys["dir"] / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(sealtensors.NotAuthenticError, match="failed authentication"):
        st.load_file(bad, identities=[keys["id"]])
    plain = keys["dir"] / "plain.safetensors"
    safetensors.torch.save_file(t, plain)
    with pytest.raises(sealtensors.NotAuthenticError):
        st.load_file(plain, require_encrypted=True)
    junk = keys["dir"] / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(sealtensors.InvalidFileError):
        st.load_file(junk)
    assert issubclass(sealtensors.NoKeyError, sealtensors.SealtensorsError)
    # keys from the environment
    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(keys["id"]))
    monkeypatch.setenv("SEALTENSORS_TRUST", keys["signer"])
    assert torch.equal(st.load_file(p)["w"], t["w"])


def test_save_and_load_model(keys: dict) -> None:
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    p = keys["dir"] / "model.safetensors"
    st.save_model(m, p, recipients=[keys["r"]])
    m2 = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    missing, unexpected = st.load_model(m2, p, identities=[keys["id"]])
    assert not missing and not unexpected
    x = torch.randn(3, 8)
    assert torch.equal(m(x), m2(x))


def test_bool_index_is_a_mask_not_a_row(keys: dict) -> None:
    """Found in review: `[True]` returned row 1."""
    w = torch.randn(4, 3)
    p = keys["dir"] / "b.safetensors"
    st.save_file({"w": w}, p, recipients=[keys["r"]])
    with sealtensors.safe_open(p, "pt", identities=[keys["id"]]) as f:
        for idx in (True, False):
            assert torch.equal(f.get_slice("w")[idx], w[idx]), idx


def test_plain_files_keep_any_framework(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: plain files opened with "flax"/"tf"/"mlx" were refused."""
    from sealtensors import _open

    p = tmp_path / "p.safetensors"
    safetensors.torch.save_file({"a": torch.ones(2)}, p)
    seen = []
    real = _open._REAL_SAFE_OPEN

    def fake(path: str, framework: str, **kw: object) -> object:
        seen.append(framework)
        return real(path, "np", **kw)

    monkeypatch.setattr(_open, "_REAL_SAFE_OPEN", fake)
    for fw in ("flax", "tf", "mlx"):
        sealtensors.safe_open(p, fw)
    assert seen == ["flax", "tf", "mlx"]


def test_sealed_save_refuses_what_safetensors_refuses(keys: dict) -> None:
    """Found in review: shared tensors were silently stored twice."""
    a = torch.randn(4, 4)
    with pytest.raises(RuntimeError):
        st.save_file({"a": a, "b": a}, keys["dir"] / "x.safetensors", recipients=[keys["r"]])


def test_hf_save_pretrained_never_uploads_plaintext(tmp_path: Path) -> None:
    import sealtensors.hf

    class Model:
        def save_pretrained(self, *a: object, **kw: object) -> None:
            raise AssertionError("must not be reached")

    with pytest.raises(ValueError, match="unsealed"):
        sealtensors.hf.save_pretrained(Model(), tmp_path / "o", recipients=["x"], push_to_hub=True)

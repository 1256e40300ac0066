"""CryptoTensors files (spec/SPEC.md appendix A), made by the reference
package itself (`cryptotensors` 0.2.3), opened and converted by sealtensors.

Every file here is written by `cryptotensors.numpy.save_file` /
`cryptotensors.torch.save_file`, never by a re-implementation; every expected
value is the reference library's own decryption of the same file."""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import cryptotensors
import cryptotensors.numpy as ct_np
import numpy as np
import pytest
import sealtensors
import sealtensors.numpy
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ALGS = {"aes128gcm": 16, "aes256gcm": 32, "chacha20poly1305": 32}


def std_b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def ed25519_jwk(tmp: Path, name: str, kid: str) -> dict[str, str]:
    """An Ed25519 key in their JWK form, made with sealtensors.keygen."""
    path = tmp / f"{name}.jwk"
    sealtensors.keygen(path, "ed25519")
    j = json.loads(path.read_text())
    return {
        "kty": "okp",
        "alg": "ed25519",
        "kid": kid,
        "d": std_b64(b64u_decode(j["d"])),
        "x": std_b64(b64u_decode(j["x"])),
    }


class Keys:
    """One publisher's CryptoTensors keys: a master key per cipher, a signer,
    written as the key set their direct key provider reads."""

    def __init__(self, tmp: Path, name: str = "pub") -> None:
        self.sign = ed25519_jwk(tmp, name + "-sign", "s1")
        self.enc = {
            alg: {"kty": "oct", "alg": alg, "kid": "e1", "k": std_b64(os.urandom(n))}
            for alg, n in ALGS.items()
        }
        self.files: dict[str, Path] = {}
        for alg, enc in self.enc.items():
            p = tmp / f"{name}-{alg}.json"
            p.write_text(json.dumps({"keys": [enc, self.sign]}))
            self.files[alg] = p
        # The signer's public half alone: what a loader trusts.
        self.public = tmp / f"{name}-sign.pub.json"
        pub = {k: v for k, v in self.sign.items() if k != "d"}
        self.public.write_text(json.dumps(pub))

    def config(self, alg: str = "aes256gcm", **extra: Any) -> dict[str, Any]:
        return {"enc_key": self.enc[alg], "sign_key": self.sign, **extra}

    def opts(self, alg: str = "aes256gcm") -> dict[str, Any]:
        """sealtensors' loader options for these keys."""
        return {"identities": [self.files[alg]], "trusted": [str(self.public)]}


@pytest.fixture()
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def arrays() -> dict[str, np.ndarray]:
    g = np.random.default_rng(7)
    return {
        "big": g.standard_normal(300_000).astype(np.float32),  # several chunks of 64 KiB
        "mat": g.standard_normal((33, 17)).astype(np.float32),
        "ints": g.integers(-128, 127, size=1000, dtype=np.int8),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(3.5, dtype=np.float64),
    }


def reference_decrypt(path: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The reference library's own decryption of `path`."""
    with cryptotensors.safe_open(str(path), framework="np", config=cfg) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def header(path: Path) -> tuple[int, dict[str, Any]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def rewrite_header(src: Path, dst: Path, edit: Any) -> None:
    """Copy `src` to `dst` with its header JSON changed by `edit`, padded
    back to its length where it fits (the data offsets stay right)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    doc = json.loads(raw[8 : 8 + n])
    edit(doc)
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def edit_meta(key: str, fn: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        doc["__metadata__"][key] = json.dumps(fn(json.loads(doc["__metadata__"][key])))

    return edit


@pytest.mark.parametrize("alg", sorted(ALGS))
@pytest.mark.parametrize("version", ["1", "2"])
def test_reference_files_open_and_match(keys: Keys, tmp_path: Path, alg: str, version: str) -> None:
    path = tmp_path / f"{alg}-v{version}.safetensors"
    extra = {"version": version}
    if version == "2":
        extra["chunk_size"] = 64 * 1024
    ct_np.save_file(
        arrays(), str(path), metadata={"format": "np"}, config=keys.config(alg, **extra)
    )
    want = reference_decrypt(path, keys.config(alg))
    equal(want, arrays())
    got = sealtensors.numpy.load_file(path, **keys.opts(alg))
    equal(got, want)
    with sealtensors.safe_open(path, "np", **keys.opts(alg)) as f:
        assert f.metadata() == {"format": "np"}  # their reserved entries removed
        assert f.authenticity()[0] == "signed-trusted"
        # a slice reads only what it needs, and the right bytes
        assert np.array_equal(f.get_slice("big")[1000:70_000], want["big"][1000:70_000])
        assert np.array_equal(f.get_slice("mat")[3:5], want["mat"][3:5])


def test_bf16_torch_and_default_chunks(keys: Keys, tmp_path: Path) -> None:
    import cryptotensors.torch as ct_torch
    import sealtensors.torch

    g = torch.Generator().manual_seed(3)
    tensors = {
        "w": torch.randn(1500, 1500, generator=g).to(torch.bfloat16),  # > 2 MiB: two chunks
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
    }
    path = tmp_path / "bf16.safetensors"
    ct_torch.save_file(tensors, str(path), config=keys.config())
    got = sealtensors.torch.load_file(path, **keys.opts())
    for k, t in tensors.items():
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], t)


def test_never_read_as_plain(keys: Keys, tmp_path: Path) -> None:
    """Their ciphertext is not weights: without keys or trust, opening fails;
    it never hands out the stored bytes."""
    path = tmp_path / "m.safetensors"
    ct_np.save_file(arrays(), str(path), config=keys.config())
    with pytest.raises(sealtensors.NotAuthenticError, match="trusts no signer"):
        sealtensors.safe_open(path, "np")
    with pytest.raises(sealtensors.NotAuthenticError, match="trusts no signer"):
        sealtensors.safe_open(path, "np", identities=[keys.files["aes256gcm"]])
    with pytest.raises(sealtensors.NoKeyError):
        sealtensors.safe_open(path, "np", trusted=[str(keys.public)])


def test_wrong_key_and_untrusted_signer(keys: Keys, tmp_path: Path) -> None:
    other = Keys(tmp_path, "other")
    path = tmp_path / "m.safetensors"
    ct_np.save_file(arrays(), str(path), config=keys.config())
    with pytest.raises(sealtensors.NoKeyError, match="CryptoTensors aes256gcm key"):
        sealtensors.safe_open(
            path, "np", identities=[other.files["aes256gcm"]], trusted=[str(keys.public)]
        )
    with pytest.raises(sealtensors.NotAuthenticError, match="verifies against none"):
        sealtensors.safe_open(
            path, "np", identities=[keys.files["aes256gcm"]], trusted=[str(other.public)]
        )


def test_forged_file_with_the_publishers_kid_and_jku(keys: Keys, tmp_path: Path) -> None:
    """The reference picks the verifying key by the header's kid/jku. An
    attacker who signs with their own key under the publisher's kid and jku is
    refused here: the signature is checked only against trusted keys."""
    attacker = Keys(tmp_path, "attacker")
    forged_sign = {**attacker.sign, "kid": "s1", "jku": "https://publisher.example/jwks.json"}
    enc = {**keys.enc["aes256gcm"], "jku": "https://publisher.example/jwks.json"}
    path = tmp_path / "forged.safetensors"
    ct_np.save_file(arrays(), str(path), config={"enc_key": enc, "sign_key": forged_sign})
    # (the loader even holds the right master key: only the signature is forged)
    with pytest.raises(sealtensors.NotAuthenticError, match="verifies against none"):
        sealtensors.numpy.load_file(path, **keys.opts())


def _tamper_cases(src: Path, tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    n, doc = header(src)
    data_at = 8 + n
    raw = bytearray(src.read_bytes())
    # a flipped byte in the middle of "big"
    big = doc["big"]["data_offsets"]
    flipped = bytearray(raw)
    flipped[data_at + big[0] + 70_000] ^= 1
    out["flipped data byte"] = tmp / "flipped.safetensors"
    out["flipped data byte"].write_bytes(flipped)
    # two chunks of "big" swapped (version 2, chunks of 64 KiB)
    cs = 64 * 1024
    swapped = bytearray(raw)
    a, b = data_at + big[0], data_at + big[0] + cs
    swapped[a : a + cs], swapped[b : b + cs] = raw[b : b + cs], raw[a : a + cs]
    out["swapped chunks"] = tmp / "swapped.safetensors"
    out["swapped chunks"].write_bytes(swapped)
    # truncated
    out["truncated"] = tmp / "truncated.safetensors"
    out["truncated"].write_bytes(raw[:-100])
    # the header edited: a dtype changed (same length), tags swapped, jku substituted
    out["edited dtype"] = tmp / "dtype.safetensors"
    rewrite_header(src, out["edited dtype"], lambda d: d["mat"].update(dtype="I32"))

    def swap_tags(e: dict[str, Any]) -> dict[str, Any]:
        e["mat"]["tags"], e["ints"]["tags"] = e["ints"]["tags"], e["mat"]["tags"]
        return e

    out["swapped tags"] = tmp / "tags.safetensors"
    rewrite_header(src, out["swapped tags"], edit_meta("__encryption__", swap_tags))

    def swap_keys(e: dict[str, Any]) -> dict[str, Any]:
        e["mat"], e["ints"] = e["ints"], e["mat"]
        return e

    out["swapped entries"] = tmp / "entries.safetensors"
    rewrite_header(src, out["swapped entries"], edit_meta("__encryption__", swap_keys))

    def jku(k: dict[str, Any]) -> dict[str, Any]:
        k["sign"]["jku"] = "https://attacker.example/jwks.json"
        return k

    out["substituted jku"] = tmp / "jku.safetensors"
    rewrite_header(src, out["substituted jku"], edit_meta("__crypto_keys__", jku))

    def embed_key(k: dict[str, Any]) -> dict[str, Any]:
        k["sign"]["x"] = std_b64(b"\1" * 32)
        return k

    out["public key in header"] = tmp / "embedded.safetensors"
    rewrite_header(src, out["public key in header"], edit_meta("__crypto_keys__", embed_key))

    def allow_all(p: dict[str, Any]) -> dict[str, Any]:
        p["local"] = "package model\nallow = true"
        return p

    out["policy replaced"] = tmp / "policy.safetensors"
    rewrite_header(src, out["policy replaced"], edit_meta("__policy__", allow_all))

    def drop_tag(e: dict[str, Any]) -> dict[str, Any]:
        e["big"]["tags"] = std_b64(base64.b64decode(e["big"]["tags"])[:-16])
        return e

    out["tag dropped"] = tmp / "droptag.safetensors"
    rewrite_header(src, out["tag dropped"], edit_meta("__encryption__", drop_tag))

    def no_signature(d: dict[str, Any]) -> None:
        del d["__metadata__"]["__signature__"]

    out["signature removed"] = tmp / "nosig.safetensors"
    rewrite_header(src, out["signature removed"], no_signature)
    return out


def test_every_tamper_is_refused(keys: Keys, tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    policy = {"local": "package model\nallow if input.licence.ok == true"}
    cfg = keys.config(version="2", chunk_size=64 * 1024, policy=policy)
    ct_np.save_file(arrays(), str(src), config=cfg)
    opts = {**keys.opts(), "licence": {"ok": True}}
    equal(sealtensors.numpy.load_file(src, **opts), arrays())
    for what, path in _tamper_cases(src, tmp_path).items():
        with pytest.raises(sealtensors.SealtensorsError) as e:
            sealtensors.numpy.load_file(path, **opts)
        assert isinstance(e.value, (sealtensors.NotAuthenticError, sealtensors.InvalidFileError)), (
            what,
            e.value,
        )


def test_policy_is_evaluated_with_our_input(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "licensed.safetensors"
    policy = 'package model\nallow if input.licence.customer == "acme"'
    ct_np.save_file(arrays(), str(path), config=keys.config(policy={"local": policy}))
    with pytest.raises(sealtensors.PolicyDeniedError):
        sealtensors.numpy.load_file(path, **keys.opts())
    got = sealtensors.numpy.load_file(path, **keys.opts(), licence={"customer": "acme"})
    equal(got, arrays())
    deny = tmp_path / "deny.safetensors"
    ct_np.save_file(
        arrays(), str(deny), config=keys.config(policy={"local": "package model\nallow = false"})
    )
    with pytest.raises(sealtensors.PolicyDeniedError):
        sealtensors.numpy.load_file(deny, **keys.opts())


def test_unencrypted_tensors_are_not_returned(keys: Keys, tmp_path: Path) -> None:
    """Their `tensors` option leaves the others in plain, covered by nothing:
    sealtensors returns the encrypted ones and refuses the others."""
    path = tmp_path / "partial.safetensors"
    ct_np.save_file(arrays(), str(path), config=keys.config(tensors=["mat", "empty"]))
    with sealtensors.safe_open(path, "np", **keys.opts()) as f:
        assert np.array_equal(f.get_tensor("mat"), arrays()["mat"])
        with pytest.raises(sealtensors.NotAuthenticError, match="stored unencrypted"):
            f.get_tensor("big")


def test_convert_round_trip_and_back_to_plain(keys: Keys, tmp_path: Path) -> None:
    src = tmp_path / "ct.safetensors"
    ct_np.save_file(
        arrays(),
        str(src),
        metadata={"format": "np"},
        config=keys.config("chacha20poly1305", version="1"),
    )
    want = reference_decrypt(src, keys.config("chacha20poly1305"))
    ident = tmp_path / "deployer.jwk"
    recipient = sealtensors.keygen(ident)
    signer = sealtensors.keygen(tmp_path / "publisher.jwk", "ed25519")
    out = tmp_path / "sealed.safetensors"
    sealtensors.convert_cryptotensors(
        src,
        out,
        **keys.opts("chacha20poly1305"),
        recipients=[recipient],
        sign_key=tmp_path / "publisher.jwk",
    )
    with sealtensors.safe_open(out, "np", identities=[ident], trusted=[signer]) as f:
        assert f.metadata() == {"format": "np"}
        equal(f.get_tensors(), want)
    # back to plain: unseal with their keys gives the official safetensors file
    plain = tmp_path / "plain.safetensors"
    sealtensors.unseal(src, plain, **keys.opts("chacha20poly1305"))
    import safetensors.numpy

    equal(safetensors.numpy.load_file(str(plain)), want)
    # convert never writes plaintext: no recipient (a sign-only seal) is refused
    with pytest.raises(sealtensors.ConfigError, match="unencrypted on disk"):
        sealtensors.convert_cryptotensors(
            src,
            tmp_path / "signed-only.safetensors",
            **keys.opts("chacha20poly1305"),
            sign_key=tmp_path / "publisher.jwk",
        )
    assert not (tmp_path / "signed-only.safetensors").exists()
    # convert refuses what is not theirs, and sealing theirs as plain is refused
    with pytest.raises(sealtensors.ConfigError, match="not a CryptoTensors file"):
        sealtensors.convert_cryptotensors(plain, tmp_path / "x.safetensors", recipients=[recipient])
    with pytest.raises(sealtensors.ConfigError, match="reserved keys"):
        sealtensors.seal(src, tmp_path / "y.safetensors", [recipient])


def _ct_model_folder(keys: Keys, tmp_path: Path) -> tuple[Path, Path]:
    """A tiny Llama saved in two shards, each shard encrypted by the
    reference library; returns (plain folder, CryptoTensors folder)."""
    import shutil

    import safetensors.numpy
    from conftest import tiny_llama

    plain = tmp_path / "plain"
    tiny_llama(2).save_pretrained(plain, max_shard_size="150KB")
    shards = sorted(plain.glob("*.safetensors"))
    assert len(shards) >= 2
    ct = tmp_path / "ct"
    shutil.copytree(plain, ct)
    for s in shards:
        meta = header(s)[1].get("__metadata__")
        tensors = safetensors.numpy.load_file(str(s))
        ct_np.save_file(tensors, str(ct / s.name), metadata=meta, config=keys.config())
    return plain, ct


def test_transformers_and_convert_a_sharded_folder(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from transformers import AutoModelForCausalLM

    plain, ct = _ct_model_folder(keys, tmp_path)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(plain).eval()(ids).logits
    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(keys.files["aes256gcm"]))
    monkeypatch.setenv("SEALTENSORS_TRUST", str(keys.public))
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        with torch.no_grad():
            b = AutoModelForCausalLM.from_pretrained(ct).eval()(ids).logits
        assert torch.equal(want, b)
        # the folder converts into one sealed model of numbered shards
        ident = tmp_path / "deployer.jwk"
        recipient = sealtensors.keygen(ident)
        sealed = tmp_path / "sealed"
        sealtensors.convert_cryptotensors(ct, sealed, **keys.opts(), recipients=[recipient])
        assert (sealed / "config.json").exists()
        monkeypatch.setenv("SEALTENSORS_IDENTITY", str(ident))
        monkeypatch.delenv("SEALTENSORS_TRUST")
        with torch.no_grad():
            c = AutoModelForCausalLM.from_pretrained(sealed).eval()(ids).logits
        assert torch.equal(want, c)
        assert [f for _, f in sealtensors.verify(sealed, identities=[ident])] == ["unsigned"] * len(
            list(sealed.glob("*.safetensors"))
        )
    finally:
        auto.disable()


def test_key_files_in_their_form(keys: Keys, tmp_path: Path) -> None:
    # a key set with two signers cannot be one trusted key
    two = tmp_path / "two.json"
    other = ed25519_jwk(tmp_path, "two", "s2")
    two.write_text(json.dumps({"keys": [keys.sign, other]}))
    path = tmp_path / "m.safetensors"
    ct_np.save_file(arrays(), str(path), config=keys.config())
    with pytest.raises(sealtensors.SealtensorsError, match="2 Ed25519 keys"):
        sealtensors.safe_open(path, "np", identities=[keys.files["aes256gcm"]], trusted=[str(two)])
    # their key file is not a sealtensors key for sealing
    with pytest.raises(sealtensors.SealtensorsError, match="CryptoTensors key file"):
        sealtensors.seal(path, tmp_path / "x.safetensors", [str(keys.files["aes256gcm"])])
    # the single-key form works as an identity too
    single = tmp_path / "enc.json"
    single.write_text(json.dumps(keys.enc["aes256gcm"]))
    got = sealtensors.numpy.load_file(path, identities=[single], trusted=[str(keys.public)])
    equal(got, arrays())

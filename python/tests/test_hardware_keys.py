"""P-256 identities (SPEC §6.7), in software and in a PKCS#11 token (SoftHSM2,
installed by scripts/system-deps.sh).

- The P-256 test vector checked with a second ECDH implementation (OpenSSL,
  through pyca/cryptography): Z, KEK and the model key.
- A software P-256 identity made by `sealtensors.keygen(..., "p256")`.
- A signing key made on the token (`keygen --sign --pkcs11`) signs headers
  that verify with its `ed25519:` key.
- A P-256 key in a software TPM (swtpm) made by `keygen --tpm`: a sealed
  Llama loads through transformers with SEALTENSORS_IDENTITY naming the TPM
  identity file.
- A key made on the token by `sealtensors keygen --pkcs11`: files sealed to
  it load through `sealtensors.torch.load_file(identities=[URI])` and a
  sealed Llama loads through unmodified transformers after
  `import sealtensors.auto` with SEALTENSORS_IDENTITY=URI, with the plain
  model's logits; a wrong PIN is a NoKeyError that says so.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sealtensors
import sealtensors.hf
import sealtensors.torch as st
import torch
from conftest import ROOT, _target_dir, tiny_llama
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import AutoModelForCausalLM  # noqa: E402

VECTORS = ROOT / "spec" / "vectors"
PIN = "192837"
MODULES = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
]


def _ub(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_p256_vector_matches_openssl() -> None:
    manifest = json.loads((VECTORS / "p256_signed.json").read_text())
    want = manifest["p256_derived"]
    jwk = json.loads((VECTORS / "keys" / "p256-recipient.jwk").read_text())
    sk = ec.derive_private_key(int.from_bytes(_ub(jwk["d"]), "big"), ec.SECP256R1())
    pk = b"\x04" + _ub(jwk["x"]) + _ub(jwk["y"])
    raw = (VECTORS / "p256_signed.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    slot = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["sealtensors.slots"])[0]
    assert slot["type"] == "p256"
    epk = _ub(slot["epk"])
    z = sk.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), epk))
    kek = HKDF(hashes.SHA256(), 32, epk + pk, b"sealtensors/1 p256 slot").derive(z)
    aad = b"sealtensors/1 slot\0p256\0" + bytes.fromhex(want["mk_id"])
    mk = AESGCM(kek).decrypt(b"\0" * 12, _ub(slot["ct"]), aad)
    assert pk.hex() == want["pk"]
    assert hashlib.sha256(b"sealtensors/1 p256 rid\0" + pk).hexdigest()[:16] == slot["rid"]
    assert (z.hex(), kek.hex(), aad.hex(), mk.hex()) == (
        want["z"],
        want["kek"],
        want["slot_aad"],
        want["model_key"],
    )


def test_ecdsa_vector_verifies_with_openssl() -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    manifest = json.loads((VECTORS / "ecdsa_p256_signed.json").read_text())
    header = _header_json(VECTORS / manifest["file"])
    meta = header["__metadata__"]
    sig = json.loads(meta.pop("sealtensors.signature"))
    assert sig["alg"] == "ecdsa-p256" and sig["key"] == manifest["trusted"][0]
    # SPEC §7.1's message: the label and §7's canonical form of the header
    # without the signature, rebuilt here from the SPEC.
    msg = b"sealtensors/1 signature\0" + _canonical(header)
    point = _ub(sig["key"].removeprefix("ecdsa-p256:"))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    rs = _ub(sig["sig"])
    r, s = int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big")
    key.verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    assert s <= order // 2
    # The high-s vector is the same signature's other encoding: OpenSSL
    # accepts it; SPEC §7.1 does not (the library's vector test checks that).
    high_header = _header_json(VECTORS / "fail_ecdsa_p256_high_s.safetensors")
    high = _ub(json.loads(high_header["__metadata__"].pop("sealtensors.signature"))["sig"])
    assert high[:32] == rs[:32] and int.from_bytes(high[32:], "big") == order - s
    key.verify(
        encode_dss_signature(r, order - s),
        b"sealtensors/1 signature\0" + _canonical(high_header),
        ec.ECDSA(hashes.SHA256()),
    )


def _header_json(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def _canonical(header: dict) -> bytes:
    """SPEC §7: C(header, {sealtensors.signature}) with the signature removed."""

    def lp(b: bytes) -> bytes:
        return struct.pack(">Q", len(b)) + b

    meta = header.get("__metadata__", {})
    tensors = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda kv: (kv[1]["data_offsets"][0], kv[1]["data_offsets"][1], kv[0].encode()),
    )
    out = b"sealtensors/1 canonical header\0" + struct.pack(">Q", len(tensors))
    for name, t in tensors:
        out += lp(name.encode()) + lp(t["dtype"].encode()) + struct.pack(">Q", len(t["shape"]))
        out += b"".join(struct.pack(">Q", d) for d in t["shape"])
        out += struct.pack(">QQ", *t["data_offsets"])
    kept = sorted((k.encode(), v.encode()) for k, v in meta.items())
    out += struct.pack(">Q", len(kept))
    for k, v in kept:
        out += lp(k) + lp(v)
    return out


def test_software_p256_identity(tmp_path: Path) -> None:
    ident = tmp_path / "p256.jwk"
    recipient = sealtensors.keygen(ident, "p256")
    assert recipient.startswith("p256:")
    assert json.loads(ident.read_text())["crv"] == "P-256"
    tensors = {"w": torch.arange(24, dtype=torch.float32).reshape(4, 6)}
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, path, recipients=[recipient])
    got = st.load_file(path, identities=[ident], require_encrypted=True)
    assert torch.equal(got["w"], tensors["w"])
    other = tmp_path / "other.jwk"
    sealtensors.keygen(other, "p256")
    with pytest.raises(sealtensors.NoKeyError):
        st.load_file(path, identities=[other])


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SoftHSM2 token `py` with one P-256 key `deploy`, made by the CLI.
    SOFTHSM2_CONF is set for this process before the module is first loaded
    (the library loads a module once per process)."""
    module = next((m for m in MODULES if Path(m).is_file()), None)
    assert module and shutil.which("softhsm2-util"), (
        "SoftHSM2 is not installed; run scripts/system-deps.sh (apt-get install softhsm2)"
    )
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "py"]
        + ["--pin", PIN, "--so-pin", "564738"],
        check=True,
        capture_output=True,
    )
    (d / "pin").write_text(PIN + "\n")
    (d / "wrong-pin").write_text("000000\n")
    subprocess.run(["cargo", "build", "--release", "-p", "sealtensors-cli"], cwd=ROOT, check=True)
    uri = f"pkcs11:token=py;object=deploy?module-path={module}"
    out = subprocess.run(
        [str(_target_dir() / "release" / "sealtensors"), "keygen", "--pkcs11", uri],
        env={**os.environ, "SEALTENSORS_PKCS11_PIN": PIN},
        check=True,
        capture_output=True,
        text=True,
    )
    signer_uri = f"pkcs11:token=py;object=publisher?module-path={module}"
    signer = subprocess.run(
        [
            str(_target_dir() / "release" / "sealtensors"),
            "keygen",
            "--sign",
            "--pkcs11",
            signer_uri,
        ],
        env={**os.environ, "SEALTENSORS_PKCS11_PIN": PIN},
        check=True,
        capture_output=True,
        text=True,
    )
    yield {
        "signer": signer.stdout.strip(),
        "signer_uri": f"{signer_uri}&pin-source=file:{d / 'pin'}",
        "recipient": out.stdout.strip(),
        "uri": f"{uri}&pin-source=file:{d / 'pin'}",
        "wrong": f"{uri}&pin-source=file:{d / 'wrong-pin'}",
    }
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


def test_token_key_through_the_python_api(token: dict[str, str], tmp_path: Path) -> None:
    assert token["recipient"].startswith("p256:")
    tensors = {"w": torch.randn(8, 16, generator=torch.Generator().manual_seed(3))}
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, path, recipients=[token["recipient"]])
    got = st.load_file(path, identities=[token["uri"]], require_encrypted=True)
    assert torch.equal(got["w"], tensors["w"])
    # The URI as a recipient: the public key is read off the token.
    path2 = tmp_path / "m2.safetensors"
    st.save_file(tensors, path2, recipients=[token["uri"]])
    with sealtensors.safe_open(path2, framework="pt", identities=[token["uri"]]) as f:
        assert torch.equal(f.get_tensor("w"), tensors["w"])


def test_token_signing_key_through_the_python_api(token: dict[str, str], tmp_path: Path) -> None:
    assert token["signer"].startswith("ed25519:")
    tensors = {"w": torch.arange(6, dtype=torch.float32)}
    path = tmp_path / "signed.safetensors"
    st.save_file(tensors, path, recipients=[token["recipient"]], sign_key=token["signer_uri"])
    got = st.load_file(
        path, identities=[token["uri"]], trusted=[token["signer"]], require_signed=True
    )
    assert torch.equal(got["w"], tensors["w"])


def test_wrong_pin_is_a_no_key_error(token: dict[str, str], tmp_path: Path) -> None:
    # Run in a fresh process: PKCS#11 logins are per process and token, and
    # this process has logged in to `py` with the right PIN already.
    path = tmp_path / "m.safetensors"
    st.save_file({"w": torch.ones(3)}, path, recipients=[token["recipient"]])
    code = (
        "import sys, sealtensors, sealtensors.torch as st\n"
        "try:\n"
        "    st.load_file(sys.argv[1], identities=[sys.argv[2]])\n"
        "except sealtensors.NoKeyError as e:\n"
        "    print(e); sys.exit(0)\n"
        "sys.exit('loaded with a wrong PIN')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(path), token["wrong"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "refused the PIN" in r.stdout, r.stdout


def test_sealed_llama_loads_through_transformers_with_a_token_key(
    token: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama(2)
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    model.save_pretrained(plain)
    sealtensors.hf.save_pretrained(model, sealed, recipients=[token["recipient"]])
    monkeypatch.setenv("SEALTENSORS_IDENTITY", token["uri"])
    monkeypatch.delenv("SEALTENSORS_TRUST", raising=False)
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            a = AutoModelForCausalLM.from_pretrained(plain).eval()(ids).logits
            b = AutoModelForCausalLM.from_pretrained(sealed).eval()(ids).logits
        assert torch.equal(a, b)
    finally:
        auto.disable()


def _free_port_pair() -> int:
    """A port whose successor is free too (swtpm's control channel)."""
    for _ in range(20):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free pair of loopback ports")


@pytest.fixture()
def swtpm(tmp_path: Path) -> Iterator[str]:
    """A software TPM on loopback, stopped afterwards; yields its TCTI."""
    assert shutil.which("swtpm") and shutil.which("tpm2_getcap"), (
        "swtpm and tpm2-tools are not installed; run scripts/system-deps.sh"
    )
    port = _free_port_pair()
    state = tmp_path / "tpmstate"
    state.mkdir()
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}"]
        + ["--server", f"type=tcp,port={port},bindaddr=127.0.0.1"]
        + ["--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"]
        + ["--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            up = subprocess.run(
                ["tpm2_getcap", "-T", tcti, "properties-fixed"], capture_output=True, check=False
            )
            if up.returncode == 0:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "swtpm did not start"
            time.sleep(0.1)
        yield tcti
    finally:
        proc.kill()
        proc.wait()


def test_sealed_llama_loads_through_transformers_with_a_tpm_key(
    swtpm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["cargo", "build", "--release", "-p", "sealtensors-cli"], cwd=ROOT, check=True)
    ident = tmp_path / "deployer.tpm.json"
    out = subprocess.run(
        [str(_target_dir() / "release" / "sealtensors"), "keygen", "--tpm", "-o", str(ident)],
        env={**os.environ, "SEALTENSORS_TPM_TCTI": swtpm},
        check=True,
        capture_output=True,
        text=True,
    )
    recipient = out.stdout.strip()
    assert recipient.startswith("p256:")
    model = tiny_llama(2)
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    model.save_pretrained(plain)
    sealtensors.hf.save_pretrained(model, sealed, recipients=[recipient])
    monkeypatch.setenv("SEALTENSORS_TPM_TCTI", swtpm)
    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(ident))
    monkeypatch.delenv("SEALTENSORS_TRUST", raising=False)
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            a = AutoModelForCausalLM.from_pretrained(plain).eval()(ids).logits
            b = AutoModelForCausalLM.from_pretrained(sealed).eval()(ids).logits
        assert torch.equal(a, b)
    finally:
        auto.disable()
    # The same identity file with the TPM gone: a NoKeyError, never weights.
    monkeypatch.setenv("SEALTENSORS_TPM_TCTI", f"swtpm:host=127.0.0.1,port={_free_port_pair()}")
    with pytest.raises(sealtensors.NoKeyError, match="TPM"):
        st.load_file(sealed / "model.safetensors", identities=[ident])

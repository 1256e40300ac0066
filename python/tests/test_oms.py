"""OpenSSF model signing (docs/oms.md): bundles written by sealtensors verify
with the real `model-signing` package, and bundles it writes verify with
sealtensors; a tampered file or an untrusted key fails in both directions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import model_signing
import pytest
import sealtensors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]


def ec_key(tmp: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """A PEM private key (PKCS#8) and its PEM public key."""
    k = ec.generate_private_key(curve or ec.SECP256R1())
    priv, pub = tmp / f"{name}.pem", tmp / f"{name}.pub.pem"
    priv.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def sealed_folder(tmp: Path) -> Path:
    """A sealed model folder (two shards, an index, a config): what a
    publisher would sign."""
    import numpy as np
    import sealtensors.numpy

    plain = tmp / "plain"
    plain.mkdir()
    g = np.random.default_rng(0)
    for i in (1, 2):
        sealtensors.numpy.save_file(
            {f"w{i}": g.standard_normal((64, 64)).astype(np.float32)},
            plain / f"model-0000{i}-of-00002.safetensors",
        )
    (plain / "config.json").write_text('{"model_type": "test"}\n')
    (plain / "model.safetensors.index.json").write_text(
        '{"metadata": {}, "weight_map": {"w1": "model-00001-of-00002.safetensors", '
        '"w2": "model-00002-of-00002.safetensors"}}\n'
    )
    recipient = sealtensors.keygen(tmp / "deployer.jwk")
    out = tmp / "sealed"
    sealtensors.seal(plain, out, [recipient])
    return out


def ms_verify(folder: Path, sig: Path, pub: Path) -> None:
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(folder, sig)


def ms_sign(folder: Path, sig: Path, priv: Path) -> None:
    model_signing.signing.Config().use_elliptic_key_signer(private_key=priv).sign(folder, sig)


def test_sealtensors_bundle_verifies_with_model_signing(tmp_path: Path) -> None:
    folder = sealed_folder(tmp_path)
    priv, pub = ec_key(tmp_path, "publisher")
    sig = Path(sealtensors.oms_sign(folder, priv))
    assert sig == folder / "model.sig"
    ms_verify(folder, sig, pub)
    # the model_signing CLI as a user runs it
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_signing",
            "verify",
            "key",
            "--signature",
            str(sig),
            "--public_key",
            str(pub),
            str(folder),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and sealtensors verifies its own bundle
    signer, covered, uncovered = sealtensors.oms_verify(folder, sig, [pub])
    assert covered == 4 and uncovered == [] and signer.startswith("ecdsa-p256:")
    # an untrusted key and a tampered file fail, in both verifiers
    _, other = ec_key(tmp_path, "other")
    with pytest.raises(ValueError, match="Key mismatch"):
        ms_verify(folder, sig, other)
    with pytest.raises(sealtensors.NotAuthenticError, match="none of the 1 trusted"):
        sealtensors.oms_verify(folder, sig, [other])
    (folder / "config.json").write_text('{"model_type": "evil"}\n')
    with pytest.raises(ValueError, match="mismatch"):
        ms_verify(folder, sig, pub)
    with pytest.raises(sealtensors.NotAuthenticError, match="config.json"):
        sealtensors.oms_verify(folder, sig, [pub])


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_model_signing_bundle_verifies_with_sealtensors(
    tmp_path: Path, curve: ec.EllipticCurve
) -> None:
    folder = sealed_folder(tmp_path)
    priv, pub = ec_key(tmp_path, "ms", curve)
    sig = tmp_path / "model.sig"  # outside the folder
    ms_sign(folder, sig, priv)
    signer, covered, uncovered = sealtensors.oms_verify(folder, sig, [pub])
    assert covered == 4 and uncovered == []
    # a file added after signing fails it, or is listed when asked
    (folder / "extra.txt").write_text("added later\n")
    with pytest.raises(sealtensors.NotAuthenticError, match="extra.txt"):
        sealtensors.oms_verify(folder, sig, [pub])
    _, _, uncovered = sealtensors.oms_verify(folder, sig, [pub], allow_uncovered=True)
    assert uncovered == ["extra.txt"]
    os.unlink(folder / "extra.txt")
    # a flipped byte in a sealed shard
    shard = folder / "model-00002-of-00002.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(sealtensors.NotAuthenticError, match="model-00002"):
        sealtensors.oms_verify(folder, sig, [pub])
    # a missing file
    shard.unlink()
    with pytest.raises(sealtensors.NotAuthenticError, match="missing"):
        sealtensors.oms_verify(folder, sig, [pub])


def test_cli_sign_and_verify_through_trust(tmp_path: Path) -> None:
    """`sealtensors sign --oms-key` and `verify --oms` with the PEM key given
    as a trust entry (--trust, or SEALTENSORS_TRUST)."""
    folder = sealed_folder(tmp_path)
    priv, pub = ec_key(tmp_path, "publisher")
    subprocess.run(["cargo", "build", "--quiet", "-p", "sealtensors-cli"], cwd=ROOT, check=True)
    cli = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "sealtensors"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALTENSORS_")}
    env["SEALTENSORS_CONFIG_DIR"] = str(tmp_path / "no-config")

    def run(*args: str | Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(cli), *map(str, args)], capture_output=True, text=True, env={**env, **extra}
        )

    r = run("sign", "--oms-key", priv, "-o", tmp_path / "elsewhere", folder)
    assert r.returncode == 2 and "--oms-signature" in r.stderr, r.stderr
    r = run("sign", "--oms-key", priv, folder)
    assert r.returncode == 0, r.stderr
    ms_verify(folder, folder / "model.sig", pub)
    r = run("verify", "--oms", folder / "model.sig", "--trust", pub, folder)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = run("verify", "--oms", folder / "model.sig", folder, SEALTENSORS_TRUST=str(pub))
    assert r.returncode == 0, r.stdout + r.stderr
    _, other = ec_key(tmp_path, "other")
    r = run("verify", "--oms", folder / "model.sig", "--trust", other, folder)
    assert r.returncode == 3, r.stdout + r.stderr
    (folder / "notes.txt").write_text("unsigned\n")
    r = run("verify", "--oms", folder / "model.sig", "--trust", pub, folder)
    assert r.returncode == 3 and "not covered: notes.txt" in r.stdout, r.stdout + r.stderr

    # A PEM trust entry never weakens the Ed25519 trust of ordinary loads:
    # it does not hide the configuration's signers, and alone it still makes
    # the loader refuse plain files (it trusts a signer, so it wants one).
    import numpy as np
    import sealtensors.numpy

    plain = tmp_path / "plain.safetensors"
    sealtensors.numpy.save_file({"x": np.zeros(4, dtype=np.float32)}, plain)
    cfg = tmp_path / "cfg"
    (cfg / "trusted").mkdir(parents=True)
    sealtensors.keygen(cfg / "trusted" / "publisher.jwk", "ed25519")
    r = run("verify", plain, SEALTENSORS_CONFIG_DIR=str(cfg), SEALTENSORS_TRUST=str(pub))
    assert r.returncode == 3 and "no signature" in r.stderr, r.stdout + r.stderr
    r = run("verify", "--trust", pub, plain)
    assert r.returncode == 3 and "no signature" in r.stderr, r.stdout + r.stderr
    with pytest.raises(sealtensors.NotAuthenticError):
        sealtensors.safe_open(plain, "np", trusted=[str(pub)])

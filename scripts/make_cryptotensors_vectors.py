"""Write spec/vectors/cryptotensors/: CryptoTensors files made by the reference
package itself (`cryptotensors` 0.2.3, in requirements-test.txt), for the Rust
tests of SPEC appendix A (crates/sealtensors/tests/cryptotensors.rs).

The keys are fixed (test keys, published here), the tensors deterministic:
`t.f32` = arange(3000) as float32 (12000 bytes: three 4 KiB chunks in version
2), `t.u8` = arange(10) as uint8, `t.empty` = float32 of shape (0, 2). Nonces
and data keys are drawn by the reference writer, so a rerun writes other
bytes with the same meaning.

    .venv/bin/python scripts/make_cryptotensors_vectors.py
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cryptotensors.numpy as ct_np
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "spec" / "vectors" / "cryptotensors"


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# RFC 8032 test 1's key pair (a published test key).
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
SIGN = {"kty": "okp", "alg": "ed25519", "kid": "vector-sign", "d": b64(SEED), "x": b64(PUB)}
ENC = {
    "aes256gcm": {
        "kty": "oct",
        "alg": "aes256gcm",
        "kid": "vector-enc",
        "k": b64(bytes(range(32))),
    },
    "chacha20poly1305": {
        "kty": "oct",
        "alg": "chacha20poly1305",
        "kid": "vector-enc",
        "k": b64(bytes(range(100, 132))),
    },
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = {
        "t.f32": np.arange(3000, dtype=np.float32),
        "t.u8": np.arange(10, dtype=np.uint8),
        "t.empty": np.zeros((0, 2), dtype=np.float32),
    }
    cases = {
        "v2-aes256gcm": ("aes256gcm", {"version": "2", "chunk_size": 4096}),
        "v1-chacha20poly1305": ("chacha20poly1305", {"version": "1"}),
    }
    for name, (alg, extra) in cases.items():
        cfg = {"enc_key": ENC[alg], "sign_key": SIGN, **extra}
        cfg["policy"] = {"local": 'package model\nallow if input.licence.vector == "yes"'}
        ct_np.save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"k": "v"}, config=cfg)
        (OUT / f"{name}.keys.json").write_text(
            json.dumps({"keys": [ENC[alg], SIGN]}, indent=1) + "\n"
        )
    (OUT / "signer.pub.json").write_text(
        json.dumps({k: v for k, v in SIGN.items() if k != "d"}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()

"""Writing sealed files from tensors held in memory (streaming, one copy of
each tensor's bytes at most, never of the model)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sealtensors._native import Writer, is_remote


def seal_kwargs_given(kw: dict[str, Any], filename: str | os.PathLike[str] = "") -> bool:
    """Whether any option asks for sealing (else the plain safetensors path).
    A plain file is written by safetensors, to a local path only: a URL
    (`s3://...`, where a sealed file is uploaded) is refused for it."""
    sealing = bool(kw.get("recipients") or kw.get("passphrase") or kw.get("sign_key"))
    if not sealing and is_remote(os.fspath(filename)):
        raise ValueError(
            f"{os.fspath(filename)}: a plain file is written to a local path only (safetensors "
            "writes local files); seal it (recipients=..., sign_key=...) to write it to a URL, "
            "or save it locally and upload it"
        )
    return sealing


def write_sealed(
    items: dict[str, Any],
    filename: str | os.PathLike[str],
    metadata: dict[str, str] | None,
    dtype_of: Callable[[Any], str],
    shape_of: Callable[[Any], Sequence[int]],
    bytes_of: Callable[[Any], np.ndarray],
    *,
    recipients: Sequence[str] | None = None,
    sign_key: str | os.PathLike[str] | None = None,
    passphrase: str | None = None,
    encrypt: Sequence[str] | None = None,
    cipher: str = "aes-256-gcm",
    chunk_size: int = 1 << 20,
    model_id: str = "",
    model_version: str = "",
    expires: int | None = None,
    policy: str | None = None,
) -> None:
    """Seal `items` into `filename` in the official safetensors layout."""
    specs = [(name, dtype_of(t), [int(d) for d in shape_of(t)]) for name, t in items.items()]
    w = Writer(
        os.fspath(filename),
        specs,
        metadata,
        list(recipients or ()),
        os.fspath(sign_key) if sign_key is not None else None,
        passphrase,
        list(encrypt) if encrypt is not None else None,
        cipher,
        chunk_size,
        model_id,
        model_version,
        expires,
        True,
        policy,
    )
    for name in w.order():
        w.write(bytes_of(items[name]))
    w.finish()


def save_bytes(save_file: Callable[..., None], tensors: Any, metadata: Any, seal: dict) -> bytes:
    """Sealed bytes, through a private temporary file (mode 0600, removed)."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.safetensors")
        save_file(tensors, p, metadata, **seal)
        with open(p, "rb") as fh:
            return fh.read()


def load_bytes(load_file: Callable[..., Any], data: bytes, keys: dict) -> Any:
    """Open bytes of a plain or sealed file through a private temporary file."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.safetensors")
        with open(p, "wb") as fh:
            fh.write(data)
        return load_file(p, **keys)

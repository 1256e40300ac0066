"""`sealtensors.numpy`: the functions of `safetensors.numpy`, sealing when
asked to and opening sealed files transparently."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import safetensors.numpy as _st

from sealtensors import _convert
from sealtensors._open import safe_open
from sealtensors._save import load_bytes, save_bytes, seal_kwargs_given, write_sealed


def _bytes_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def save_file(
    tensors: dict[str, np.ndarray],
    filename: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    **seal: Any,
) -> None:
    """Save arrays; sealed when `recipients`, `passphrase` or `sign_key` is given."""
    if not seal_kwargs_given(seal, filename):
        _st.save_file(tensors, filename, metadata=metadata)
        return
    write_sealed(
        tensors, filename, metadata, _convert.dtype_of_numpy, lambda a: a.shape, _bytes_of, **seal
    )


def load_file(filename: str | os.PathLike[str], **keys: Any) -> dict[str, np.ndarray]:
    """Load every array of a plain or sealed file."""
    with safe_open(filename, framework="np", **keys) as f:
        return f.get_tensors()


def save(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None, **seal: Any
) -> bytes:
    """Serialise to bytes; sealed when seal options are given."""
    if not seal_kwargs_given(seal):
        return _st.save(tensors, metadata=metadata)
    return save_bytes(save_file, tensors, metadata, seal)


def load(data: bytes, **keys: Any) -> dict[str, np.ndarray]:
    """Deserialise bytes of a plain or sealed file."""
    return load_bytes(load_file, data, keys)

"""Turning decrypted bytes (a uint8 NumPy array that owns them) into framework
tensors without copying, and tensors back into bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

_NUMPY = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
    "C64": np.complex64,
}


def framework(name: str) -> str:
    """Normalise a framework name to "pt" or "np"."""
    if name in ("pt", "torch", "pytorch"):
        return "pt"
    if name in ("np", "numpy"):
        return "np"
    raise ValueError(f"framework {name!r} is not supported for sealed files; use 'pt' or 'np'")


def framework_or_none(name: str) -> str | None:
    """Like `framework`, but None for frameworks only plain files support here."""
    try:
        return framework(name)
    except ValueError:
        return None


def torch_dtypes() -> dict[str, Any]:
    """safetensors dtype strings to torch dtypes (those this torch has)."""
    import torch

    names = {
        "BOOL": "bool",
        "U8": "uint8",
        "I8": "int8",
        "U16": "uint16",
        "I16": "int16",
        "F16": "float16",
        "BF16": "bfloat16",
        "U32": "uint32",
        "I32": "int32",
        "F32": "float32",
        "U64": "uint64",
        "I64": "int64",
        "F64": "float64",
        "C64": "complex64",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "F8_E8M0": "float8_e8m0fnu",
    }
    return {k: getattr(torch, v) for k, v in names.items() if hasattr(torch, v)}


def to_framework(raw: np.ndarray, dtype: str, shape: list[int], fw: str, device: Any) -> Any:
    """View the bytes as `dtype` and `shape` in framework `fw` (no copy on CPU)."""
    if fw == "np":
        if dtype not in _NUMPY:
            raise TypeError(f"numpy has no dtype for {dtype}; use framework='pt'")
        return raw.view(_NUMPY[dtype]).reshape(shape)
    import torch

    dtypes = torch_dtypes()
    if dtype not in dtypes:
        raise TypeError(f"this torch has no dtype for {dtype}")
    t = torch.from_numpy(raw).view(dtypes[dtype]).reshape(shape)
    if str(device) != "cpu":
        t = t.to(device)
    return t


def dtype_of_torch(t: Any) -> str:
    """The safetensors dtype string of a torch tensor."""
    for k, v in torch_dtypes().items():
        if v == t.dtype:
            return k
    raise TypeError(f"dtype {t.dtype} cannot be stored in safetensors")


def dtype_of_numpy(a: np.ndarray) -> str:
    """The safetensors dtype string of a NumPy array."""
    for k, v in _NUMPY.items():
        if np.dtype(v) == a.dtype:
            return k
    raise TypeError(f"dtype {a.dtype} cannot be stored in safetensors")

"""Transparent loading: after `import sealtensors.auto`, code that calls
`safetensors.safe_open` (transformers' `from_pretrained` among it) opens
sealed files too; plain files behave exactly as before.

Keys come from SEALTENSORS_IDENTITY / SEALTENSORS_TRUST or the config
directory, or from `enable(identities=..., trusted=...)`. Once trusted
signers are configured, every file must be signed by one of them: plain
models are then refused too (that is what pinning a signer means).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

import safetensors
import safetensors.numpy
import safetensors.torch

from sealtensors import _open

_defaults: dict[str, Any] = {}


def _patched_safe_open(filename: Any, framework: str, device: Any = "cpu", **kwargs: Any) -> Any:
    opts = {**_defaults, **kwargs}
    tf = sys.modules.get("transformers")
    if tf is not None and "_caller" not in opts:
        # The policy sees who loads the model.
        opts["_caller"] = ("transformers", str(getattr(tf, "__version__", "")))
    return _open.safe_open(filename, framework, device, **opts)


functools.update_wrapper(_patched_safe_open, _open.safe_open)


def _patched_torch_load(data: bytes) -> Any:
    from sealtensors import torch as st

    return st.load(data, **_defaults)


def _patched_numpy_load(data: bytes) -> Any:
    from sealtensors import numpy as snp

    return snp.load(data, **_defaults)


_REAL = {
    "safe_open": _open._REAL_SAFE_OPEN,
    "torch.load": safetensors.torch.load,
    "numpy.load": safetensors.numpy.load,
}


def _originals() -> list[Any]:
    return [_REAL["safe_open"], _REAL["torch.load"], _REAL["numpy.load"]]


def _replacements() -> list[Any]:
    return [_patched_safe_open, _patched_torch_load, _patched_numpy_load]


def _swap(old: list[Any], new: list[Any]) -> None:
    """Replace every module attribute that is one of `old` by its `new`
    counterpart, whatever the name it was imported under (transformers
    imports `safetensors.torch.load` as `_safe_load_bytes`)."""
    table = {id(o): n for o, n in zip(old, new)}
    for mod_name, mod in list(sys.modules.items()):
        if mod_name == "sealtensors" or mod_name.startswith("sealtensors."):
            continue  # our own references to the originals stay originals
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict):
            continue
        for name, value in list(d.items()):
            repl = table.get(id(value))  # `old` keeps its objects alive: ids are unique
            if repl is not None:
                try:
                    setattr(mod, name, repl)
                except (AttributeError, TypeError):
                    pass


def enable(
    identities: Sequence[str | os.PathLike[str]] | None = None,
    trusted: Sequence[str] | None = None,
    require_encrypted: bool = False,
    require_signed: bool = False,
    licence: Any = None,
) -> None:
    """Route `safetensors.safe_open` everywhere through sealtensors.

    Modules that already did `from safetensors import safe_open` (such as
    transformers.modeling_utils) are patched too.
    """
    if identities is not None:
        _defaults["identities"] = list(identities)
    if trusted is not None:
        _defaults["trusted"] = list(trusted)
    if licence is not None:
        _defaults["licence"] = licence
    _defaults["require_encrypted"] = require_encrypted
    _defaults["require_signed"] = require_signed
    _swap(_originals(), _replacements())


def disable() -> None:
    """Undo `enable()`."""
    _swap(_replacements(), _originals())
    _defaults.clear()


enable()

"""Transparent loading: after `import sealtensors.auto`, code that calls
`safetensors.safe_open` (transformers' `from_pretrained` among it) or
`safetensors.torch.load` / `safetensors.numpy.load` opens sealed files too;
plain files behave exactly as before.

`SEALTENSORS_AUTO=1` in the environment does the same in every Python process
started with it (spawned workers included), through a `.pth` file installed
with the wheel: see `_sealtensors_autohook`. Nothing is imported at start-up;
sealtensors arrives when safetensors is first imported.

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

import _sealtensors_autohook as _hook

from sealtensors import _open

_defaults: dict[str, Any] = {}
_enabled = False


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


# The originals, captured before they are replaced: safe_open now, the
# submodules' `load` when they are first imported (safetensors.torch imports
# torch, which sealtensors never imports on its own account).
_PATCHED: dict[str, Any] = {
    "safe_open": _patched_safe_open,
    "torch.load": _patched_torch_load,
    "numpy.load": _patched_numpy_load,
}
# Every original ever seen, per entry point: a re-import of safetensors.torch
# (importlib.reload, or a fresh import after `del sys.modules[...]`) defines a
# new `load`, which is an original too.
_REAL: dict[str, list[Any]] = {
    "safe_open": [_open._REAL_SAFE_OPEN],
    "torch.load": [],
    "numpy.load": [],
}
_SUBMODULES = {"safetensors.torch": "torch.load", "safetensors.numpy": "numpy.load"}


def _capture() -> None:
    for mod_name, key in _SUBMODULES.items():
        mod = sys.modules.get(mod_name)
        load = getattr(mod, "load", None) if mod is not None else None
        if load is None or load is _PATCHED[key] or any(load is o for o in _REAL[key]):
            continue
        _REAL[key].append(load)


def _to_patched() -> tuple[list[Any], list[Any]]:
    old = [o for key in _REAL for o in _REAL[key]]
    new = [_PATCHED[key] for key in _REAL for _ in _REAL[key]]
    return old, new


def _to_originals() -> tuple[list[Any], list[Any]]:
    keys = [key for key in _REAL if _REAL[key]]
    return [_PATCHED[k] for k in keys], [_REAL[k][-1] for k in keys]


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
    global _enabled
    _enabled = True
    _capture()
    _swap(*_to_patched())
    _hook.install(_on_import)


def _on_import(name: str) -> None:
    """Called by the import hook after a watched safetensors module executed."""
    if _enabled:
        _capture()
        _swap(*_to_patched())


def disable() -> None:
    """Undo `enable()`."""
    global _enabled
    _enabled = False
    _swap(*_to_originals())
    _defaults.clear()


enable()

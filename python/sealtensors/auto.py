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
    real = _open._REAL_SAFE_OPEN
    safetensors.safe_open = _patched_safe_open
    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, "safe_open", None) is real:
            try:
                mod.safe_open = _patched_safe_open
            except (AttributeError, TypeError):
                pass


def disable() -> None:
    """Undo `enable()`."""
    real = _open._REAL_SAFE_OPEN
    safetensors.safe_open = real
    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, "safe_open", None) is _patched_safe_open:
            try:
                mod.safe_open = real
            except (AttributeError, TypeError):
                pass
    _defaults.clear()


enable()

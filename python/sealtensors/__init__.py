"""sealtensors: confidential, signed model weights that stay safetensors files.

The surface mirrors `safetensors`: change one import, or nothing at all with
`import sealtensors.auto`.

    from sealtensors import safe_open
    with safe_open("model.safetensors", framework="pt") as f:   # keys found automatically
        w = f.get_tensor("lm_head.weight")

Keys come from explicit arguments, then the environment (SEALTENSORS_IDENTITY,
SEALTENSORS_TRUST, colon-separated), then ~/.config/sealtensors/.
"""

from __future__ import annotations

# First, before any sealtensors module: under SEALTENSORS_AUTO=1 this import
# runs sealtensors.auto (the import hook), which needs sealtensors._open
# whole; importing safetensors from inside _open would hand it half a module.
import safetensors  # noqa: F401  (isort: skip)

from sealtensors._native import (
    ConfigError,
    InvalidFileError,
    NoKeyError,
    NotAuthenticError,
    OutputError,
    PolicyDeniedError,
    SealtensorsError,
    convert_cryptotensors,
    forget_released_keys,
    keygen,
    oms_sign,
    oms_verify,
    policy_template,
    seal,
    unseal,
    verify,
)
from sealtensors._open import load_scope, safe_open

__version__ = "0.1.0"


def _auto_switch_fallback() -> None:
    """SEALTENSORS_AUTO is on, but its start-up hook did not run in this process.

    The `.pth` line (sealtensors_auto.pth in site-packages) installs the import
    hook at interpreter start; when it is missing (an install that lacks it,
    `python -S`, the variable set after start-up), a process that never imports
    sealtensors reads sealed files as ciphertext, and nothing of sealtensors
    runs there to notice. A process that does import sealtensors can notice:
    it warns, naming the cause, and turns `sealtensors.auto` on here.
    """
    import warnings

    import _sealtensors_autohook as hook

    if not hook.env_enabled() or hook.installed():
        return
    warnings.warn(
        "SEALTENSORS_AUTO is set but its start-up hook did not run in this process "
        "(sealtensors_auto.pth is not in site-packages, Python ran with -S, or the "
        "variable was set after start-up): sealtensors.auto is turned on now, but "
        "processes that do not import sealtensors read sealed files as ciphertext. "
        "Install the sealtensors wheel, or run `make py-build` in a development tree.",
        RuntimeWarning,
        stacklevel=2,
    )
    hook.install()  # safetensors is imported: this imports sealtensors.auto


_auto_switch_fallback()

__all__ = [
    "load_scope",
    "ConfigError",
    "InvalidFileError",
    "NoKeyError",
    "NotAuthenticError",
    "OutputError",
    "PolicyDeniedError",
    "SealtensorsError",
    "convert_cryptotensors",
    "forget_released_keys",
    "keygen",
    "oms_sign",
    "oms_verify",
    "policy_template",
    "safe_open",
    "seal",
    "unseal",
    "verify",
]

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
    keygen,
    policy_template,
    seal,
    unseal,
    verify,
)
from sealtensors._open import safe_open

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InvalidFileError",
    "NoKeyError",
    "NotAuthenticError",
    "OutputError",
    "PolicyDeniedError",
    "SealtensorsError",
    "keygen",
    "policy_template",
    "safe_open",
    "seal",
    "unseal",
    "verify",
]

"""Hugging Face helpers: write a sealed model folder with `save_pretrained`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

from sealtensors._native import seal


def save_pretrained(
    model: Any,
    save_directory: str | os.PathLike[str],
    *,
    recipients: Sequence[str] | None = None,
    sign_key: str | os.PathLike[str] | None = None,
    passphrase: str | None = None,
    encrypt: Sequence[str] | None = None,
    model_id: str = "",
    model_version: str = "",
    expires: int | None = None,
    overwrite: bool = False,
    policy: str | None = None,
    **save_kwargs: Any,
) -> None:
    """`model.save_pretrained(...)`, then seal every weight file of the folder
    with one model key (config, tokenizer and index copied as they are).

    Also works for tokenizers and processors saved into the same folder
    beforehand: only `*.safetensors` files are sealed.
    """
    for k in ("push_to_hub", "repo_id", "token", "create_pr"):
        if save_kwargs.get(k):
            # The temporary folder holds the plaintext: never let it be uploaded.
            raise ValueError(
                f"{k}= is not supported here: it would upload the unsealed weights; "
                "push the sealed folder afterwards instead"
            )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        seal(
            tmp,
            os.fspath(save_directory),
            list(recipients or ()),
            os.fspath(sign_key) if sign_key is not None else None,
            passphrase,
            list(encrypt) if encrypt is not None else None,
            "aes-256-gcm",
            1 << 20,
            model_id,
            model_version,
            expires,
            overwrite,
            policy,
        )

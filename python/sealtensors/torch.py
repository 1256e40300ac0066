"""`sealtensors.torch`: the functions of `safetensors.torch`, sealing when
asked to and opening sealed files transparently.

Without seal options, `save_file`/`save` write exactly what safetensors
writes. With `recipients`, `passphrase` or `sign_key` they write a sealed file.
"""

from __future__ import annotations

import os
from typing import Any

import safetensors.torch as _st
import torch

from sealtensors import _convert
from sealtensors._native import check_loaded, weight_files
from sealtensors._open import load_scope, safe_open
from sealtensors._save import load_bytes, save_bytes, seal_kwargs_given, write_sealed


def _bytes_of(t: torch.Tensor) -> Any:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def save_file(
    tensors: dict[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    **seal: Any,
) -> None:
    """Save tensors; sealed when `recipients`, `passphrase` or `sign_key` is given.

    Seal options: recipients (x25519:... or p256:... strings or JWK paths), passphrase,
    sign_key (Ed25519 JWK path or pkcs11: URI), encrypt (name globs; default all), cipher,
    chunk_size, model_id, model_version, expires (Unix seconds), policy (Rego text).
    """
    if not seal_kwargs_given(seal, filename):
        _st.save_file(tensors, filename, metadata=metadata)
        return
    # The same refusals as safetensors (shared or sparse tensors).
    check = getattr(_st, "_evaluate_tensors_for_save", None) or getattr(_st, "_flatten", None)
    if check is not None:
        check(tensors)
    write_sealed(
        tensors,
        filename,
        metadata,
        _convert.dtype_of_torch,
        lambda t: t.shape,
        _bytes_of,
        **seal,
    )


def load_file(
    filename: str | os.PathLike[str], device: Any = "cpu", **keys: Any
) -> dict[str, torch.Tensor]:
    """Load every tensor of a plain or sealed file (keys: identities, trusted,
    passphrase, require_encrypted, require_signed)."""
    with safe_open(filename, framework="pt", device=device, **keys) as f:
        return f.get_tensors()


def load_folder(
    folder: str | os.PathLike[str], device: Any = "cpu", **keys: Any
) -> dict[str, torch.Tensor]:
    """Load every tensor of a model folder: a local folder, or a folder URL
    (`s3://bucket/model`, `gs://`, `az://`, `https://host/model`: read in
    place, nothing written to disk). Its weight files are opened as one model
    (one key unwrap or broker release, the complete shard set checked);
    keys as for `load_file`. For `from_pretrained(None, config=...,
    state_dict=load_folder(url))`: docs/object-storage.md."""
    out: dict[str, torch.Tensor] = {}
    with load_scope():
        names = weight_files(os.fspath(folder))
        for name in names:
            with safe_open(name, framework="pt", device=device, **keys) as f:
                got = f.get_tensors()
            twice = out.keys() & got.keys()
            if twice:
                raise ValueError(
                    f"{name} holds {sorted(twice)[0]!r}, which another weight file of the "
                    "folder holds too: this is not one model"
                )
            out.update(got)
        # The listing above and the folder check of the first open are two
        # reads: every shard the check found must have been loaded.
        check_loaded(os.fspath(folder), names)
    return out


def save(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, **seal: Any
) -> bytes:
    """Serialise to bytes; sealed when seal options are given."""
    if not seal_kwargs_given(seal):
        return _st.save(tensors, metadata=metadata)
    return save_bytes(save_file, tensors, metadata, seal)


def load(data: bytes, **keys: Any) -> dict[str, torch.Tensor]:
    """Deserialise bytes of a plain or sealed file."""
    return load_bytes(load_file, data, keys)


def save_model(
    model: torch.nn.Module,
    filename: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    force_contiguous: bool = False,
    **seal: Any,
) -> None:
    """Save a model's state dict (shared tensors stored once), like safetensors."""
    if not seal_kwargs_given(seal, filename):
        _st.save_model(model, str(filename), metadata, force_contiguous)
        return
    state = model.state_dict()
    to_removes = _st._remove_duplicate_names(state)
    for kept, removed in to_removes.items():
        for name in removed:
            if metadata is None:
                metadata = {}
            if name not in metadata:
                metadata[name] = kept
            del state[name]
    if force_contiguous:
        state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, filename, metadata, **seal)


def load_model(
    model: torch.nn.Module,
    filename: str | os.PathLike[str],
    strict: bool = True,
    device: Any = "cpu",
    **keys: Any,
) -> tuple[list[str], list[str]]:
    """Load a (plain or sealed) file into a model; returns (missing, unexpected)."""
    state = load_file(filename, device=device, **keys)
    model_state_expected = model.state_dict().keys()
    to_removes = _st._remove_duplicate_names(model.state_dict(), preferred_names=list(state.keys()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing)
    for to_remove_group in to_removes.values():
        for to_remove in to_remove_group:
            if to_remove not in model_state_expected:
                continue
            missing.discard(to_remove)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"Error(s) in loading state_dict for {model.__class__.__name__}: "
            f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}"
        )
    return sorted(missing), list(unexpected)

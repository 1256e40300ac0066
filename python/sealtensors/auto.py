"""Transparent loading: after `import sealtensors.auto`, code that calls
`safetensors.safe_open` (transformers' `from_pretrained` among it),
`safetensors.torch.load` / `safetensors.numpy.load`, or the lower-level
`safetensors.deserialize(bytes)` and `safetensors._safe_open_handle(file)`
opens sealed files too; plain files behave exactly as before. These are all
the entry points through which safetensors reads a file's bytes (its
`load_file`, `load_model` and the flax, mlx, paddle and tensorflow modules go
through them), so none of them hands ciphertext to a model as weights.

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

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import _sealtensors_autohook as _hook

from sealtensors import _open
from sealtensors._native import InvalidFileError

_defaults: dict[str, Any] = {}
_enabled = False


def _options(**kwargs: Any) -> dict[str, Any]:
    opts = {**_defaults, **kwargs}
    tf = sys.modules.get("transformers")
    if tf is not None and "_caller" not in opts:
        # The policy sees who loads the model.
        opts["_caller"] = ("transformers", str(getattr(tf, "__version__", "")))
    return opts


def _patched_safe_open(filename: Any, framework: str, device: Any = "cpu", **kwargs: Any) -> Any:
    return _open.safe_open(filename, framework, device, **_options(**kwargs))


functools.update_wrapper(_patched_safe_open, _open.safe_open)

# The reserved prefix of a sealed (or sign-only) file's metadata keys (spec/SPEC.md §3),
# CryptoTensors' reserved keys (SPEC appendix A: their files are never plain), and the
# header size limit of safetensors, for `_header_says_sealed`.
_SEAL_PREFIX = "sealtensors."
_CRYPTOTENSORS_KEYS = frozenset(
    ("__crypto_keys__", "__encryption__", "__signature__", "__policy__")
)
_MAX_HEADER = 100_000_000


def _patched_deserialize(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """`safetensors.deserialize`, for plain or sealed bytes.

    The bytes are opened through sealtensors (a private temporary file, as
    `sealtensors.numpy.load` does), so the loader's keys and trusted signers
    apply. Plain content then goes to the real `deserialize`, unchanged; a
    sealed file's tensors are verified, decrypted, and returned in the same
    form, in file order: ``[(name, {"shape": [...], "dtype": "F32", "data":
    bytearray(...)}), ...]``.
    """
    real = _open._REAL_DESERIALIZE
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        with open(path, "wb") as fh:
            fh.write(data)
        with _open.safe_open(path, "np", **_options()) as f:
            if f._plain is not None:
                return real(data)
            names = f.offset_keys()
            raws = f._file.read_many(names)
            out = []
            for name, raw in zip(names, raws):
                dtype, shape, _, _ = f._file.info(name)
                entry = {"shape": list(shape), "dtype": dtype, "data": bytearray(memoryview(raw))}
                out.append((name, entry))
            return out


def _path_of(handle: Any) -> str | None:
    """A path that opens the same file as `handle`'s descriptor, or None."""
    try:
        fd = handle.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    if not isinstance(fd, int):
        return None
    name = getattr(handle, "name", None)
    if isinstance(name, (str, os.PathLike)):
        try:
            if os.path.samestat(os.fstat(fd), os.stat(name)):
                return os.fspath(name)
        except OSError:
            pass
    proc = f"/proc/self/fd/{fd}"  # Linux: the open file itself, even if renamed or deleted
    return proc if os.path.exists(proc) else None


def _header_says_sealed(handle: Any) -> bool:
    """Whether the file behind `handle` has sealtensors' reserved metadata keys
    (read with pread: the handle's position is left alone). A header that does
    not parse is not called sealed: the real opener then refuses it itself."""
    try:
        fd = handle.fileno()
        head = os.pread(fd, 8, 0)
        if len(head) != 8:
            return False
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER:
            return False
        doc = json.loads(os.pread(fd, n, 8))
    except (AttributeError, OSError, ValueError, TypeError):
        return False
    meta = doc.get("__metadata__") if isinstance(doc, dict) else None
    return isinstance(meta, dict) and any(
        str(k).startswith(_SEAL_PREFIX) or k in _CRYPTOTENSORS_KEYS for k in meta
    )


def _patched_safe_open_handle(
    handle: Any, framework: str, device: Any = "cpu", **kwargs: Any
) -> Any:
    """`safetensors._safe_open_handle(file, ...)`, for plain or sealed files.

    The file behind the handle is opened through sealtensors by a path to it
    (its name, or /proc/self/fd on Linux): a sealed file is verified and
    decrypted like `safe_open`'s; a plain one is handed to the real
    `_safe_open_handle` with the same handle. Where no path to the handle's file
    can be found, sealed content is refused (InvalidFileError), never returned
    as ciphertext.
    """
    real = _open._REAL_SAFE_OPEN_HANDLE
    assert real is not None  # patched only where safetensors has it
    path = _path_of(handle)
    if path is None:
        if _header_says_sealed(handle):
            raise InvalidFileError(
                "this file handle holds a sealtensors file and its file cannot be "
                "reopened by path here: open it with sealtensors.safe_open(path, ...)"
            )
        return real(handle, framework, device, **kwargs)
    return _open.safe_open(
        path,
        framework,
        device,
        _open_plain=lambda: real(handle, framework, device, **kwargs),
        **_options(),
    )


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
    "deserialize": _patched_deserialize,
    "_safe_open_handle": _patched_safe_open_handle,
    "torch.load": _patched_torch_load,
    "numpy.load": _patched_numpy_load,
}
# Every original ever seen, per entry point: a re-import of safetensors.torch
# (importlib.reload, or a fresh import after `del sys.modules[...]`) defines a
# new `load`, which is an original too. The package's own functions live in its
# extension module, which is never re-executed.
_REAL: dict[str, list[Any]] = {
    "safe_open": [_open._REAL_SAFE_OPEN],
    "deserialize": [_open._REAL_DESERIALIZE],
    "_safe_open_handle": [h for h in (_open._REAL_SAFE_OPEN_HANDLE,) if h is not None],
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


# transformers' from_pretrained methods (the models' and the auto classes')
# before they were wrapped.
_FROM_PRETRAINED: list[Any] = []

# The files of a model folder URL fetched for from_pretrained (small, and
# plaintext in a sealed model too); the weights stay in the bucket.
_CONFIG_FILES = ("config.json", "generation_config.json")
_MAX_CONFIG_BYTES = 16 << 20
# Local folders holding a folder URL's config, while its from_pretrained runs.
_URL_OF_CONFIG: dict[str, str] = {}


@contextlib.contextmanager
def _config_of(url: str, names: Sequence[str] = _CONFIG_FILES) -> Iterator[str]:
    """A private local folder with the config files `names` (the first one
    required) of the model (or adapter) folder at `url`, known to the
    wrapped `from_pretrained` while it exists."""
    from sealtensors._native import read_small

    base = url.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="sealtensors-config-") as tmp:
        for name in names:
            data = read_small(f"{base}/{name}", _MAX_CONFIG_BYTES)
            if data is not None:
                with open(os.path.join(tmp, name), "wb") as fh:
                    fh.write(data)
        if not os.path.exists(os.path.join(tmp, names[0])):
            raise FileNotFoundError(
                f"{url} holds no {names[0]}: from_pretrained needs the config beside the "
                "weights (or build the model yourself and load "
                "sealtensors.torch.load_folder(url) into it)"
            )
        _URL_OF_CONFIG[tmp] = url
        try:
            yield tmp
        finally:
            _URL_OF_CONFIG.pop(tmp, None)


def _name_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    return os.fspath(name) if isinstance(name, (str, os.PathLike)) else None


def _replace_name(args: tuple[Any, ...], kwargs: dict[str, Any], name: Any) -> tuple[Any, ...]:
    if args:
        return (name, *args[1:])
    kwargs["pretrained_model_name_or_path"] = name
    return ()


def _model_from_url(func: Any, klass: Any, config_dir: str, args: Any, kwargs: Any) -> Any:
    """`from_pretrained` of the model whose config was fetched into
    `config_dir`: its weights read in place from the folder URL as one model
    (`sealtensors.torch.load_folder`), handed to transformers as its
    `state_dict` (transformers then builds the model from the config alone).

    The config comes from the store unauthenticated (the weights are
    authenticated): a model it describes must take every weight and leave
    none of its own unfilled, or the load is refused, so an edited config
    cannot add layers that run on random weights or drop sealed ones."""
    from sealtensors.torch import load_folder

    url = _URL_OF_CONFIG[config_dir]
    if kwargs.get("state_dict") is not None:
        raise ValueError("state_dict= cannot be given with a model folder URL")
    config = kwargs.get("config")
    if config is None or isinstance(config, (str, os.PathLike)):
        kwargs["config"] = klass.config_class.from_pretrained(config or config_dir)
    kwargs["state_dict"] = load_folder(url, **_options())
    wants_info = bool(kwargs.pop("output_loading_info", False))
    args = _replace_name(args, kwargs, None)
    model, info = func(klass, *args, output_loading_info=True, **kwargs)
    wrong = {k: v for k, v in info.items() if v}
    if wrong:
        raise InvalidFileError(
            f"{url}: its weights do not fit the model its config.json describes ({wrong}): "
            "the config does not belong to these weights"
        )
    gen = os.path.join(config_dir, "generation_config.json")
    if os.path.exists(gen) and getattr(model, "can_generate", lambda: False)():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(config_dir)
    return (model, info) if wants_info else model


def _replace_from_pretrained(cls: Any, make: Callable[[Any], Any]) -> None:
    """Replace the `from_pretrained` classmethod that `cls` itself defines
    by `make(original function)`, once (idempotent), recorded for
    `disable()`."""
    current = cls.__dict__.get("from_pretrained") if cls is not None else None
    func = getattr(current, "__func__", None)
    if func is None or getattr(func, "_sealtensors_scoped", False):
        return
    wrapper = functools.wraps(func)(make(func))
    wrapper._sealtensors_scoped = True
    _FROM_PRETRAINED.append((cls, current))
    cls.from_pretrained = classmethod(wrapper)


def _wrap(cls: Any, models: bool) -> None:
    """Wrap `cls.from_pretrained` (idempotent): one load scope (one key
    release for a sharded sealed model), and a model folder URL taken as the
    model (`s3://bucket/model`, `gs://`, `az://`, `https://`): its config
    fetched into a private folder, its weights read in place. `models`: the
    class is transformers' PreTrainedModel (else an auto class, which
    resolves the config and calls the model class's)."""

    def make(func: Any) -> Any:
        def from_pretrained(klass: Any, *args: Any, **kwargs: Any) -> Any:
            from sealtensors._native import is_remote

            with _open.load_scope():
                name = _name_of(args, kwargs)
                if name is not None and is_remote(name):
                    with _config_of(name) as config_dir:
                        args = _replace_name(args, kwargs, config_dir)
                        return from_pretrained(klass, *args, **kwargs)
                if models and name is not None and name in _URL_OF_CONFIG:
                    return _model_from_url(func, klass, name, args, kwargs)
                return func(klass, *args, **kwargs)

        return from_pretrained

    _replace_from_pretrained(cls, make)


# PEFT: `PeftModel.from_pretrained(model, "s3://bucket/adapter")`.
_ADAPTER_CONFIG = ("adapter_config.json",)
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_LOAD_WEIGHTS: list[tuple[Any, Any]] = []
# The weight names read for an adapter URL, by its config folder, while its
# from_pretrained runs.
_PEFT_LOADED: dict[str, set[str]] = {}


def _wrap_peft() -> None:
    """Let PEFT take an adapter folder URL (idempotent, once peft.peft_model
    exists): `PeftModel.from_pretrained` fetches `adapter_config.json` into
    a private folder, and PEFT's `load_peft_weights`, asked for that folder,
    reads the adapter's weights in place from the URL through sealtensors
    (keys and trust as for models). Other calls are PEFT's own."""
    pm = sys.modules.get("peft.peft_model")
    if pm is None:
        return

    def make(func: Any) -> Any:
        def from_pretrained(
            klass: Any, model: Any, model_id: Any, *args: Any, **kwargs: Any
        ) -> Any:
            from sealtensors._native import is_remote

            name = os.fspath(model_id) if isinstance(model_id, (str, os.PathLike)) else None
            if name is None or not is_remote(name):
                return func(klass, model, model_id, *args, **kwargs)
            if kwargs.get("subfolder"):
                raise ValueError("subfolder= is not supported for an adapter URL: name the folder")
            with _config_of(name, _ADAPTER_CONFIG) as config_dir:
                try:
                    out = func(klass, model, config_dir, *args, **kwargs)
                    _check_adapter_fits(out, name, _PEFT_LOADED.get(config_dir), args, kwargs)
                    return out
                finally:
                    _PEFT_LOADED.pop(config_dir, None)

        return from_pretrained

    _replace_from_pretrained(getattr(pm, "PeftModel", None), make)
    original = getattr(pm, "load_peft_weights", None)
    if original is None or getattr(original, "_sealtensors_scoped", False):
        return

    @functools.wraps(original)
    def load_peft_weights(model_id: Any, device: Any = None, *args: Any, **kwargs: Any) -> Any:
        url = _URL_OF_CONFIG.get(os.fspath(model_id)) if model_id is not None else None
        if url is None:
            return original(model_id, device, *args, **kwargs)
        if args or kwargs.get("key_mapping") or kwargs.get("subfolder"):
            raise ValueError("key_mapping= and subfolder= are not supported for an adapter URL")
        from sealtensors.torch import load_file

        if device is None:
            from peft.utils import infer_device

            device = infer_device()
        weights = load_file(f"{url.rstrip('/')}/{_ADAPTER_WEIGHTS}", device=device, **_options())
        _PEFT_LOADED[os.fspath(model_id)] = set(weights)
        return weights

    load_peft_weights._sealtensors_scoped = True  # type: ignore[attr-defined]
    _PEFT_LOAD_WEIGHTS.append((pm, original))
    pm.load_peft_weights = load_peft_weights


def _check_adapter_fits(
    model: Any, url: str, loaded: set[str] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """The adapter config came from the store unauthenticated: the adapter
    it describes must hold exactly the sealed weights read (no module left
    on its initial weights, none of the sealed ones dropped)."""
    from peft.utils import get_peft_model_state_dict

    adapter = kwargs.get("adapter_name", args[0] if args else "default")
    want = set(get_peft_model_state_dict(model, adapter_name=adapter))
    if loaded is None or want != loaded:
        missing = sorted(want - (loaded or set()))[:3]
        extra = sorted((loaded or set()) - want)[:3]
        raise InvalidFileError(
            f"{url}: its adapter_config.json does not describe its sealed weights (not in the "
            f"file: {missing}; not in the adapter: {extra}): the config does not belong to them"
        )


def _unwrap_peft() -> None:
    while _PEFT_LOAD_WEIGHTS:
        mod, original = _PEFT_LOAD_WEIGHTS.pop()
        if getattr(getattr(mod, "load_peft_weights", None), "_sealtensors_scoped", False):
            mod.load_peft_weights = original


def _wrap_from_pretrained() -> None:
    """Wrap transformers' `from_pretrained` methods ([`_wrap`]) once their
    modules exist: the models' and the auto classes'."""
    mu = sys.modules.get("transformers.modeling_utils")
    if mu is not None:
        _wrap(getattr(mu, "PreTrainedModel", None), True)
    # Each auto class (AutoModelForCausalLM...) holds its own copy of the
    # base class's method: every one is wrapped, the base left alone.
    af = sys.modules.get("transformers.models.auto.auto_factory")
    base = getattr(af, "_BaseAutoModelClass", None) if af is not None else None
    todo = list(base.__subclasses__()) if base is not None else []
    while todo:
        c = todo.pop()
        todo.extend(c.__subclasses__())
        _wrap(c, False)
    _wrap_peft()


def _unwrap_from_pretrained() -> None:
    _unwrap_peft()
    while _FROM_PRETRAINED:
        cls, original = _FROM_PRETRAINED.pop()
        current = getattr(cls.__dict__.get("from_pretrained"), "__func__", None)
        if getattr(current, "_sealtensors_scoped", False):
            # Only our own wrapper is undone: a patch another library made on
            # top of it since stays (and keeps calling ours).
            cls.from_pretrained = original


def enable(
    identities: Sequence[str | os.PathLike[str]] | None = None,
    trusted: Sequence[str] | None = None,
    require_encrypted: bool = False,
    require_signed: bool = False,
    licence: Any = None,
) -> None:
    """Route `safetensors.safe_open` (and the other entry points that read a
    file: `deserialize`, `_safe_open_handle`, `torch.load`, `numpy.load`)
    everywhere through sealtensors.

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
    _wrap_from_pretrained()
    _hook.install(_on_import)


def _on_import(name: str) -> None:
    """Called by the import hook after a watched module executed (safetensors'
    modules, transformers.modeling_utils)."""
    if _enabled:
        _capture()
        _swap(*_to_patched())
        _wrap_from_pretrained()


def disable() -> None:
    """Undo `enable()`."""
    global _enabled
    _enabled = False
    _swap(*_to_originals())
    _unwrap_from_pretrained()
    _defaults.clear()


enable()

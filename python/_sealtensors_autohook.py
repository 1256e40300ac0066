"""The import hook behind ``SEALTENSORS_AUTO=1`` (and ``import sealtensors.auto``).

``sealtensors_auto.pth``, installed beside this module in site-packages, runs at
every interpreter start::

    SEALTENSORS_AUTO=1 python serve.py ...     # sealed models load transparently

When the variable is on, it calls `install()`, which puts a finder first on
``sys.meta_path`` and returns. When ``safetensors`` is first imported, the
finder imports ``sealtensors.auto`` right after it, before any other module
can take a reference to ``safetensors.safe_open``; when ``safetensors.torch``
or ``safetensors.numpy`` are imported (or re-imported) later,
``sealtensors.auto`` patches their ``load`` as they arrive. When transformers'
auto classes (``transformers.models.auto.modeling_auto``),
``transformers.modeling_utils`` or ``peft.peft_model`` arrive first,
``sealtensors.auto`` is imported then, so that their ``from_pretrained`` is
wrapped before it is first called (a folder URL given to it,
``s3://bucket/model``, needs the wrapper).

The switch is on for any value but "", "0", "false", "no" and "off": a value
it does not understand turns it on rather than silently leaving it off.

Development installs (``make py-build``, i.e. ``maturin develop``) get the
``.pth`` file and this module in site-packages from the Makefile, as the wheel
installs them. Where the ``.pth`` line did not run but the variable is on,
``import sealtensors`` notices (the finder is missing), warns, and turns
``sealtensors.auto`` on in that process: see `sealtensors._auto_switch_fallback`.

If sealtensors itself fails to import, the import of safetensors fails too:
loading ciphertext as weights is never the silent fallback. What the hook
cannot see (docs in README, "SEALTENSORS_AUTO"): a process started with
``python -S`` (no site-packages processing, so no ``.pth``), and an import
hook that a program puts before this one on ``sys.meta_path``. Where the
guarantee matters, open files through sealtensors itself (``--load-format
sealtensors`` in vLLM, `sealtensors.safe_open`, ``require_encrypted``).

This module must stay cheap: it runs in every process started with the
variable on, so it imports only what the interpreter has already loaded
(``sys``, ``os``, ``_thread``) and never sealtensors at start-up.
"""

from __future__ import annotations

import _thread
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (7 ms)
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

ENV = "SEALTENSORS_AUTO"
# transformers.modeling_utils, the module that makes the auto classes, and
# PEFT's: sealtensors.auto makes each from_pretrained one load scope (one key
# release per sealed model), and lets it take a folder URL, once those
# modules exist.
WATCHED = (
    "safetensors",
    "safetensors.torch",
    "safetensors.numpy",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "peft.peft_model",
)
_OFF = ("", "0", "false", "no", "off")

# Set by sealtensors.auto once it is imported; until then the hook's only job
# is to import it when safetensors arrives.
_handler: Callable[[str], None] | None = None


def env_enabled(environ: Any = None) -> bool:
    """Whether SEALTENSORS_AUTO asks for transparent loading: any value but
    "", "0", "false", "no" or "off" (case and spaces ignored)."""
    value = (environ if environ is not None else os.environ).get(ENV, "")
    return value.strip().lower() not in _OFF


def _loaded(name: str) -> None:
    if _handler is not None:
        _handler(name)
    elif name == "safetensors" or name.startswith(("transformers.", "peft.")):
        __import__("sealtensors.auto")


class _ThenNotify:
    """A loader that runs the real one, then tells sealtensors which module
    arrived. Other attributes (get_data, get_resource_reader, is_package, ...)
    are the real loader's."""

    def __init__(self, loader: Any) -> None:
        self.__dict__["_loader"] = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self.__dict__["_loader"], "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self.__dict__["_loader"].exec_module(module)
        _loaded(module.__name__)

    def load_module(self, fullname: str) -> ModuleType:
        # Loaders from before PEP 451 (no exec_module): wrapped the same way.
        module = self.__dict__["_loader"].load_module(fullname)
        _loaded(fullname)
        return module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_loader":
            raise AttributeError(name)
        return getattr(self.__dict__["_loader"], name)


class _Finder:
    """Finds the watched modules through the other finders and wraps their loader."""

    def __init__(self) -> None:
        # (thread, module) pairs being looked up: a lookup in one thread
        # never makes another thread's lookup skip the wrapping.
        self._busy: set[tuple[int, str]] = set()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        key = (_thread.get_ident(), fullname)
        if fullname not in WATCHED or key in self._busy:
            return None
        self._busy.add(key)
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(key)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenNotify(spec.loader)
        return spec

    def invalidate_caches(self) -> None:
        """Nothing cached here (importlib.invalidate_caches calls this)."""


def installed() -> bool:
    """Whether the finder is on sys.meta_path (the `.pth` line, or
    `sealtensors.auto`, put it there)."""
    return any(isinstance(f, _Finder) for f in sys.meta_path)


def install(handler: Callable[[str], None] | None = None) -> None:
    """Put the finder on sys.meta_path (once). With `handler`, sealtensors.auto
    takes over the notifications; without, the first import of safetensors
    imports sealtensors.auto."""
    global _handler
    if handler is not None:
        _handler = handler
    if not installed():
        sys.meta_path.insert(0, _Finder())
    if handler is None and "safetensors" in sys.modules:
        __import__("sealtensors.auto")

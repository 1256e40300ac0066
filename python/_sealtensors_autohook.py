"""The import hook behind ``SEALTENSORS_AUTO=1`` (and ``import sealtensors.auto``).

``sealtensors_auto.pth``, installed beside this module in site-packages, runs at
every interpreter start::

    SEALTENSORS_AUTO=1 python serve.py ...     # sealed models load transparently

When the variable is on, it calls `install()`, which puts a finder on
``sys.meta_path`` and returns: nothing else is imported, so a process that
never loads safetensors pays nothing but this module. When ``safetensors`` is
first imported, the finder imports ``sealtensors.auto`` right after it, before
any other module can take a reference to ``safetensors.safe_open``; when
``safetensors.torch`` or ``safetensors.numpy`` are imported later,
``sealtensors.auto`` patches their ``load`` as they arrive.

If sealtensors itself fails to import, the import of safetensors fails too:
loading ciphertext as weights is never the silent fallback.

This module must stay standard-library only and must not import sealtensors
at start-up.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Callable

ENV = "SEALTENSORS_AUTO"
WATCHED = ("safetensors", "safetensors.torch", "safetensors.numpy")

# Set by sealtensors.auto once it is imported; until then the hook's only job
# is to import it when safetensors arrives.
_handler: Callable[[str], None] | None = None


def env_enabled(environ: Any = None) -> bool:
    """Whether SEALTENSORS_AUTO asks for transparent loading ("1", "true", "yes", "on")."""
    value = (environ if environ is not None else os.environ).get(ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _loaded(name: str) -> None:
    if _handler is not None:
        _handler(name)
    elif name == "safetensors":
        importlib.import_module("sealtensors.auto")


class _ThenNotify(Loader):
    """Runs the real loader, then tells sealtensors which module arrived."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _loaded(module.__name__)

    def __getattr__(self, name: str) -> Any:
        # get_data, get_resource_reader, is_package...: the real loader's.
        return getattr(self._loader, name)


class _Finder(MetaPathFinder):
    """Finds the watched modules through the other finders and wraps their loader."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in WATCHED or fullname in self._busy:
            return None
        self._busy.add(fullname)
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
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenNotify(spec.loader)
        return spec


def install(handler: Callable[[str], None] | None = None) -> None:
    """Put the finder on sys.meta_path (once). With `handler`, sealtensors.auto
    takes over the notifications; without, the first import of safetensors
    imports sealtensors.auto."""
    global _handler
    if handler is not None:
        _handler = handler
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if handler is None and "safetensors" in sys.modules:
        importlib.import_module("sealtensors.auto")

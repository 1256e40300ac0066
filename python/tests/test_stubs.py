"""The hand-written stubs of the native module match the compiled module."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import sealtensors._native as native

STUB = Path(native.__file__).with_name("_native.pyi")
if not STUB.exists():  # editable install: the .so may live elsewhere
    STUB = Path(__file__).resolve().parents[1] / "sealtensors" / "_native.pyi"


def _stub_api() -> dict[str, list[str] | None]:
    tree = ast.parse(STUB.read_text())
    out: dict[str, list[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.ClassDef):
            out[node.name] = None
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    args = [a.arg for a in item.args.args if a.arg != "self"]
                    out[f"{node.name}.{item.name}"] = args
    return out


def _params(obj: object) -> list[str]:
    sig = inspect.signature(obj)  # pyo3 sets __text_signature__
    return [p for p in sig.parameters if p != "self"]


def test_stubs_cover_the_module() -> None:
    stub = _stub_api()
    public = {n for n in dir(native) if not n.startswith("_")}
    assert public == {n for n in stub if "." not in n}
    for name, args in stub.items():
        if "." in name:
            cls, meth = name.split(".")
            target = getattr(native, cls)
            if meth == "__init__":
                assert _params(target) == args, name
            else:
                assert _params(getattr(target, meth)) == args, name
        elif args is not None:
            assert _params(getattr(native, name)) == args, name

"""Lazy package exports: ``from pkg import Name`` imports only the submodule that defines ``Name``, so a
light caller (config loading, reward workers) does not pay for torch and megatron."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """(``__all__``, module ``__getattr__``) for ``package`` whose names live in the given submodules."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(where), __getattr__

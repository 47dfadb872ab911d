"""Package attributes that load on first use (PEP 562), for packages whose import must stay cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], names: list[str]) -> tuple[Callable, Callable]:
    """A ``__getattr__`` and a ``__dir__`` for ``package``: ``exports`` maps each name to the module that defines it;
    a name is imported when first asked for and then kept in the package's namespace.

    Usage, in the package's ``__init__``: ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)``.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__

"""Lazy public names for subpackages (PEP 562).

``amlrelay --help`` imports every command group, and the runbook imports pieces of ``amlrelay.aml`` for
tag-back: neither should pay for requests, azure-core, the Storage SDKs or the relay chain it does not use.
A subpackage lists its public names with the private module each lives in, and binds the two functions
this returns as its module-level ``__getattr__`` and ``__dir__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, table: Mapping[str, tuple[str, str]]) -> tuple[Callable[[str], Any],
                                                                          Callable[[], list[str]]]:
    """``table``: public name -> (relative module, name there). Returns ``(__getattr__, __dir__)``."""

    def getattr_(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target[0], package), target[1])
        setattr(sys.modules[package], name, value)  # the next lookup is an ordinary attribute
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *table})

    return getattr_, dir_

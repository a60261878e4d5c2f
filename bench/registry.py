"""A lazy name -> "module:attr" registry (after lm-evaluation-harness).

Entries are strings, so listing names imports nothing; the object is imported on first `get`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from bench import BenchError


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: str) -> None:
        """Register `name` -> "package.module:attr"; a name may be registered only once."""
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered (as {self._targets[name]})")
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target must be 'module:attr', got {target!r}")
        self._targets[name] = target

    def names(self) -> list[str]:
        return list(self._targets)

    def target(self, name: str) -> str:
        self._check(name)
        return self._targets[name]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def _check(self, name: str) -> None:
        if name not in self._targets:
            close = difflib.get_close_matches(str(name), self._targets, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BenchError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self._targets)}")

    def get(self, name: str) -> Any:
        self._check(name)
        if name not in self._loaded:
            module, attr = self._targets[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

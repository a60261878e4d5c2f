"""A lazy name -> "module:attr" registry (after lm-evaluation-harness).

Entries are strings, so listing names imports nothing; the object is imported on first `get`.
A registry may be given `load`, run once before its first lookup to import the modules that
fill it (the method registry: the built-in `methods` package and $BENCH_PLUGINS), and `base`,
a class every loaded object must subclass.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from bench import BenchError


class Registry:
    def __init__(self, kind: str, load: Callable[[], None] | None = None, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._load = load
        self._targets: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: str) -> None:
        """Register `name` -> "package.module:attr"; a name may be registered only once."""
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered (as {self._targets[name]})")
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target must be 'module:attr', got {target!r}")
        self._targets[name] = target

    def _filled(self) -> dict[str, str]:
        """The entries, after the registry's modules are imported (once; registering during
        the import does not import them again)."""
        load, self._load = self._load, None
        if load is not None:
            load()
        return self._targets

    def names(self) -> list[str]:
        return list(self._filled())

    def target(self, name: str) -> str:
        self._check(name)
        return self._targets[name]

    def __contains__(self, name: object) -> bool:
        return name in self._filled()

    def _check(self, name: str) -> None:
        targets = self._filled()
        if name not in targets:
            close = difflib.get_close_matches(str(name), targets, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BenchError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(targets)}")

    def get(self, name: str) -> Any:
        self._check(name)
        if name not in self._loaded:
            target = self._targets[name]
            module, attr = target.split(":")
            obj = getattr(importlib.import_module(module), attr, None)
            if obj is None:
                raise BenchError(f"{self.kind} {name!r}: {target} does not exist (no {attr!r} in {module})")
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise BenchError(f"{self.kind} {name!r}: {target} is not a {self.base.__name__} subclass")
            self._loaded[name] = obj
        return self._loaded[name]

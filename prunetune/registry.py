"""One registry for every pluggable kind (latency backends, tasks, pruning schemes), as timm
registers models and Torch-Pruning its pruners: objects registered by name, or named in a
config as "package.module:attr" and imported on first use.

Each kind keeps its own protocol, error class and wording; what they share (registration,
lookup, the import of a "package.module:attr", instantiating a class once per process, the
refusal of an object that is not of the kind) lives here once.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from .errors import PrunetuneError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind by name.

    `kind`: what the objects are, as messages say it ("latency backend"); `protocol`: the
    runtime-checkable protocol (or base class) an object must satisfy; `error`: the
    PrunetuneError subclass a bad name or object raises; `field`: the config field that names
    one, as messages start ("latency.backend"); `base`: the class a user subclasses, as the
    refusal of a wrong object names it; `adopt(obj, path)`: what becomes of an object
    imported from "package.module:attr" (default: kept as it is, cached by that path).
    """

    def __init__(self, kind: str, protocol: type, error: type[PrunetuneError], *, field: str,
                 base: str, adopt: Callable[[T, str], T] | None = None) -> None:
        self.kind, self.protocol, self.error = kind, protocol, error
        self.field, self.base, self.adopt = field, base, adopt
        self._by_name: dict[str, T] = {}
        self._imported: dict[str, T] = {}  # "package.module:attr" -> its object, built once

    def register(self, obj: T) -> T:
        """Add `obj` under its `name` (a later one of the same name replaces it)."""
        if not isinstance(obj, self.protocol):
            raise self.error(f"{obj!r} is not a {self.kind}: it lacks part of "
                             f"{self.protocol.__name__} (subclass {self.base})")
        self._by_name[obj.name] = obj  # type: ignore[attr-defined]
        return obj

    def names(self) -> Sequence[str]:
        """The registered names, in registration order."""
        return tuple(self._by_name)

    def values(self) -> tuple[T, ...]:
        """The registered objects, in registration order."""
        return tuple(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._by_name)

    def copy(self) -> Registry[T]:
        """A registry with the same entries, registered into independently (tests)."""
        twin = copy.copy(self)
        twin._by_name, twin._imported = dict(self._by_name), dict(self._imported)
        return twin

    def get(self, name: str | T, hint: str = "") -> T:
        """The object registered as `name`, or the one "package.module:attr" names (a class is
        instantiated, once per process); an object of the kind passes through. `hint` ends
        the message of an unknown name."""
        if not isinstance(name, str):
            return name
        if name in self._by_name:
            return self._by_name[name]
        if name in self._imported:
            return self._imported[name]
        if ":" not in name:
            raise self.error(f"{self.field} must be one of {sorted(self._by_name)} or "
                             f"'package.module:attr' naming a {self.kind}, got {name!r}{hint}")
        module_name, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise self.error(f"{self.field} {name!r} cannot be imported ({err}); check the "
                             "module path (importable from where prunetune runs) and the "
                             "attribute name") from None
        obj = found() if isinstance(found, type) else found
        if not isinstance(obj, self.protocol):
            raise self.error(f"{self.field} {name!r} is not a {self.kind}: subclass "
                             f"{self.base} (or give every part of "
                             f"{self.protocol.__name__})")
        self._imported[name] = self.adopt(obj, name) if self.adopt else obj
        return self._imported[name]

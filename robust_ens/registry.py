"""One small registry mechanism for models, attacks, defenses, corruptions and suites.

Example:
    >>> from robust_ens.registry import Registry
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side: float) -> float:
    ...     return side * side
    >>> shapes.create("square", 3.0)
    9.0
    >>> shapes.list("sq*")
    ['square']
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from robust_ens.errors import RobustEnsError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory map with fnmatch listing and helpful unknown-name errors.

    Args:
        kind: What the registry holds ("model", "attack", ...); used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def add(self, name: str, obj: T, **meta: Any) -> T:
        """Register ``obj`` under ``name``; a duplicate name is an error."""
        if not isinstance(name, str) or not name:
            raise RobustEnsError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise RobustEnsError(
                f"{self.kind} {name!r} is already registered (by {self._entries[name]!r}); "
                "pick another name"
            )
        self._entries[name] = obj
        self._meta[name] = dict(meta)
        return obj

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; the name defaults to the object's ``__name__``."""

        def decorator(obj: T) -> T:
            self.add(name or str(getattr(obj, "__name__", "")), obj, **meta)
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the registered object, or raise listing the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._entries), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: "
                f"{', '.join(self.list()) or '(none)'}"
            ) from None

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration."""
        self.get(name)
        return dict(self._meta[name])

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered factory with the given arguments."""
        factory = self.get(name)
        if not callable(factory):
            raise RobustEnsError(f"{self.kind} {name!r} is not callable")
        return factory(*args, **kwargs)

    def list(self, pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
        """Sorted names matching any of ``pattern`` and none of ``exclude`` (fnmatch)."""
        include = [pattern] if isinstance(pattern, str) else list(pattern)
        skip = [exclude] if isinstance(exclude, str) else list(exclude)
        return sorted(
            n
            for n in self._entries
            if any(fnmatch.fnmatchcase(n, p) for p in include)
            and not any(fnmatch.fnmatchcase(n, p) for p in skip)
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"

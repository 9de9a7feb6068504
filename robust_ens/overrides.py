"""Typed option values for dataclass configs (training recipes, defense hyperparameters).

Values reach configs from recipe files, ``--set key=value`` and Python callers; :func:`coerce`
checks each against the dataclass field's annotation once, so a bad value is a one-line
:class:`~robust_ens.errors.RobustEnsError` naming the option instead of a ``TypeError`` deep in
training. It is also the one place where comma-separated lists (``milestones=100,150``) are parsed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from robust_ens.errors import RobustEnsError


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "text"
    if origin in (tuple, list):
        return "a comma-separated list of " + _describe(typing.get_args(tp)[0]).removeprefix("an ").removeprefix("a ") + "s"
    return getattr(tp, "__name__", str(tp))


class _Bad(Exception):
    pass


def _coerce_one(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce_one(value, arm)
            except _Bad:
                continue
        raise _Bad
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _Bad
    if tp is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Bad from None
        raise _Bad
    if tp is float:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, str):
            from fractions import Fraction

            try:
                value = float(Fraction(value.strip())) if "/" in value else float(value)
            except (ValueError, ZeroDivisionError):
                raise _Bad from None
        if isinstance(value, int | float) and math.isfinite(float(value)):
            return float(value)
        raise _Bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _Bad
    if origin in (tuple, list):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            parts: list[Any] = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, list | tuple):
            parts = list(value)
        elif not isinstance(value, bool) and isinstance(value, int | float):
            parts = [value]
        else:
            raise _Bad
        out = [_coerce_one(p, item) for p in parts]
        return tuple(out) if origin is tuple else out
    return value


def check_type(value: Any, tp: Any, what: str) -> Any:
    """Convert ``value`` to annotation ``tp`` (as :func:`coerce` does) or raise naming ``what``."""
    try:
        return _coerce_one(value, tp)
    except _Bad:
        raise RobustEnsError(f"{what} must be {_describe(tp)}, got {value!r}") from None


def coerce(cls: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Check and convert ``values`` against the fields of dataclass ``cls``.

    Args:
        cls: A dataclass (e.g. :class:`~robust_ens.train.TrainConfig`).
        values: Field name -> value (numbers, booleans, text, lists, or text to parse such as
            ``"100,150"`` for a tuple of integers).
        what: How messages name an option, e.g. ``"training option"``.

    Returns:
        The converted values (only the keys given).

    Raises:
        RobustEnsError: an unknown name (listing the known ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints or key not in names:
            raise RobustEnsError(f"unknown {what} {key!r}; known: {', '.join(names)}")
        try:
            out[key] = _coerce_one(value, hints[key])
        except _Bad:
            raise RobustEnsError(f"{what} {key!r} must be {_describe(hints[key])}, got {value!r}") from None
    return out

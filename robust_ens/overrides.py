"""Typed, ranged option values for configs (training recipes, defense and attack hyperparameters).

Values reach configs from recipe files, ``--set key=value``, command flags and Python callers;
:func:`coerce` checks each against the dataclass field's annotation once, so a bad value is a
one-line :class:`~robust_ens.errors.RobustEnsError` naming the option instead of a ``TypeError`` deep
in training. It is also the one place where comma-separated lists (``milestones=100,150``) are parsed.

Ranges: a numeric option declares its meaningful values where it is defined, as an ``Annotated``
type carrying a :class:`Range` (``eps: PixelBudget = 8 / 255``, ``steps: Count = 10``) on a
dataclass field or a keyword parameter. :func:`coerce`, :func:`check_fields` (a dataclass's
``__post_init__``) and :func:`check_call` (keyword arguments of a function or class) refuse a value
outside it with :class:`OutOfRange`: one line naming the option and the range, e.g.
``defense.eps=7 is out of range: a pixel budget in (0, 1] on images in [0, 1]; 8/255 is 0.0314``.

Example:
    >>> from robust_ens.overrides import PIXEL_BUDGET
    >>> PIXEL_BUDGET.check(8 / 255, "eps") == 8 / 255
    True
    >>> PIXEL_BUDGET.check(7, "defense.eps")
    Traceback (most recent call last):
    ...
    robust_ens.overrides.OutOfRange: defense.eps=7 is out of range: a pixel budget in (0, 1] on images in [0, 1]; 8/255 is 0.0314
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from robust_ens.errors import RobustEnsError

# --------------------------------------------------------------------------- ranges


class OutOfRange(RobustEnsError):
    """A numeric option outside its declared :class:`Range` (a :class:`RobustEnsError`).

    Attributes:
        option: The option as the message names it (``defense.eps``, ``eps``, ``--eps``).
        value: The refused value.
        range: The option's range.
    """

    def __init__(self, option: str, value: Any, rng: Range) -> None:
        self.option, self.value, self.range = option, value, rng
        sep = " " if option.startswith("--") and "=" not in option and " " not in option else "="
        super().__init__(f"{option}{sep}{_show(value)} is out of range: {rng.describe()}")

    def renamed(self, option: str) -> OutOfRange:
        """The same refusal naming the option as the user wrote it (``--eps``, ``--set train.lr``)."""
        return OutOfRange(option, self.value, self.range)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The meaningful values of a numeric option: an interval, a name for the quantity, a hint.

    Bounds are inclusive unless ``low_open`` / ``high_open``; ``None`` is unbounded. A range
    checks numbers only (``None``, booleans and text pass: types are :func:`coerce`'s job); a list
    or tuple is checked item by item.

    Attributes:
        low: Lower bound (``None``: none).
        high: Upper bound (``None``: none).
        low_open: ``low`` itself is excluded.
        high_open: ``high`` itself is excluded.
        what: What the value is (``"a pixel budget"``), for the message.
        note: Appended to the interval (``"on images in [0, 1]; 8/255 is 0.0314"``).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = "a number"
    note: str = ""

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return True
        v = float(value)
        if math.isnan(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))

    def interval(self) -> str:
        """``"in (0, 1]"``, ``"> 0"``, ``">= 1"``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "any number"

    def describe(self) -> str:
        """``"a pixel budget in (0, 1] on images in [0, 1]; 8/255 is 0.0314"``."""
        return f"{self.what} {self.interval()}" + (f" {self.note}" if self.note else "")

    def check(self, value: Any, option: str) -> Any:
        """Return ``value`` when it is in range (each item of a list), else raise :class:`OutOfRange`."""
        items = value if isinstance(value, list | tuple) else (value,)
        if not all(v in self for v in items):
            raise OutOfRange(option, value, self)
        return value


#: Linf budget, and any budget in pixel units, on images in [0, 1].
PIXEL_BUDGET = Range(0, 1, low_open=True, what="a pixel budget", note="on images in [0, 1]; 8/255 is 0.0314")
#: An attack's step in pixel units (Linf).
PIXEL_STEP = Range(0, 1, low_open=True, what="a step size", note="on images in [0, 1]; 2/255 is 0.00784")
#: A step size of any norm.
STEP = Range(0, None, low_open=True, what="a step size")
#: An L2 (or other non-Linf) budget.
L2_BUDGET = Range(0, None, low_open=True, what="an L2 budget")
PROBABILITY = Range(0, 1, what="a probability")
COUNT = Range(1, None, what="a count")
LEARNING_RATE = Range(0, None, low_open=True, what="a learning rate")
#: A momentum or decay factor of an attack (MI-FGSM's mu).
DECAY = Range(0, None, what="a momentum (decay) factor")
#: A loss weight or coefficient.
WEIGHT = Range(0, None, what="a loss weight")
POSITIVE = Range(0, None, low_open=True, what="a positive number")
NON_NEGATIVE = Range(0, None, what="a number")
SEED = Range(0, 2**63 - 1, what="a seed")

PixelBudget = Annotated[float, PIXEL_BUDGET]
PixelStep = Annotated[float, PIXEL_STEP]
Step = Annotated[float, STEP]
Probability = Annotated[float, PROBABILITY]
Count = Annotated[int, COUNT]
LearningRate = Annotated[float, LEARNING_RATE]
Decay = Annotated[float, DECAY]
Weight = Annotated[float, WEIGHT]
Positive = Annotated[float, POSITIVE]
NonNegative = Annotated[float, NON_NEGATIVE]
Seed = Annotated[int, SEED]


def range_of(tp: Any) -> Range | None:
    """The :class:`Range` an annotation carries (inside ``X | None`` and ``tuple[X, ...]`` too), else ``None``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return next((m for m in tp.__metadata__ if isinstance(m, Range)), None)
    if origin in (typing.Union, types.UnionType, tuple, list):
        for arm in typing.get_args(tp):
            rng = range_of(arm)
            if rng is not None:
                return rng
    return None


@functools.cache
def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(obj, include_extras=True)


def ranges_of(obj: Any) -> dict[str, Range]:
    """Option name -> :class:`Range` of a dataclass, a function, or a class (its ``__init__`` and its bases')."""
    return {k: r for k, tp in _option_hints(obj).items() if (r := range_of(tp)) is not None}


def _option_hints(obj: Any) -> dict[str, Any]:
    """Annotations of a dataclass's fields, else of a function's or class's keyword parameters."""
    target: Any = obj  # not narrowed by is_dataclass: the cache needs it hashable
    return _hints(target) if dataclasses.is_dataclass(obj) else _call_hints(obj)


def check_call(obj: Callable[..., Any] | type, kwargs: Mapping[str, Any], prefix: str = "") -> None:
    """Check keyword arguments against the ranges ``obj`` declares (see :func:`ranges_of`).

    A ranged argument of the wrong type (``steps="ten"``) is refused too; others are not looked at.

    Raises:
        OutOfRange: naming ``prefix + name`` and the range; RobustEnsError: a ranged value of the wrong type.
    """
    hints = _option_hints(obj)
    for key, value in kwargs.items():
        rng = range_of(hints.get(key))
        if rng is not None:
            rng.check(check_type(value, hints[key], prefix + key), prefix + key)


def _call_hints(obj: Any) -> dict[str, Any]:
    """Parameter annotations of a function, or of a class's ``__init__`` and its bases' (subclass first)."""
    if not isinstance(obj, type):
        return _hints(obj)
    out: dict[str, Any] = {}
    for klass in reversed(obj.__mro__):
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object:
            out.update({k: tp for k, tp in _hints(init).items() if range_of(tp) is not None})
    return out


def check_fields(obj: Any, what: str) -> None:
    """Convert and check every field of dataclass instance ``obj`` in place (for ``__post_init__``).

    Types as :func:`coerce`, ranges as declared; frozen dataclasses included.
    """
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for key, value in coerce(type(obj), fields, what).items():
        object.__setattr__(obj, key, value)


def check_option(cls: type, option: str, value: Any, label: str | None = None) -> None:
    """Check one value of dataclass ``cls``'s field ``option`` against the field's range, early.

    The value is converted as :func:`coerce` would for the check; a value of the wrong type passes
    here (the dataclass's own :func:`coerce` refuses it with its type), as does an unknown option.

    Args:
        cls: The dataclass.
        option: The field name.
        value: The value.
        label: How the message names the option (default ``option``), e.g. ``"defense.eps"``.

    Raises:
        OutOfRange: a value out of range.
    """
    tp = _hints(cls).get(option)
    rng = range_of(tp)
    if rng is None:
        return
    try:
        converted = _coerce_one(value, tp)
    except _Bad:
        return
    rng.check(converted, label or option)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _describe(typing.get_args(tp)[0])
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
    if origin is Annotated:
        return _coerce_one(value, typing.get_args(tp)[0])
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
        RobustEnsError: an unknown name (listing the known ones) or a value of the wrong type;
            :class:`OutOfRange` for a value outside the field's declared range.
    """
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints or key not in names:
            raise RobustEnsError(f"unknown {what} {key!r}; known: {', '.join(names)}")
        try:
            out[key] = _coerce_one(value, hints[key])
        except _Bad:
            raise RobustEnsError(f"{what} {key!r} must be {_describe(hints[key])}, got {value!r}") from None
        rng = range_of(hints[key])
        if rng is not None:
            rng.check(out[key], key)
    return out

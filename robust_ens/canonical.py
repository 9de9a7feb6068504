"""Canonical JSON and content hashes: the one way the project turns a config into a key.

``canonical_json`` sorts keys, drops whitespace and refuses NaN/inf, so two equal configs give
the same bytes; floats keep Python's shortest round-trip ``repr`` (``8/255`` stays exact).

Example:
    >>> from robust_ens.canonical import canonical_json, sha256_json
    >>> canonical_json({"b": 1, "a": [0.5, None]})
    '{"a":[0.5,null],"b":1}'
    >>> len(sha256_json({"a": 1}))
    64
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from enum import Enum
from typing import Any

from robust_ens.errors import RobustEnsError


def to_jsonable(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON types (dataclasses and enums converted; tuples become lists).

    Raises:
        RobustEnsError: for a value with no canonical JSON form (a tensor, a module, a function),
            naming where it was found.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RobustEnsError(f"{where} is {value}; a config holds finite numbers only")
        return float(value)
    if isinstance(value, Enum):
        return to_jsonable(value.value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    to_config = getattr(value, "config", None)
    if callable(to_config):
        return to_jsonable(to_config(), where)
    raise RobustEnsError(f"{where} ({type(value).__name__}) has no canonical JSON form")


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON of ``value`` (after :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_json(value: Any) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    """sha256 (hex) of raw bytes."""
    return hashlib.sha256(data).hexdigest()

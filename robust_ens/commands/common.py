"""Argument helpers shared by subcommands."""

from __future__ import annotations

import os
from fractions import Fraction

from robust_ens.errors import RobustEnsError


def parse_number(text: str, what: str = "value") -> float:
    """Parse ``"8/255"``, ``"0.03"`` or ``"3e-2"`` into a float."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise RobustEnsError(f"{what} must be a number or a fraction like 8/255, got {text!r}") from err


def parse_params(items: list[str] | None) -> dict[str, object]:
    """Parse ``["k=v", ...]`` into a dict, converting numbers, fractions and booleans."""
    out: dict[str, object] = {}
    for item in items or []:
        if "=" not in item:
            raise RobustEnsError(f"--param expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        elif low in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = parse_number(value, key)
                except RobustEnsError:
                    out[key] = value
    return out


def progress_enabled() -> bool:
    """False under ``--quiet`` (``ROBUST_ENS_QUIET``)."""
    return os.environ.get("ROBUST_ENS_QUIET", "") in ("", "0")

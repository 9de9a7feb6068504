"""Argument helpers shared by subcommands.

Bad input is reported as one line naming the option (see :mod:`robust_ens.cli`). Helpers here:

* argparse types :func:`positive_int`, :func:`nonnegative_int`, :func:`seed_int`: integers
  refused at parse time (``argument --n: must be a positive integer, got '0'``);
* :func:`parse_number`, :func:`parse_params`: ``8/255`` fractions and ``key=value`` lists;
* :func:`for_option`: a context manager that prefixes a library error with the option it came
  from, unless the message already names it;
* :func:`check_output_file`, :func:`check_input_file`: an ``--out`` file that can be written and
  an input file that can be read, checked before any work starts;
* :func:`progress_enabled`: False under ``--quiet`` (:mod:`robust_ens.progress` is the one switch).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from robust_ens.errors import RobustEnsError

INT64_MAX = 2**63 - 1


def _int(text: str, lo: int, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < lo or value > INT64_MAX:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer in ``1 .. 2**63-1``."""
    return _int(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer in ``0 .. 2**63-1``."""
    return _int(text, 0, "an integer >= 0")


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer in ``0 .. 2**63-1``."""
    return _int(text, 0, "a seed (an integer in 0..2**63-1)")


def parse_number(text: str, what: str = "value") -> float:
    """Parse ``"8/255"``, ``"0.03"`` or ``"3e-2"`` into a finite float."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise RobustEnsError(f"{what} must be a number or a fraction like 8/255, got {text!r}") from err
    if not math.isfinite(value):
        raise RobustEnsError(f"{what} must be a finite number, got {text!r}")
    return value


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, object]:
    """Parse ``["k=v", ...]`` into a dict, converting numbers, fractions and booleans.

    Args:
        items: The repeated option's values.
        option: The option's name, for error messages (``--param``, ``--set``, ``--arch-param``).
    """
    out: dict[str, object] = {}
    for item in items or []:
        if "=" not in item:
            raise RobustEnsError(f"{option} expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise RobustEnsError(f"{option} expects key=value with a non-empty key, got {item!r}")
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


@contextlib.contextmanager
def for_option(option: str) -> Iterator[None]:
    """Prefix a :class:`RobustEnsError` raised inside with ``option`` unless it already names it.

    Example:
        >>> from robust_ens.commands.common import for_option
        >>> from robust_ens.errors import RobustEnsError
        >>> try:
        ...     with for_option("--data"):
        ...         raise RobustEnsError("unknown dataset 'x'")
        ... except RobustEnsError as err:
        ...     print(err)
        --data: unknown dataset 'x'
    """
    try:
        yield
    except RobustEnsError as err:
        if option in str(err):
            raise
        raise RobustEnsError(f"{option}: {err}") from err


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written (no file is created).

    Returns:
        The path.

    Raises:
        RobustEnsError: the path is a folder, or its folder cannot be created or written.
    """
    out = Path(path)
    if out.is_dir():
        raise RobustEnsError(f"{option} {out} is a folder; give a file path")
    parent = out.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RobustEnsError(f"{option} {out}: {existing} is not a folder, so the file cannot be created there")
    import tempfile

    try:  # the real test (os.access says yes to root everywhere, /proc included)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".robust-ens-probe-"):
            pass
    except OSError as err:
        raise RobustEnsError(f"{option} {out}: cannot write into {existing} ({err.strerror or err})") from None
    return out


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be created or written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RobustEnsError(f"{option} {out} is a file; give a folder")
    check_output_file(out / "probe", option)
    return out


def check_device(text: str | None, option: str = "--device") -> None:
    """Refuse a device string torch cannot use here (``nope``, ``cuda`` without CUDA, ``cuda:99``)."""
    import torch

    if text is None:
        return
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise RobustEnsError(f"{option} must be a torch device such as cpu or cuda, got {text!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RobustEnsError(f"{option} {text}: CUDA is not available on this machine; use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RobustEnsError(f"{option} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RobustEnsError(f"{option} {text}: MPS is not available on this machine; use {option} cpu")
    elif dev.type not in ("cpu", "mps"):
        raise RobustEnsError(f"{option} must be cpu or cuda, got {text!r}")


def check_input_file(path: str | Path, option: str) -> Path:
    """Refuse a missing, unreadable or non-regular input file, naming the option."""
    p = Path(path)
    if not p.exists():
        raise RobustEnsError(f"{option} {p} does not exist")
    if not p.is_file():
        raise RobustEnsError(f"{option} {p} is not a file")
    if not os.access(p, os.R_OK):
        raise RobustEnsError(f"{option} {p} is not readable (permission denied)")
    return p


def progress_enabled() -> bool:
    """False under ``--quiet`` (see :func:`robust_ens.progress.quiet`)."""
    from robust_ens import progress

    return progress.enabled()

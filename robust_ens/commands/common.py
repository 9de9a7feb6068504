"""Argument helpers shared by subcommands.

Bad input is reported as one line naming the option (see :mod:`robust_ens.cli`). Helpers here:

* argparse types :func:`positive_int`, :func:`nonnegative_int`, :func:`seed_int`: integers
  refused at parse time (``argument --n: must be a positive integer, got '0'``);
* :func:`parse_number`, :func:`parse_params`: ``8/255`` fractions and ``key=value`` lists;
* :func:`for_option`: a context manager that prefixes a library error with the option it came
  from, unless the message already names it;
* :func:`check_output_file`, :func:`check_output_folder`, :func:`check_input_file`: an ``--out``
  file or folder that can be written and an input file that can be read, checked before any work
  starts (the message names the path the user gave, never a probe file);
* :func:`data_hints`, :func:`command_hints`: a missing dataset's message names the running
  command's own options (``--data-root``, ``--root``, ``--download``, ``--split``) and no other;
* :func:`progress_enabled`: False under ``--quiet`` (:mod:`robust_ens.progress` is the one switch).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
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


def _existing_ancestor(path: Path) -> Path:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _probe(folder: Path) -> OSError | None:
    """The error writing a file into ``folder`` gives, or ``None`` (os.access says yes to root everywhere)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".robust-ens-probe-"):
            pass
    except OSError as err:
        return err
    return None


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
    existing = _existing_ancestor(out.parent)
    if not existing.is_dir():
        raise RobustEnsError(f"{option} {out}: {existing} is not a folder, so the file cannot be created there")
    err = _probe(existing)
    if err is not None:
        raise RobustEnsError(f"{option} {out}: cannot write into {existing} ({err.strerror or err})")
    return out


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be created or written (nothing is created).

    The message names the folder as given (and the folder in the way when that is another one),
    e.g. ``--out /proc/run: cannot create this folder inside /proc (No such file or directory)``.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RobustEnsError(f"{option} {out} is a file; give a folder")
    existing = _existing_ancestor(out)
    if not existing.is_dir():
        raise RobustEnsError(f"{option} {out}: {existing} is a file, so the folder cannot be created there")
    err = _probe(existing)
    if err is not None:
        what = "cannot write into this folder" if existing == out else f"cannot create this folder inside {existing}"
        raise RobustEnsError(f"{option} {out}: {what} ({err.strerror or err})")
    return out


def data_hints(*, root: str | None = None, download: str | None = None,
               split: str | None = None) -> AbstractContextManager[None]:
    """Inside this block a missing dataset's message names these options of the running command, and no other.

    Args:
        root: The command's option for a folder searched first (``--data-root``, ``--root``).
        download: The command's option that allows a download (``--download``); without one the
            message names ``robust-ens data cifar10 --download``, which fills the cache every
            command searches.
        split: The command's option that picks the split (``--split``).

    Example:
        >>> from robust_ens import data
        >>> from robust_ens.commands.common import data_hints
        >>> with data_hints(root="--data-root"):
        ...     data.current_hints().root
        'pass --data-root FOLDER (searched first)'
    """
    from robust_ens import data

    return data.hints(data.Hints(
        root=f"pass {root} FOLDER (searched first)" if root else None,
        download=(f"add {download} on a machine with internet access" if download else
                  "run 'robust-ens data cifar10 --download' once on a machine with internet access "
                  f"(it fills {data.cache_dir() / 'data'}, which every command searches)"),
        split=f"pass one with {split}" if split else None,
    ))


def command_hints(args: argparse.Namespace) -> AbstractContextManager[None]:
    """The :func:`data_hints` every command runs inside (``robust_ens.cli`` enters it).

    A command names ``--data-root`` when it has that option (dest ``data_root``) and ``--split``
    when it has a dataset split option (dest ``split``; ``corrupt``'s KITTI split never reaches the
    dataset loader); a command with other options (``data``'s ``--root`` and ``--download``)
    enters :func:`data_hints` itself, which takes precedence inside.
    """
    given = vars(args)
    return data_hints(root="--data-root" if "data_root" in given else None,
                      split="--split" if "split" in given else None)


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

"""Progress reporting and the one quiet switch, shared by the library and every command.

* :func:`quiet` / :func:`set_quiet`: the single reader and writer of ``ROBUST_ENS_QUIET``
  (set by ``robust-ens --quiet``; ``1``/``true``/``yes`` mean quiet, unset/``0``/``false`` not).
* :func:`enabled`: whether a loop should show progress (an explicit ``progress=False`` wins,
  and quiet always wins).
* :func:`bar`: a tqdm-compatible progress object on **stderr**. On a terminal it is a normal
  tqdm bar; when stderr is not a terminal (CI logs, files, pipes) it writes one plain line per
  stage instead of carriage-return updates; when disabled it does nothing.
* :class:`LogHandler`: a logging handler that writes through ``tqdm.write``, so log lines appear
  above an active bar instead of breaking it. The CLI installs it.

Example:
    >>> from robust_ens import progress
    >>> with progress.bar(total=3, desc="stages", enable=False) as b:
    ...     for _ in range(3):
    ...         b.update(1)
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

QUIET_ENV = "ROBUST_ENS_QUIET"
_FALSE = ("", "0", "false", "no", "off")


def quiet() -> bool:
    """True when ``ROBUST_ENS_QUIET`` is set to a true value (``robust-ens --quiet`` sets it)."""
    return os.environ.get(QUIET_ENV, "").strip().lower() not in _FALSE


def set_quiet(flag: bool = True) -> None:
    """Turn quiet mode on or off for this process and the processes it starts."""
    if flag:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def enabled(progress: bool | None = None) -> bool:
    """Whether to show progress: ``progress`` (default True) unless quiet mode is on."""
    return (True if progress is None else bool(progress)) and not quiet()


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class LineProgress:
    """A tqdm-like progress object that writes a plain line per stage (for non-terminals).

    A line is written every ``every`` steps (default: about 20 lines over a known ``total``,
    every step when the total is unknown) and always at the end. Lines look like
    ``corruptions: 3/75 set (4%, 12.3 s) fog s3``.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        every: int | None = None,
        file: IO[str] | None = None,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = ""
        self._file = file
        self._every = max(1, int(every)) if every else (math.ceil(total / 20) if total else 1)
        self._last_line_n = 0
        self._t0 = time.perf_counter()
        self._closed = False

    @property
    def file(self) -> IO[str]:
        return self._file if self._file is not None else sys.stderr

    def _line(self) -> str:
        secs = time.perf_counter() - self._t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f"{100 * self.n // self.total}%, " if self.total else ""
        text = f"{self.desc}: {count} {self.unit} ({pct}{secs:.1f} s)"
        return f"{text} {self.postfix}" if self.postfix else text

    def _emit(self) -> None:
        self._last_line_n = self.n
        self.file.write(self._line() + "\n")
        self.file.flush()

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps; writes a line when a stage boundary is crossed."""
        self.n += n
        if self.n - self._last_line_n >= self._every or (self.total and self.n >= self.total):
            self._emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text appended to the next line (e.g. the current stage)."""
        self.postfix = str(s)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Key=value pairs appended to the next line."""
        items = {**dict(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Change the label."""
        self.desc = desc or ""

    def refresh(self) -> None:
        """No-op (lines are written on update)."""

    def close(self) -> None:
        """Write a final line if the last update did not."""
        if not self._closed and self.n != self._last_line_n:
            self._emit()
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)


def bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enable: bool | None = None,
    leave: bool = False,
    every: int | None = None,
    **tqdm_kwargs: Any,
) -> Any:
    """A progress bar on stderr, or a line per stage when stderr is not a terminal.

    Args:
        iterable: Optional iterable to wrap (like ``tqdm(iterable)``).
        total: Number of steps (default ``len(iterable)`` where defined).
        desc: Label.
        unit: Unit of a step (``"img"``, ``"batch"``, ``"set"``...).
        enable: ``False`` disables it; ``None``/``True`` show it unless quiet mode is on
            (:func:`enabled`).
        leave: Keep the finished bar on a terminal.
        every: Off a terminal, write a line every ``every`` steps; ``1`` = a line per stage
            (default: about 20 lines over ``total``).
        **tqdm_kwargs: Passed to tqdm on a terminal (ignored otherwise).

    Returns:
        An object with tqdm's ``update``, ``set_postfix``, ``set_postfix_str``,
        ``set_description``, ``close``, iteration and context-manager protocol.
    """
    from tqdm import tqdm

    if not enabled(enable):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    if not _stderr_is_terminal():
        return LineProgress(iterable, total=total, desc=desc, unit=unit, every=every)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                dynamic_ncols=True, **tqdm_kwargs)


class LogHandler(logging.Handler):
    """Writes log records to the current ``sys.stderr`` through ``tqdm.write``.

    ``tqdm.write`` clears the active bars, prints the line and redraws them, so log lines never
    end up in the middle of a bar.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

"""Helpers for tests of what a user sees on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_ens import leaderboard as lb


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the command wrote on stderr (asserting there is exactly one and no traceback)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_legacy(entry: lb.EntryV1, root: Path) -> Path:
    """A schema-1 entry file as an old checkout wrote it (the library only reads schema 1 now)."""
    path = lb.entry_path(entry, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lb.dumps(entry), encoding="utf-8")
    return path

"""Progress and quiet: one quiet switch, readable logs off a terminal, log lines above a bar, one-line usage errors."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from robust_ens import progress
from robust_ens.cli import main
from tests.cli_helpers import one_error_line

# --------------------------------------------------------------------------- progress and quiet


def test_quiet_is_read_in_one_place(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(progress.QUIET_ENV, value)
        assert progress.quiet() is expected and progress.enabled() is not expected
    from robust_ens.commands.common import progress_enabled

    monkeypatch.setenv(progress.QUIET_ENV, "1")
    assert progress_enabled() is False and progress.enabled(True) is False
    progress.set_quiet(False)
    assert progress.enabled() and not progress.enabled(False)
    sources = [p for p in Path(__file__).resolve().parents[1].joinpath("robust_ens").rglob("*.py")
               if '"ROBUST_ENS_QUIET"' in p.read_text() or "environ.get(\"ROBUST_ENS_QUIET" in p.read_text()]
    assert [p.name for p in sources] == ["progress.py"]


def test_off_a_terminal_a_bar_prints_a_line_per_stage(monkeypatch, capsys):
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    bar = progress.bar(total=3, desc="corruptions", unit="set", every=1)
    assert isinstance(bar, progress.LineProgress)  # capsys' stderr is not a terminal
    for stage in ("fog s1", "fog s2", "snow s1"):
        bar.set_postfix_str(stage)
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "\r" not in "".join(lines)
    assert lines[0].startswith("corruptions: 1/3 set (33%") and lines[-1].endswith("snow s1")
    monkeypatch.setenv(progress.QUIET_ENV, "1")
    quiet_bar = progress.bar(total=3, desc="x")
    quiet_bar.update(3)
    quiet_bar.close()
    assert capsys.readouterr().err == ""


def test_long_loops_print_about_twenty_lines(monkeypatch):
    buf = io.StringIO()
    bar = progress.LineProgress(range(1000), desc="train", unit="batch", file=buf)
    assert sum(1 for _ in bar) == 1000
    lines = buf.getvalue().splitlines()
    assert 19 <= len(lines) <= 21 and lines[-1].startswith("train: 1000/1000")


def test_log_lines_are_written_above_a_terminal_bar(monkeypatch):
    """On a terminal the bar is tqdm; a log record goes through tqdm.write, which clears and redraws it."""
    import tqdm

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **k: written.append(s)))
    handler = progress.LogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.emit(logging.LogRecord("robust_ens.x", logging.INFO, __file__, 1, "fog s3: accuracy %.2f", (0.5,), None))
    assert written == ["INFO fog s3: accuracy 0.50"]


def test_corruptions_evaluate_shows_a_line_per_set_and_no_log_lines_inside(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    rc = main(["corruptions", "evaluate", "--model", "zoo:digits_small_cnn_s0", "--data", "digits", "--n", "8",
               "--corruptions", "gaussian_noise,fog", "--severities", "1-2", "--no-cache", "--out", str(tmp_path)])
    assert rc == 0
    err = capsys.readouterr().err
    # the engine's bar over the run's cells: clean, then 2 corruptions x 2 severities
    stage_lines = [ln for ln in err.splitlines() if ln.startswith("cifar10-corruptions/custom: ")]
    assert len(stage_lines) == 5 and "\r" not in err
    assert all(ln.startswith(("INFO ", "cifar10-corruptions/custom: ", "WARNING ")) for ln in err.splitlines() if ln.strip())


def test_usage_errors_are_one_line(capsys):
    assert main(["train", "--members", "abc", "--out", "x"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("robust-ens train: error: argument --members") and "--help" in line

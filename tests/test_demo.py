"""``robust-ens demo`` (``make demo``): the digits path end to end, ending on a leaderboard table."""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_ens import cli, demo
from robust_ens import leaderboard as lb


def test_digits_demo_ends_on_the_leaderboard_it_joins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--quiet", "demo", "--digits", "--epochs", "1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("Leaderboard: digits-transfer, smoke tier"):]
    committed = [e.name for e in lb.load_entries() if e.protocol.suite == "digits-transfer" and e.protocol.tier == "smoke"]
    assert committed and all(name in tail for name in committed)
    assert "quickstart-target (this run)" in tail
    assert tail.rstrip().endswith(f"HTML page: {demo.page_path('digits-transfer')}")
    assert demo.page_path("digits-transfer").is_file()
    assert "\r" not in out  # readable in a log


def test_the_demo_picks_cifar10_only_when_its_images_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_ens.data import CIFAR10_CLASSES

    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "data"))
    assert not demo.cifar10_available()
    for c in CIFAR10_CLASSES:
        (tmp_path / "data" / "cifar10-jpeg" / "test" / c).mkdir(parents=True)
    assert demo.cifar10_available()

"""``robust-ens demo`` (``make demo``): the digits path end to end, ending on a leaderboard table."""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_ens import cli, demo
from robust_ens import leaderboard as lb
from robust_ens.errors import RobustEnsError


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


def _committed(suite: str, tier: str) -> lb.Entry:
    return next(e for e in lb.load_entries() if e.protocol.suite == suite and e.protocol.tier == tier)


def test_the_demo_says_whether_its_row_equals_the_committed_entry() -> None:
    e = _committed("digits-transfer", "smoke")
    same = demo.against_committed([e], "digits-transfer", "smoke")
    assert same.startswith(f"{e.name}: equals the committed entry (") and "exactly" in same

    # one image more robust in the first cell: not exact, but within the bound across machines
    cells = list(e.results.cells)
    one = 1.0 / cells[0].n
    moved = e.model_copy(update={"results": e.results.model_copy(update={
        "cells": [cells[0].model_copy(update={"robust_acc": cells[0].robust_acc + one}), *cells[1:]]})})
    near = demo.against_committed([moved], "digits-transfer", "smoke")
    assert "1 of" in near and "within the binomial bound" in near

    # a whole cell off by half the images: beyond the bound, and the line says what to run
    far = moved.model_copy(update={"results": e.results.model_copy(update={
        "cells": [cells[0].model_copy(update={"robust_acc": (cells[0].robust_acc + 0.5) % 1.0}), *cells[1:]]})})
    assert "beyond the binomial bound: run `robust-ens regress --tier smoke`" in demo.against_committed(
        [far], "digits-transfer", "smoke")

    unknown = e.model_copy(update={"name": "not-on-the-board"})
    assert demo.against_committed([unknown], "digits-transfer", "smoke") == (
        "not-on-the-board: no committed digits-transfer smoke entry to compare with")


def test_the_cifar_demo_tier_is_the_small_tier_cut_to_one_eps_and_surrogate() -> None:
    # the demo's sets must be the small tier's sets of the same cells: same examples, batches and attacks
    from robust_ens.bench.protocol import get_suite

    p = get_suite(demo.CIFAR_SUITE)
    d, s = p.tier(demo.CIFAR_TIER), p.tier("small")
    assert (d.n, d.batch_size, d.steps, d.attacks) == (s.n, s.batch_size, s.steps, s.attacks)
    assert set(d.eps) < set(s.eps) and set(d.surrogates) < set(s.surrogates)
    committed = {e.name for e in lb.load_entries() if e.protocol.suite == demo.CIFAR_SUITE and e.protocol.tier == "demo"}
    assert demo.CIFAR_TARGET in committed


def test_a_models_demo_and_small_entries_are_two_files_and_one_plot(tmp_path: Path) -> None:
    from robust_ens.leaderboard import entry_path
    from robust_ens.leaderboard.plots import plot_names
    from robust_ens.leaderboard.store import validate_tree

    small = next(e for e in lb.load_entries() if e.protocol.suite == demo.CIFAR_SUITE and e.name == demo.CIFAR_TARGET
                 and e.protocol.tier == "small")
    mine = _committed(demo.CIFAR_SUITE, "demo")
    assert entry_path(mine, tmp_path).parent.name == "demo" and entry_path(small, tmp_path).parent.name == demo.CIFAR_SUITE
    # the demo entry repeats a slice of the small entry's matrix: one plot, the small tier's
    assert plot_names([small, mine]) == ["robust-vs-eps.png", f"{small.name}-transfer.png"]
    assert plot_names([mine]) == []
    paths = lb.write_entries([small, mine], tmp_path)
    assert len(validate_tree(paths)) == 2  # one name, two tiers: allowed
    twin = tmp_path / "twin.json"
    twin.write_text(paths[1].read_text())
    with pytest.raises(RobustEnsError, match="tier demo .*names are unique within a suite"):
        validate_tree([*paths, twin])

"""What a suite's table and plots say at a glance: intervals, kept, paired bounds, shared ranks, 40 entries."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from robust_ens import leaderboard as lb
from robust_ens.bench.aggregate import mcnemar_exact
from robust_ens.leaderboard import compare
from robust_ens.leaderboard.pages import page_html
from robust_ens.leaderboard.plots import TOP_K, WIDE_SIZE, line_style
from tests.fixtures.many_entries import SUITE, many_entries


def test_mcnemar_p_is_the_engines_exact_test() -> None:
    rng = torch.Generator().manual_seed(0)
    for n in (1, 7, 60, 500):
        a, b = torch.rand(n, generator=rng) < 0.5, torch.rand(n, generator=rng) < 0.4
        want = mcnemar_exact(a, b)
        assert compare.mcnemar_p(want["only_a"], want["only_b"]) == pytest.approx(want["p"], rel=1e-9)


@pytest.mark.parametrize("n", [1, 5, 12, 30])
def test_mcnemar_bounds_are_the_extremes_over_every_pairing_the_counts_allow(n: int) -> None:
    for k_a, k_b in itertools.product(range(n + 1), repeat=2):
        ps = []
        for both in range(min(k_a, k_b) + 1):  # images both get right; the rest of each count is discordant
            only_a, only_b = k_a - both, k_b - both
            if only_a + only_b + both <= n:
                ps.append(compare.mcnemar_p(only_a, only_b))
        lo, hi = compare.mcnemar_bounds(k_a, k_b, n)
        assert lo == pytest.approx(min(ps)) and hi == pytest.approx(max(ps)), (k_a, k_b, n)


def test_p_text_says_separated_open_or_not() -> None:
    assert compare.p_text(1e-6, 0.02).endswith("separated") and "not" not in compare.p_text(1e-6, 0.02)
    assert compare.p_text(1e-6, 0.3).endswith("open")
    assert compare.p_text(0.06, 0.9).endswith("not separated") and compare.p_text(1.0, 1.0) == "1: not separated"


def test_rank_is_one_plus_the_rows_wholly_above() -> None:
    assert compare.rank_groups([(0.30, 0.40), (0.25, 0.35), (0.20, 0.29), None]) == [1, 1, 2, 4]


def test_each_defense_is_paired_with_the_baseline_of_its_training_size() -> None:
    entries = many_entries()
    for e in entries:
        b = compare.paired_baseline(e, entries)
        if e.model.defense in (None, "baseline"):
            assert b is None
        else:
            assert b is not None and b.model.defense == "baseline" and compare.train_n(b) == compare.train_n(e)


def test_the_table_separates_more_robust_from_more_accurate() -> None:
    entries = many_entries()
    headers, rows = lb.table_rows(entries)
    for h in ("clean %", "worst @ 0.03 %", "kept @ 0.03 %", "vs baseline", "Δ clean", "McNemar p @ 0.03"):
        assert h in headers
    col = {h: i for i, h in enumerate(headers)}
    by_name = {e.name: e for e in entries}
    for r in rows:
        e = by_name[r[col["name"]]]
        w = e.worst(0.03)
        assert w is not None
        lo, hi = w.ci95
        assert r[col["worst @ 0.03 %"]] == f"{100 * w.robust_acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        assert r[col["kept @ 0.03 %"]] == f"{100 * w.robust_acc / e.results.clean.acc:.0f}"
    ranks = [int(r[0].split()[0]) for r in rows]
    assert ranks[0] == 1 and ranks == sorted(ranks) and len(set(ranks)) < len(ranks)  # shared ranks at n=500


def test_page_holds_filters_notes_and_no_network() -> None:
    text = page_html(SUITE, many_entries())
    for name in ("entry", "attack", "surrogate", "eps"):
        assert "<select data-col=" in text and f"name='{name}'" in text
    assert "What the columns mean" not in text and "How to read" in text and "McNemar" in text
    assert "http" not in text.split("<script>")[1] and "<link" not in text and "src='http" not in text


def test_line_styles_of_40_entries_are_all_different() -> None:
    styles = {tuple(sorted(line_style(i).items())) for i in range(40)}
    assert len(styles) == 40


def test_robust_vs_eps_of_40_entries_keeps_its_legend_and_title_off_the_data() -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from robust_ens.leaderboard.plots import _robust_vs_eps, _transfer_matrix

    entries = many_entries()
    fig = _robust_vs_eps(plt, SUITE, entries)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    assert len(legend.get_texts()) == TOP_K + 1 and "30 more" in legend.get_texts()[-1].get_text()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # beside the axes
    fig_box = fig.get_window_extent(renderer)
    for artist in (legend, ax.title):
        box = artist.get_window_extent(renderer)
        assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1 + 1 and box.y1 <= fig_box.y1 + 1
    assert tuple(fig.get_size_inches()) == WIDE_SIZE
    plt.close(fig)
    long = random.Random(0).choice(entries).model_copy(update={"name": "a-very-long-defense-name-" * 4})
    fig = _transfer_matrix(plt, long)
    fig.canvas.draw()
    box, fig_box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer()), fig.get_window_extent()
    assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1 + 1  # the title wraps inside its panel
    plt.close(fig)

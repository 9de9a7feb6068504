"""A suite page in a real browser (Playwright driving the system's Chromium): offline, sortable, filterable.

The page is rendered from the 40-entry fixture (:mod:`tests.fixtures.many_entries`) and opened
from ``file://`` with every request that is not a local file refused, so a page that reached for a
CDN would fail here. Nothing is downloaded: Playwright drives the Chromium the system has
(``apt-get install chromium``; ``pip install playwright``, no ``playwright install``). Where either
is missing the tests skip with one line saying which.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.many_entries import ATTACKS, EPS, SUITE, SURROGATES, many_entries, write_board

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
HANG_GUARD_MS = 600_000  # a hang guard only: no test here depends on the machine's speed


def chromium() -> str | None:
    """The system's Chromium (``$ROBUST_ENS_CHROMIUM`` first), or ``None``."""
    env = os.environ.get("ROBUST_ENS_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for b in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(b))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; the browser is the system's chromium)")
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium installed (apt-get install chromium) to open the leaderboard pages")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS, headless=True, timeout=HANG_GUARD_MS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_board(tmp_path_factory.mktemp("board") / "leaderboards")


@pytest.fixture()
def page(browser: Any, board: Path) -> Iterator[Any]:
    """The fixture suite's page, loaded offline; ``page.problems`` collects console errors and outside requests."""
    ctx = browser.new_context(offline=True)
    pg = ctx.new_page()
    pg.set_default_timeout(HANG_GUARD_MS)
    problems: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            problems.append(f"request outside the page: {r.request.url}")
            r.abort()

    pg.route("**/*", route)
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    pg.goto((board / "pages" / f"{SUITE}.html").as_uri())
    pg.problems = problems
    yield pg
    ctx.close()


def _visible(pg: Any, table: str, col: int) -> list[str]:
    return pg.eval_on_selector_all(f"#{table} tbody tr:not([hidden])",
                                   f"rows => rows.map(r => r.cells[{col}].textContent.trim())")


def _col(pg: Any, table: str, header: str) -> int:
    heads = pg.eval_on_selector_all(f"#{table} thead th", "ths => ths.map(t => t.textContent.replace(/\\u00a0/g, ' '))")
    return next(i for i, h in enumerate(heads) if h.strip().startswith(header))


def _num(s: str) -> float:
    return float(s.split()[0])


def test_page_loads_offline_with_every_image_and_no_error(page: Any) -> None:
    assert page.locator("#leaderboard-small tbody tr").count() == 40
    assert page.locator("#cells tbody tr").count() == 40 * len(ATTACKS) * len(SURROGATES) * len(EPS)
    broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == [] and page.locator("img").count() >= 2
    assert page.problems == []


def test_filters_narrow_the_cells_and_count_what_is_shown(page: Any) -> None:
    total = 40 * len(ATTACKS) * len(SURROGATES) * len(EPS)
    page.select_option("select[name=attack]", "cwa")
    assert page.locator("#cells tbody tr:not([hidden])").count() == total // len(ATTACKS)
    page.select_option("select[name=eps]", "0.03")
    page.select_option("select[name=surrogate]", SURROGATES[1])
    shown = 40
    assert page.locator("#cells tbody tr:not([hidden])").count() == shown
    assert page.locator("#cells-count").text_content() == f"{shown} of {total} rows"
    for col, want in (("attack", "cwa"), ("eps", "0.03"), ("surrogate", SURROGATES[1])):
        assert set(_visible(page, "cells", _col(page, "cells", col))) == {want}
    acc = _col(page, "cells", "robust acc")
    page.locator("#cells thead th").nth(acc).click()  # sorting keeps the filter
    values = [_num(v) for v in _visible(page, "cells", acc)]
    assert len(values) == shown and values == sorted(values)
    page.locator("#cells thead th").nth(acc).click()
    assert [_num(v) for v in _visible(page, "cells", acc)] == sorted(values, reverse=True)
    for name in ("attack", "eps", "surrogate"):
        page.select_option(f"select[name={name}]", "")
    assert page.locator("#cells tbody tr:not([hidden])").count() == total
    assert page.problems == []


def test_top_table_sorts_by_a_clicked_header_and_back_by_rank(page: Any) -> None:
    clean = _col(page, "leaderboard-small", "clean")
    page.locator("#leaderboard-small thead th").nth(clean).click()
    values = [_num(v) for v in _visible(page, "leaderboard-small", clean)]
    assert values == sorted(values) and len(values) == 40
    name = _col(page, "leaderboard-small", "name")
    page.locator("#leaderboard-small thead th").nth(name).click()
    names = _visible(page, "leaderboard-small", name)
    assert names == sorted(names)
    page.locator("#leaderboard-small thead th").nth(0).click()  # "#": back to the table's order
    ranks = [int(r.split()[0]) for r in _visible(page, "leaderboard-small", 0)]
    assert ranks == sorted(ranks)
    want = [e.name for e in sorted(many_entries(), key=lambda e: (-min(w.robust_acc for w in e.results.worst_case),
                                                                    *(-w.robust_acc for w in e.results.worst_case),
                                                                    -e.results.clean.acc))]
    assert _visible(page, "leaderboard-small", name) == want
    assert page.problems == []


def test_rows_the_intervals_cannot_order_are_marked(page: Any) -> None:
    ranks = _visible(page, "leaderboard-small", 0)
    tied = page.locator("#leaderboard-small tbody tr.tied").count()
    assert tied == sum("≈" in r for r in ranks) and 0 < tied < 40
    p = _col(page, "leaderboard-small", "McNemar p")
    vs = _col(page, "leaderboard-small", "vs baseline")
    pairs = [(b, t) for b, t in zip(_visible(page, "leaderboard-small", vs), _visible(page, "leaderboard-small", p),
                                    strict=True)]
    assert all((b == "-") == (t == "-") for b, t in pairs)
    assert sum(b != "-" for b, _ in pairs) == 4 * 8  # 8 defenses per training size; baselines and plain ones: none

"""The pages of a leaderboard folder: ``README.md`` (every suite's tables) and one sortable HTML page per suite.

Tables group entries by suite across datasets, so imported RobustBench references (``cifar10``)
sit beside ours (``cifar10-jpeg``), marked as imported. ``pages/<suite>.html`` holds the suite's
tables (what each column means above them), every entry's cells with filters (entry, attack,
surrogate, target, eps) and the plots. Click a header to sort (or open it with
``#sort=<column>&dir=asc|desc``); plain JavaScript in the page, no CDN, no network, works from
``file://``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from robust_ens.leaderboard.pages_script import CSS, SCRIPT
from robust_ens.leaderboard.plots import plot_names
from robust_ens.leaderboard.schema import AnyEntry, Entry, eps_label
from robust_ens.leaderboard.tables import (
    COLUMN_NOTES,
    GENERATED,
    NOT_ORDERED,
    Table,
    by_tier,
    column_notes_markdown,
    digest,
    rate_text,
    render,
    table,
)

_RATE = re.compile(r"^(\S+) (\[[^\]]*\])$")
_TEXT_COLUMNS = {"name", "data", "model", "defense", "flags", "vs baseline", "entry", "attack", "surrogate",
                 "target"}


def readme_text(by_suite: dict[str, list[AnyEntry]]) -> str:
    """The leaderboard folder's ``README.md``: one section and table per suite and tier."""
    parts = ["# robust-ens leaderboards", "", f"<!-- {GENERATED} -->", GENERATED, ""]
    if not by_suite:
        parts += ["No entries yet: `robust-ens submit --model SPEC --suite NAME --name NAME`.", ""]
    for suite, entries in by_suite.items():
        datasets = sorted({e.protocol.dataset for e in entries})
        versions = sorted({str(e.protocol.suite_version) for e in entries})
        parts += [f"## {suite}", "",
                  f"Dataset{'s' if len(datasets) > 1 else ''} as measured: {', '.join(datasets)}; suite version "
                  f"{', '.join(versions)}; {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}. "
                  f"Sortable page: [pages/{suite}.html](pages/{suite}.html). "
                  f"Entries sha256 `{digest(entries)[:16]}`.", ""]
        notes = False
        for tier, group in by_tier(entries):
            parts += [f"### {suite}, tier {tier}", "", render(group, "markdown"), ""]
            notes = notes or table(group).notes
        if notes:
            parts += [column_notes_markdown(), ""]
        plots = plot_names(entries)
        if plots:
            parts += [" ".join(f"![{p}](plots/{suite}/{p})" for p in plots), ""]
    return "\n".join(parts)


def _cls(name: str) -> str:
    return f" class='{name}'" if name else ""


def _header(h: str) -> str:
    """A header that wraps only between its words, never before ``%`` or after ``@``."""
    return html.escape(h).replace(" %", "&nbsp;%").replace("@ ", "@&nbsp;")


def _td(text: str, key: float | None, header: str) -> str:
    attrs = ("" if key is None else f" data-sort='{key:.10g}'") + _cls("l" if header in _TEXT_COLUMNS else "")
    if header == "name" and text.endswith(" (imported)"):  # the mark on a line of its own: a narrower column
        return f"<td{attrs}>{html.escape(text[:-11])} <span class='own-line'>(imported)</span></td>"
    m = _RATE.match(text)
    body = (f"{html.escape(m.group(1))} <span class='ci'>{html.escape(m.group(2))}</span>" if m
            else html.escape(text))
    return f"<td{attrs}>{body}</td>"


def _table_html(t: Table, table_id: str) -> str:
    out = [f"<table class='sortable' id='{table_id}'><thead><tr>"]
    out += [f"<th aria-sort='none'{_cls('l' if h in _TEXT_COLUMNS else '')}>{_header(h)}</th>" for h in t.headers]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(t.rows):
        cls = t.row_classes[i] if i < len(t.row_classes) else ""
        keys = t.sort_keys[i] if i < len(t.sort_keys) else [None] * len(r)
        out.append(f"<tr{_cls(cls)}>"
                   + "".join(_td(str(c), keys[j], t.headers[j]) for j, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _cells_table(entries: Sequence[AnyEntry]) -> Table | None:
    """Every cell of every entry: one row per (entry, attack, surrogate, target, eps)."""
    t = Table(["entry", "attack", "surrogate", "target", "eps", "robust acc %", "n"])
    for e in entries:
        if isinstance(e, Entry):
            for c in e.results.cells:
                t.rows.append([e.name, c.attack, c.surrogate, c.target or "-", eps_label(c.eps),
                               rate_text(c.robust_acc, (c.ci95[0], c.ci95[1]), c.n), str(c.n)])
                t.sort_keys.append([None, None, None, None, c.eps, c.robust_acc, float(c.n)])
    return t if t.rows else None


def _filters(t: Table, table_id: str) -> str:
    """One ``<select>`` per text column of the cells table with more than one value, and eps."""
    out = [f"<div class='filters' data-table='{table_id}'>"]
    for j, h in enumerate(t.headers):
        if h not in ("entry", "attack", "surrogate", "target", "eps"):
            continue
        eps = {r[j]: k[j] for r, k in zip(t.rows, t.sort_keys, strict=True)} if h == "eps" else {}
        values = sorted({r[j] for r in t.rows}, key=lambda s: (eps.get(s) or 0.0, s))
        if len(values) < 2:
            continue
        opts = "".join(f"<option value='{html.escape(v, quote=True)}'>{html.escape(v)}</option>" for v in values)
        out.append(f"<label>{html.escape(h)} <select data-col='{j}' name='{html.escape(h)}'>"
                   f"<option value=''>all</option>{opts}</select></label>")
    out.append(f"<span class='count' id='{table_id}-count'>{len(t.rows)} of {len(t.rows)} rows</span></div>")
    return "\n".join(out)


def _notes_html() -> str:
    items = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in COLUMN_NOTES)
    return (f"<details class='notes'><summary>How to read: rows that share a <b>#</b> are not ordered by this "
            f"table ({NOT_ORDERED}: the interval overlaps the row above); <b>kept</b> = worst / clean; <b>McNemar "
            f"p</b>: against the baseline trained on as many images, on the same test images (click for every "
            f"column)</summary><ul>{items}</ul></details>")


_SAID = {"data": "dataset", "n": "test images", "target": "target"}


def _compact(t: Table, columns: Sequence[str] = ("data", "n")) -> tuple[Table, str]:
    """The table without those ``columns`` that hold the same in every row, and a line saying what they hold."""
    same = [j for j, h in enumerate(t.headers) if h in columns and t.rows and len({r[j] for r in t.rows}) == 1]
    if not same:
        return t, ""
    keep = [j for j in range(len(t.headers)) if j not in same]
    note = "; ".join(f"{_SAID.get(t.headers[j], t.headers[j])}: {t.rows[0][j]}" for j in same if t.rows[0][j] != "-")
    return (Table([t.headers[j] for j in keep], [[r[j] for j in keep] for r in t.rows],
                  [[k[j] for j in keep] for k in t.sort_keys], t.row_classes, t.notes),
            f"<p>Every row: {html.escape(note)}.</p>" if note else "")


def page_html(suite: str, entries: Sequence[AnyEntry]) -> str:
    """The suite's self-contained page: a table per tier, the cells of every entry (filterable), the plots."""
    parts = [
        "<!doctype html>", f"<!-- {GENERATED} -->", "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(suite)} leaderboard</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(suite)}</h1>", f"<p>{html.escape(GENERATED)} Entries sha256 "
        f"<code>{digest(entries)[:16]}</code>. Click a column header to sort.</p>",
    ]
    for tier, group in by_tier(entries):
        t, note = _compact(table(group))
        parts += [f"<h2>Tier {html.escape(tier)}</h2>"] + ([note] if note else []) + ([_notes_html()] if t.notes else [])
        parts += [f"<div class='scroll'>{_table_html(t, f'leaderboard-{tier}')}</div>"]
    cells = _cells_table(entries)
    if cells is not None:
        cells, note = _compact(cells, ("target", "n"))
        parts += ["<h2>Cells</h2>", "<p>Robust accuracy of every entry per attack, surrogate and eps, with its 95% "
                  "Wilson interval. Pick values to filter; click a header to sort.</p>", note,
                  _filters(cells, "cells"), _table_html(cells, "cells")]
    plots = plot_names(entries)
    if plots:
        parts += ["<h2>Plots</h2>"] + [f"<img src='../plots/{html.escape(suite)}/{p}' alt='{p}'"
                                       f"{_cls('wide' if p == 'robust-vs-eps.png' else '')}>" for p in plots]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)

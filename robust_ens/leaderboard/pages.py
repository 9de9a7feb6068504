"""The pages of a leaderboard folder: ``README.md`` (every suite's tables) and one sortable HTML page per suite.

Tables group entries by suite across datasets, so imported RobustBench references (``cifar10``)
sit beside ours (``cifar10-jpeg``), marked as imported. ``pages/<suite>.html`` holds the suite's
tables and every entry's cells; click a header to sort (or open it with
``#sort=<column>&dir=asc|desc``); no CDN, no network.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from robust_ens.leaderboard.plots import plot_names
from robust_ens.leaderboard.schema import AnyEntry, Entry, eps_key
from robust_ens.leaderboard.tables import GENERATED, by_tier, digest, render, table_rows


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
        for tier, group in by_tier(entries):
            parts += [f"### {suite}, tier {tier}", "", render(group, "markdown"), ""]
        plots = plot_names(entries)
        if plots:
            parts += [" ".join(f"![{p}](plots/{suite}/{p})" for p in plots), ""]
    return "\n".join(parts)


_JS = """
function sortTable(table, col, dir) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const val = r => { const c = r.cells[col]; const s = c.getAttribute('data-sort') ?? c.textContent.trim();
                     const x = parseFloat(s); return (s !== '' && s !== '-' && !isNaN(x) && /^-?[0-9.]/.test(s)) ? x : s; };
  rows.sort((a, b) => {
    const x = val(a), y = val(b);
    const nx = typeof x === 'number', ny = typeof y === 'number';
    let c = nx && ny ? x - y : nx ? -1 : ny ? 1 : String(x).localeCompare(String(y));
    return dir === 'desc' ? -c : c;
  });
  rows.forEach(r => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.setAttribute('aria-sort', i === col ? (dir === 'desc' ? 'descending' : 'ascending') : 'none'));
}
document.querySelectorAll('table.sortable').forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.addEventListener('click', () => {
    const dir = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
    sortTable(table, i, dir);
  }));
});
(function () {  // #table=ID picks a table (default: the first); #sort=COL&dir=asc|desc sorts it; #click=COL,COL clicks its headers
  const id = /table=([\\w.+-]+)/.exec(location.hash);
  const t = id ? document.getElementById(id[1]) : document.querySelector('table.sortable');
  if (!t) return;
  const m = /sort=(\\d+)(?:&dir=(asc|desc))?/.exec(location.hash);
  if (m) sortTable(t, parseInt(m[1], 10), m[2] || 'asc');
  const c = /click=([\\d,]+)/.exec(location.hash);
  if (c) c[1].split(',').forEach(i => t.tHead.rows[0].cells[parseInt(i, 10)].click());
})();
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:nth-child(2), th:nth-child(2) { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: ' \\25B2'; } th[aria-sort=descending]::after { content: ' \\25BC'; }
tr.imported td { color: #666; font-style: italic; }
img { max-width: 48%; }
"""



def _table_html(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str,
                row_classes: Sequence[str] | None = None) -> str:
    out = [f"<table class='sortable' id='{table_id}'><thead><tr>"]
    out += [f"<th aria-sort='none'>{html.escape(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def page_html(suite: str, entries: Sequence[AnyEntry]) -> str:
    """The suite's self-contained page: a table per tier, the cells of every entry, the plots."""
    cell_rows = []
    for e in entries:
        if isinstance(e, Entry):
            for c in e.results.cells:
                cell_rows.append([e.name, c.attack, c.surrogate, c.target or "-", eps_key(c.eps),
                                  f"{100 * c.robust_acc:.2f}", f"{100 * c.ci95[0]:.1f}", f"{100 * c.ci95[1]:.1f}",
                                  str(c.n)])
    parts = [
        "<!doctype html>", f"<!-- {GENERATED} -->", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(suite)} leaderboard</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(suite)}</h1>", f"<p>{html.escape(GENERATED)} Entries sha256 "
        f"<code>{digest(entries)[:16]}</code>. Click a column header to sort.</p>",
    ]
    for tier, group in by_tier(entries):
        headers, rows = table_rows(group)
        classes = ["imported" if "(imported)" in r[1] else "" for r in rows]
        parts += [f"<h2>Tier {html.escape(tier)}</h2>", _table_html(headers, rows, f"leaderboard-{tier}", classes)]
    if cell_rows:
        parts += ["<h2>Cells</h2>", _table_html(["entry", "attack", "surrogate", "target", "eps", "robust acc %",
                                                 "ci95 low", "ci95 high", "n"], cell_rows, "cells")]
    plots = plot_names(entries)
    if plots:
        parts += ["<h2>Plots</h2>"] + [f"<img src='../plots/{html.escape(suite)}/{p}' alt='{p}'>" for p in plots]
    parts += [f"<script>{_JS}</script>", "</body></html>", ""]
    return "\n".join(parts)

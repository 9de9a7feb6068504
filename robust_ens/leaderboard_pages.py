"""Rendered leaderboards: ``README.md`` (tabulate), one sortable offline HTML page per suite, PNG plots.

Layout under the leaderboard root (:func:`robust_ens.leaderboard.leaderboard_root`)::

    README.md                        every suite's table (markdown), best first
    pages/<suite>.html               the suite's table and every entry's cells; click a header to sort
                                     (or open with #sort=<column>&dir=asc|desc); no CDN, no network
    plots/<suite>/robust-vs-eps.png  worst-case robust accuracy against eps, one line per entry
    plots/<suite>/<name>-transfer.png  a defense entry's transferability matrix (attack@surrogate x eps)

Tables group entries by suite across datasets, so imported RobustBench references (``cifar10``)
sit beside ours (``cifar10-jpeg``), marked as imported. Every generated file says it is generated
and must not be edited, and carries the sha256 of the entries it was made from;
:func:`stale_files` lists the files that no longer match the entries.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robust_ens.canonical import sha256_json
from robust_ens.errors import RobustEnsError

GENERATED = "Generated from the JSON entries by `robust-ens leaderboard render`; do not edit."
PLOT_SIZE = (6.4, 4.0)  # inches
PLOT_DPI = 100


def _entries_by_suite(root: Path) -> dict[str, list[Any]]:
    from robust_ens import leaderboard as lb

    by_suite: dict[str, list[Any]] = {}
    for e in lb.load_entries(root):
        by_suite.setdefault(e.protocol.suite, []).append(e)
    return dict(sorted(by_suite.items()))


def _digest(entries: Sequence[Any]) -> str:
    return sha256_json(sorted((e.model_dump(mode="json") for e in entries), key=lambda d: (d["protocol"]["dataset"], d["name"])))


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


# --------------------------------------------------------------------------- markdown


def readme_text(by_suite: dict[str, list[Any]]) -> str:
    """The top-level ``README.md``: one section and table per suite."""
    from robust_ens import leaderboard as lb

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
                  f"Entries sha256 `{_digest(entries)[:16]}`.", ""]
        for tier, group in _by_tier(entries):
            parts += [f"### {suite}, tier {tier}", "", lb.render(group, "markdown"), ""]
        plots = _plot_names(entries)
        if plots:
            parts += [" ".join(f"![{p}](plots/{suite}/{p})" for p in plots), ""]
    return "\n".join(parts)


TIER_ORDER = ("full", "small", "smoke")


def _by_tier(entries: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """Entries grouped by tier, the largest tier first (numbers of different tiers are not ranked together).

    Imported references (measured elsewhere, on their full test sets) appear in every tier's table,
    marked as imported, so ours are always read beside them.
    """
    from robust_ens import leaderboard as lb

    groups: dict[str, list[Any]] = {}
    refs = [e for e in entries if lb.row_view(e)["imported"]]
    for e in entries:
        if e not in refs:
            groups.setdefault(lb.row_view(e)["tier"], []).append(e)
    if not groups and refs:
        groups["full"] = []
    for g in groups.values():
        g.extend(refs)
    order = {t: i for i, t in enumerate(TIER_ORDER)}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


# --------------------------------------------------------------------------- html

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


def page_html(suite: str, entries: Sequence[Any]) -> str:
    """The suite's self-contained page: main table, the cells of every entry, the plots."""
    from robust_ens import leaderboard as lb

    cell_rows = []
    for e in entries:
        if isinstance(e, lb.Entry):
            for c in e.results.cells:
                cell_rows.append([e.name, c.attack, c.surrogate, c.target or "-", lb.eps_key(c.eps),
                                  f"{100 * c.robust_acc:.2f}", f"{100 * c.ci95[0]:.1f}", f"{100 * c.ci95[1]:.1f}",
                                  str(c.n)])
    parts = [
        "<!doctype html>", f"<!-- {GENERATED} -->", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(suite)} leaderboard</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(suite)}</h1>", f"<p>{html.escape(GENERATED)} Entries sha256 "
        f"<code>{_digest(entries)[:16]}</code>. Click a column header to sort.</p>",
    ]
    for tier, group in _by_tier(entries):
        headers, rows = lb.table_rows(group)
        classes = ["imported" if "(imported)" in r[1] else "" for r in rows]
        parts += [f"<h2>Tier {html.escape(tier)}</h2>", _table_html(headers, rows, f"leaderboard-{tier}", classes)]
    if cell_rows:
        parts += ["<h2>Cells</h2>", _table_html(["entry", "attack", "surrogate", "target", "eps", "robust acc %",
                                                 "ci95 low", "ci95 high", "n"], cell_rows, "cells")]
    plots = _plot_names(entries)
    if plots:
        parts += ["<h2>Plots</h2>"] + [f"<img src='../plots/{html.escape(suite)}/{p}' alt='{p}'>" for p in plots]
    parts += [f"<script>{_JS}</script>", "</body></html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- plots


def _plot_names(entries: Sequence[Any]) -> list[str]:
    from robust_ens import leaderboard as lb

    v2 = [e for e in entries if isinstance(e, lb.Entry)]
    names = ["robust-vs-eps.png"] if any(len(e.results.worst_case) > 0 for e in v2) else []
    names += [f"{_slug(e.name)}-transfer.png" for e in v2 if e.kind == "defense" and e.results.cells]
    return names


def _png(fig: Any, digest: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI,
                metadata={"Software": None, "Description": f"{GENERATED} entries sha256 {digest}"})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(suite: str, entries: Sequence[Any]) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` of a suite's plots (matplotlib, Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RobustEnsError("leaderboard render needs matplotlib for its plots: pip install matplotlib") from None
    from robust_ens import leaderboard as lb

    digest = _digest(entries)
    out: dict[str, bytes] = {}
    v2 = [e for e in entries if isinstance(e, lb.Entry)]
    with_eps = [e for e in v2 if e.results.worst_case]
    if with_eps:
        fig, ax = plt.subplots(figsize=PLOT_SIZE)
        for e in sorted(with_eps, key=lambda e: e.name):
            ws = sorted(e.results.worst_case, key=lambda w: w.eps)
            xs = [0.0] + [w.eps for w in ws]
            ys = [100 * e.results.clean.acc] + [100 * w.robust_acc for w in ws]
            lo = [100 * e.results.clean.ci95[0]] + [100 * w.ci95[0] for w in ws]
            hi = [100 * e.results.clean.ci95[1]] + [100 * w.ci95[1] for w in ws]
            line = ax.plot(xs, ys, marker="o", linestyle="--" if e.external else "-",
                           label=e.name + (" (imported)" if e.external else ""))[0]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_xlabel(f"eps ({with_eps[0].protocol.threat_model})")
        ax.set_ylabel("worst-case robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{suite}: robust accuracy against eps (95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        out["robust-vs-eps.png"] = _png(fig, digest)
    for e in v2:
        if e.kind != "defense" or not e.results.cells:
            continue
        rows = sorted({f"{c.attack}@{c.surrogate}" for c in e.results.cells})
        cols = sorted({c.eps for c in e.results.cells})
        grid = [[float("nan")] * len(cols) for _ in rows]
        for c in e.results.cells:
            grid[rows.index(f"{c.attack}@{c.surrogate}")][cols.index(c.eps)] = 100 * c.robust_acc
        fig, ax = plt.subplots(figsize=PLOT_SIZE)
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [lb.eps_key(c) for c in cols])
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = grid[i][j]
                if v == v:
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="w" if v < 60 else "k")
        ax.set_xlabel("eps")
        ax.set_title(f"{e.name}: robust accuracy (%) per attack@surrogate")
        fig.colorbar(im, ax=ax, label="robust accuracy (%)")
        fig.tight_layout()
        out[f"{_slug(e.name)}-transfer.png"] = _png(fig, _digest([e]))  # its own entry only: no churn
    return out


# --------------------------------------------------------------------------- the tree


def expected_files(root: Path, *, with_plots: bool = True) -> dict[Path, bytes]:
    """Every generated file under ``root`` with the bytes it should hold (schema files included)."""
    from robust_ens import leaderboard as lb

    by_suite = _entries_by_suite(root)
    files: dict[Path, bytes] = {root / "README.md": readme_text(by_suite).encode()}
    for suite, entries in by_suite.items():
        files[root / "pages" / f"{suite}.html"] = page_html(suite, entries).encode()
        if with_plots:
            for name, blob in plots(suite, entries).items():
                files[root / "plots" / suite / name] = blob
    for path, schema in lb.schema_files(root).items():
        files[path] = (json.dumps(schema, indent=2) + "\n").encode()
    readme = root.parent / "README.md"  # the repository README's generated Results block
    if readme.is_file():
        from robust_ens.leaderboard_results import BEGIN, END, replace_block, results_markdown

        text = readme.read_text()
        if BEGIN in text and END in text:
            files[readme] = replace_block(text, results_markdown([e for es in by_suite.values() for e in es])).encode()
    return files


def _png_digest(blob: bytes) -> str | None:
    from PIL import Image

    try:
        desc = Image.open(io.BytesIO(blob)).info.get("Description", "")
    except Exception:  # noqa: BLE001 - an unreadable PNG is stale
        return None
    return desc.rsplit(" ", 1)[-1] if "sha256" in desc else None


def stale_files(root: str | Path) -> list[str]:
    """Generated files that are missing, edited or out of date, with why (empty: all current).

    Markdown, HTML and schema files are compared byte for byte; PNGs by the entries' sha256 they
    carry (matplotlib's bytes may differ between its versions) and by the set of plot files.
    """
    root = Path(root)
    want = expected_files(root)
    problems = []
    for path, blob in want.items():
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.suffix == ".png":
            if _png_digest(path.read_bytes()) != _png_digest(blob):
                problems.append(f"{path}: made from other entries")
        elif path.read_bytes() != blob:
            problems.append(f"{path}: differs from what the entries render to")
    for sub in ("pages", "plots"):
        for path in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else []:
            if path.is_file() and path not in want:
                problems.append(f"{path}: no entry renders it any more")
    return problems


def render_tree(root: Path, *, plots: bool = True) -> list[Path]:
    """Write every generated file under ``root`` that changed; remove orphaned pages and plots."""
    if not root.is_dir():
        raise RobustEnsError(f"--root {root} is not a folder of leaderboard entries")
    want = expected_files(root, with_plots=plots)
    written = []
    for path, blob in want.items():
        if path.suffix == ".png" and path.is_file() and _png_digest(path.read_bytes()) == _png_digest(blob):
            continue
        if path.is_file() and path.read_bytes() == blob:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
        written.append(path)
    if plots:
        for sub in ("pages", "plots"):
            for path in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else []:
                if path.is_file() and path not in want:
                    path.unlink()
    return written

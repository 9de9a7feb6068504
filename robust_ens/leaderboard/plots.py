"""PNG plots of a suite's entries (matplotlib, Agg backend), each carrying the sha256 of its entries.

``plots/<suite>/robust-vs-eps.png``: worst-case robust accuracy against eps; the :data:`TOP_K` best
entries (the table's order) in distinct colours, markers and line styles with their 95% bands, the
rest as thin grey lines, the legend beside the axes, so 40 entries stay readable;
``plots/<suite>/<name>-transfer.png``: a defense entry's transferability matrix (attack@surrogate x eps).
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Sequence
from typing import Any

from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.schema import AnyEntry, Entry, eps_key, eps_label
from robust_ens.leaderboard.store import subfolder_tier
from robust_ens.leaderboard.tables import GENERATED, digest, ranked

PLOT_SIZE = (6.4, 4.0)  # inches: every plot but robust-vs-eps
WIDE_SIZE = (9.6, 4.8)  # inches: robust-vs-eps, its legend beside the axes
PLOT_DPI = 100
PLOT_STYLE = 2  # bump when the drawing changes: a PNG carries it, so render redraws every plot
TOP_K = 10  # lines drawn in colour; the rest grey
BANDS = 3  # lines drawn with their 95% band
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#000000")
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "*")
_LINES = ("-", "--", "-.", ":")


def slug(name: str) -> str:
    """An entry name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def plot_size(name: str) -> tuple[float, float]:
    """The size in inches of the plot file ``name``."""
    return WIDE_SIZE if name == "robust-vs-eps.png" else PLOT_SIZE


def _on_eps_plot(v2: Sequence[Entry]) -> list[Entry]:
    """The entries the robust-vs-eps plot draws: those with worst cases, not of a subfolder tier (one eps)."""
    return [e for e in v2 if e.results.worst_case and not subfolder_tier(e)]


def _with_matrix(v2: Sequence[Entry]) -> list[Entry]:
    """The entries that get a transferability matrix: defenses with cells, not of a subfolder tier (its
    entry repeats a slice of the same model's main-tier matrix; the page's cells table holds it)."""
    return [e for e in v2 if e.kind == "defense" and e.results.cells and not subfolder_tier(e)]


def plot_names(entries: Sequence[AnyEntry]) -> list[str]:
    """The file names of a suite's plots (what :func:`plots` makes), without drawing them."""
    v2 = [e for e in entries if isinstance(e, Entry)]
    names = ["robust-vs-eps.png"] if _on_eps_plot(v2) else []
    names += [f"{slug(e.name)}-transfer.png" for e in _with_matrix(v2)]
    return names


def png_digest(blob: bytes) -> str | None:
    """``STYLE:SHA``: the plot style and the entries' sha256 a PNG made here carries.

    ``None`` for another PNG, an unreadable one, or one drawn before plot styles were recorded.
    """
    from PIL import Image

    try:
        desc = Image.open(io.BytesIO(blob)).info.get("Description", "")
    except Exception:  # noqa: BLE001 - an unreadable PNG is stale
        return None
    m = re.search(r"plot style (\S+) entries sha256 (\S+)$", str(desc))
    return f"{m.group(1)}:{m.group(2)}" if m else None


def _png(fig: Any, sha: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI,
                metadata={"Software": None, "Description": f"{GENERATED} plot style {PLOT_STYLE} entries sha256 {sha}"})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def line_style(i: int) -> dict[str, Any]:
    """The colour, marker and line style of the ``i``-th highlighted line: no two of the first 40 alike."""
    return {"color": _COLOURS[i % len(_COLOURS)], "marker": _MARKERS[(i + i // len(_COLOURS)) % len(_MARKERS)],
            "linestyle": _LINES[(i // len(_COLOURS)) % len(_LINES)]}


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _robust_vs_eps(plt: Any, suite: str, with_eps: Sequence[Entry]) -> Any:
    fig, ax = plt.subplots(figsize=WIDE_SIZE)
    order = [e for e in ranked(with_eps) if isinstance(e, Entry)]
    shown = len(order) if len(order) <= TOP_K + 2 else TOP_K
    eps_all = sorted({w.eps for e in order for w in e.results.worst_case})
    top = 0.0
    for rank, e in reversed(list(enumerate(order, 1))):  # the best drawn last, on top
        ws = sorted(e.results.worst_case, key=lambda w: w.eps)
        xs = [0.0] + [w.eps for w in ws]
        ys = [100 * e.results.clean.acc] + [100 * w.robust_acc for w in ws]
        if rank > shown:
            ax.plot(xs, ys, color="#b0b0b0", linewidth=0.8, alpha=0.8, zorder=1)
            top = max(top, *ys)
            continue
        style = line_style(rank - 1)
        if e.external:
            style["linestyle"] = (0, (4, 2, 1, 2))
        label = f"{rank}. {_short(e.name)}{' (imported)' if e.external else ''}  {ys[-1]:.1f}"
        ax.plot(xs, ys, markersize=5, linewidth=1.6, label=label, zorder=3, **style)
        if rank <= BANDS:
            lo = [100 * e.results.clean.ci95[0]] + [100 * w.ci95[0] for w in ws]
            hi = [100 * e.results.clean.ci95[1]] + [100 * w.ci95[1] for w in ws]
            ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.10, linewidth=0, zorder=2)
        top = max(top, *ys)
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = handles[::-1], labels[::-1]  # best first
    if shown < len(order):
        handles.append(plt.Line2D([], [], color="#b0b0b0", linewidth=0.8))
        labels.append(f"{len(order) - shown} more (grey; see the table)")
    ax.set_xticks([0.0, *eps_all], ["clean", *(eps_label(x) for x in eps_all)], fontsize=8)
    ax.set_xlabel(f"eps ({order[0].protocol.threat_model})", fontsize=9)
    ax.set_ylabel("worst-case robust accuracy (%)", fontsize=9)
    ax.set_ylim(0, min(100.0, 10 * (top // 10) + 10))
    sub = (f"the table's first {shown} of {len(order)} in colour, the rest grey" if shown < len(order)
           else f"{len(order)} entries")
    ax.set_title(textwrap.fill(f"{suite}: worst-case robust accuracy against eps", 70)
                 + f"\n{sub}; bands: 95% CI of the first {min(BANDS, shown)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="table row. entry, worst @ largest eps %", title_fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _transfer_matrix(plt: Any, e: Entry) -> Any:
    rows = sorted({f"{c.attack}@{c.surrogate}" for c in e.results.cells})
    cols = sorted({c.eps for c in e.results.cells})
    grid = [[float("nan")] * len(cols) for _ in rows]
    for c in e.results.cells:
        grid[rows.index(f"{c.attack}@{c.surrogate}")][cols.index(c.eps)] = 100 * c.robust_acc
    fig, ax = plt.subplots(figsize=PLOT_SIZE)
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    small = max(5.0, min(8.0, 160 / max(len(rows), 1)))
    ax.set_xticks(range(len(cols)), [eps_label(c) if eps_label(c) != eps_key(c) else eps_key(c) for c in cols],
                  fontsize=8)
    ax.set_yticks(range(len(rows)), [_short(r, 30) for r in rows], fontsize=small)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i][j]
            if v == v:
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=small, color="w" if v < 60 else "k")
    ax.set_xlabel("eps", fontsize=9)
    ax.set_title(textwrap.fill(e.name, 50) + "\nrobust accuracy (%) per attack@surrogate", fontsize=9)
    fig.colorbar(im, ax=ax, label="robust accuracy (%)")
    fig.tight_layout()
    return fig


def plots(suite: str, entries: Sequence[AnyEntry]) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` of a suite's plots (matplotlib, Agg backend).

    Raises:
        RobustEnsError: when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RobustEnsError("leaderboard render needs matplotlib for its plots: pip install matplotlib") from None
    out: dict[str, bytes] = {}
    v2 = [e for e in entries if isinstance(e, Entry)]
    with_eps = _on_eps_plot(v2)
    if with_eps:
        out["robust-vs-eps.png"] = _png(_robust_vs_eps(plt, suite, with_eps), digest(entries))
    for e in _with_matrix(v2):
        out[f"{slug(e.name)}-transfer.png"] = _png(_transfer_matrix(plt, e), digest([e]))  # its own entry: no churn
    return out

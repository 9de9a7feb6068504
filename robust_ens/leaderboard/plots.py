"""PNG plots of a suite's entries (matplotlib, Agg backend), each carrying the sha256 of its entries.

``plots/<suite>/robust-vs-eps.png``: worst-case robust accuracy against eps, one line per entry;
``plots/<suite>/<name>-transfer.png``: a defense entry's transferability matrix (attack@surrogate x eps).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.schema import AnyEntry, Entry, eps_key
from robust_ens.leaderboard.tables import GENERATED, digest

PLOT_SIZE = (6.4, 4.0)  # inches
PLOT_DPI = 100


def slug(name: str) -> str:
    """An entry name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def plot_names(entries: Sequence[AnyEntry]) -> list[str]:
    """The file names of a suite's plots (what :func:`plots` makes), without drawing them."""
    v2 = [e for e in entries if isinstance(e, Entry)]
    names = ["robust-vs-eps.png"] if any(len(e.results.worst_case) > 0 for e in v2) else []
    names += [f"{slug(e.name)}-transfer.png" for e in v2 if e.kind == "defense" and e.results.cells]
    return names


def png_digest(blob: bytes) -> str | None:
    """The entries' sha256 a PNG made here carries (``None`` for another or an unreadable PNG)."""
    from PIL import Image

    try:
        desc = Image.open(io.BytesIO(blob)).info.get("Description", "")
    except Exception:  # noqa: BLE001 - an unreadable PNG is stale
        return None
    return desc.rsplit(" ", 1)[-1] if "sha256" in desc else None


def _png(fig: Any, sha: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI,
                metadata={"Software": None, "Description": f"{GENERATED} entries sha256 {sha}"})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _robust_vs_eps(plt: Any, suite: str, with_eps: Sequence[Entry]) -> Any:
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
    return fig


def _transfer_matrix(plt: Any, e: Entry) -> Any:
    rows = sorted({f"{c.attack}@{c.surrogate}" for c in e.results.cells})
    cols = sorted({c.eps for c in e.results.cells})
    grid = [[float("nan")] * len(cols) for _ in rows]
    for c in e.results.cells:
        grid[rows.index(f"{c.attack}@{c.surrogate}")][cols.index(c.eps)] = 100 * c.robust_acc
    fig, ax = plt.subplots(figsize=PLOT_SIZE)
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [eps_key(c) for c in cols])
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
    with_eps = [e for e in v2 if e.results.worst_case]
    if with_eps:
        out["robust-vs-eps.png"] = _png(_robust_vs_eps(plt, suite, with_eps), digest(entries))
    for e in v2:
        if e.kind == "defense" and e.results.cells:
            out[f"{slug(e.name)}-transfer.png"] = _png(_transfer_matrix(plt, e), digest([e]))  # its own entry: no churn
    return out

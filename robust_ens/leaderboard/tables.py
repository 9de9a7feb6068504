"""Tables of entries: what a table shows of an entry, the ranking, and markdown or HTML text (tabulate).

A defense table reads at a glance: clean and worst-case robust accuracy each with its 95% Wilson
interval, *kept* (the share of correctly classified images that survive), the paired comparison
with the baseline trained on the same images, and a rank that rows share when the table cannot
order them (:mod:`robust_ens.leaderboard.compare`). :data:`COLUMN_NOTES` says what each column means.

Example:
    >>> from robust_ens.leaderboard import load_entries, render          # doctest: +SKIP
    >>> print(render(load_entries("leaderboards")))                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robust_ens.canonical import sha256_json
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.compare import mcnemar_bounds, overlaps, p_text, paired_baseline, rank_groups
from robust_ens.leaderboard.schema import AnyEntry, EntryV1, eps_label

GENERATED = "Generated from the JSON entries by `robust-ens leaderboard render`; do not edit."
TIER_ORDER = ("full", "small", "demo", "smoke")
NOT_ORDERED = "≈"
COLUMN_NOTES = (
    ("#", "1 + the rows whose 95% interval of the ranking number (the worst case over eps) lies wholly above "
          f"this row's; rows sharing a number are not ordered by this table, and {NOT_ORDERED} marks a row whose "
          "interval overlaps the row above it"),
    ("clean %, worst @ eps %", "accuracy on the clean images, and the worst case (an image counts only if it "
                               "survives every attack x surrogate cell of that eps), each with its 95% Wilson "
                               "interval [low, high] from k of n images"),
    ("kept", "worst case at the largest eps as a share of clean accuracy: the correctly classified images "
             "the attacks fail to flip (more robust, not merely more accurate)"),
    ("vs baseline, Δ clean, Δ worst", "the baseline trained on as many images (same architecture first), "
                                      "measured on the same test images, and the gaps to it in points"),
    ("McNemar p", "exact McNemar test of the worst case against that baseline on the same images; the entries "
                  "hold counts, not which images, so this is the range of p over every pairing the counts allow: "
                  "'separated' when even the largest p is below 0.05, 'open' when only per-image results "
                  "(the run folder) can tell"),
)


@dataclass
class Table:
    """A table's headers, text rows, numeric sort keys (``None``: sort by text) and row classes."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    sort_keys: list[list[float | None]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    notes: bool = False


def headline_metrics(entries: Sequence[AnyEntry]) -> list[str]:
    """Summary metrics shown as table columns: top-level ``metrics`` keys (no ``/`` in the name)."""
    keys: set[str] = set()
    for e in entries:
        keys |= {k for k in e.results.metrics if "/" not in k}
    return sorted(keys)


def row_view(e: AnyEntry) -> dict[str, Any]:
    """What a table shows of an entry, for both schema versions.

    Returns:
        ``{"name", "kind", "dataset", "architecture", "members", "defense", "clean", "clean_ci", "clean_k",
        "worst": {eps: acc}, "worst_ci": {eps: (lo, hi)}, "worst_k": {eps: k}, "metrics", "flags",
        "imported", "paper_url", "tier", "n"}`` (``clean_ci`` ``None`` and the ``k`` unknown for schema 1).
    """
    if isinstance(e, EntryV1):
        return {"name": e.name, "kind": "defense", "dataset": e.protocol.dataset, "architecture": e.model.architecture,
                "members": e.model.n_members, "defense": e.model.defense or "-", "clean": e.results.clean_accuracy,
                "clean_ci": None, "clean_k": None,
                "worst": {float(k): v for k, v in e.results.worst_case.items()}, "worst_ci": {}, "worst_k": {},
                "metrics": dict(e.results.metrics), "flags": list(e.protocol.settings.get("flags", [])),
                "imported": False, "paper_url": None, "tier": str(e.protocol.settings.get("tier", "-")),
                "n": e.protocol.n_examples}
    r = e.results
    return {"name": e.name, "kind": e.kind, "dataset": e.protocol.dataset, "architecture": e.model.architecture,
            "members": e.model.n_members, "defense": e.model.defense or "-", "clean": r.clean.acc,
            "clean_ci": (r.clean.ci95[0], r.clean.ci95[1]), "clean_k": r.clean.k,
            "worst": {w.eps: w.robust_acc for w in r.worst_case},
            "worst_ci": {w.eps: (w.ci95[0], w.ci95[1]) for w in r.worst_case},
            "worst_k": {w.eps: w.k for w in r.worst_case},
            "metrics": dict(r.metrics), "flags": [f.split(":")[0] for f in r.flags],
            "imported": e.external is not None, "paper_url": e.paper.url if e.paper else None,
            "tier": e.protocol.tier, "n": e.protocol.n_examples}


def _fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if ("acc" in name.lower() or "success" in name.lower()) and 0 <= value <= 1 \
        else f"{value:.2f}"


def rate_text(acc: float, ci: tuple[float, float] | None, n: int | None = None) -> str:
    """``28.4 [24.6, 32.5]``: a percentage and its 95% interval (the value alone, two decimals, without one).

    One decimal when ``n`` is at most 1,000 (one image is 0.1 points or more), else two.
    """
    if ci is None:
        return f"{100 * acc:.2f}"
    d = 1 if n is not None and n <= 1000 else 2
    return f"{100 * acc:.{d}f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def model_text(v: dict[str, Any]) -> str:
    """``3 x resnet20``: an ensemble's members and architecture (the architecture alone for one model)."""
    return v["architecture"] if v["members"] == 1 else f"{v['members']} x {v['architecture']}"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _ranked(entries: Sequence[AnyEntry]) -> tuple[list[tuple[AnyEntry, dict[str, Any]]], list[float], bool]:
    """The entries with their views, best first; the eps of the table; whether it ranks attacks."""
    views = [(e, row_view(e)) for e in entries]
    eps_keys = sorted({k for _, v in views for k in v["worst"]})
    metric_keys = headline_metrics(entries)
    attacks = bool(views) and all(v["kind"] == "attack" for _, v in views)

    def key(ev: tuple[AnyEntry, dict[str, Any]]) -> tuple[float, ...]:
        v = ev[1]
        if attacks:
            succ = [x for k, x in v["metrics"].items() if k.startswith("mean_success@")]
            return (-(sum(succ) / len(succ)) if succ else 0.0, v["clean"])
        worst = [v["worst"][k] for k in eps_keys if k in v["worst"]]
        if worst:
            return (-min(worst), *(-v["worst"].get(k, 0.0) for k in eps_keys), -v["clean"])
        first = v["metrics"].get(metric_keys[0], 0.0) if metric_keys else 0.0
        return (-first, -v["clean"])

    return sorted(views, key=key), eps_keys, attacks


def ranked(entries: Sequence[AnyEntry]) -> list[AnyEntry]:
    """The entries in the order of their table, best first (see :func:`table_rows`)."""
    return [e for e, _ in _ranked(entries)[0]]


def _ranking_interval(v: dict[str, Any]) -> tuple[float, float] | None:
    """The interval of the number a row ranks by: its worst case at the eps where it is lowest."""
    if not v["worst"]:
        return None
    eps = min(v["worst"], key=lambda k: (v["worst"][k], -k))
    return v["worst_ci"].get(eps)


def _paired_cells(v: dict[str, Any], b: AnyEntry | None, top: float) -> tuple[list[str], list[float | None]]:
    """``vs baseline``, ``Δ clean``, ``Δ worst @ top`` and ``McNemar p`` of a row against ``b``, with sort keys."""
    if b is None:
        return ["-", "-", "-", "-"], [None, None, None, None]
    bv = row_view(b)
    d_clean = v["clean"] - bv["clean"]
    if top not in v["worst"] or top not in bv["worst"]:
        return [b.name, _points(d_clean), "-", "-"], [None, d_clean, None, None]
    d_worst = v["worst"][top] - bv["worst"][top]
    ka, kb = v["worst_k"].get(top), bv["worst_k"].get(top)
    if ka is None or kb is None:
        return [b.name, _points(d_clean), _points(d_worst), "-"], [None, d_clean, d_worst, None]
    lo, hi = mcnemar_bounds(ka, kb, v["n"])
    return [b.name, _points(d_clean), _points(d_worst), p_text(lo, hi)], [None, d_clean, d_worst, hi]


def table(entries: Sequence[AnyEntry]) -> Table:
    """A suite's table, best first (see :func:`table_rows`), with sort keys and row classes for a page."""
    ranked, eps_keys, attacks = _ranked(entries)
    metric_keys = headline_metrics(entries)
    defenses = not attacks and bool(eps_keys)
    top = eps_keys[-1] if eps_keys else 0.0
    intervals = [_ranking_interval(v) if defenses else None for _, v in ranked]
    ranks = rank_groups(intervals)
    pairs = [paired_baseline(e, entries) if defenses else None for e, _ in ranked]
    headers = (["#", "name", "data", "model", "defense", "n", "clean %"]
               + [f"worst @ {eps_label(k)} %" for k in eps_keys])
    if defenses:
        headers += [f"kept @ {eps_label(top)} %"]
    if any(pairs):
        headers += ["vs baseline", "Δ clean", f"Δ worst @ {eps_label(top)}", f"McNemar p @ {eps_label(top)}"]
    headers += metric_keys + ["flags"]
    out = Table(headers, notes=defenses)
    for i, (_, v) in enumerate(ranked):
        tied = i > 0 and intervals[i] is not None and intervals[i - 1] is not None \
            and overlaps(intervals[i], intervals[i - 1])  # type: ignore[arg-type]
        row = [f"{ranks[i]} {NOT_ORDERED}" if tied else str(ranks[i]),
               v["name"] + (" (imported)" if v["imported"] else ""), v["dataset"], model_text(v), v["defense"],
               str(v["n"]), rate_text(v["clean"], v["clean_ci"], v["n"])]
        keys: list[float | None] = [float(i), None, None, None, None, float(v["n"]), v["clean"]]
        for k in eps_keys:
            row.append(rate_text(v["worst"][k], v["worst_ci"].get(k), v["n"]) if k in v["worst"] else "-")
            keys.append(v["worst"].get(k))
        if defenses:
            kept = v["worst"][top] / v["clean"] if top in v["worst"] and v["clean"] else None
            row.append("-" if kept is None else f"{100 * kept:.0f}")
            keys.append(kept)
        if any(pairs):
            cells, cell_keys = _paired_cells(v, pairs[i], top)
            row += cells
            keys += cell_keys
        row += [_fmt_metric(k, v["metrics"].get(k)) for k in metric_keys] + [", ".join(v["flags"]) or "-"]
        keys += [v["metrics"].get(k) for k in metric_keys] + [None]
        out.rows.append(row)
        out.sort_keys.append(keys)
        out.row_classes.append(" ".join(c for c, on in (("imported", v["imported"]), ("tied", tied)) if on))
    return out


def table_rows(entries: Sequence[AnyEntry]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a suite's table, best first.

    Entries with robust accuracies rank by their worst case over eps (lowest eps' worst case breaks
    ties, then clean accuracy); attack entries by their mean success; suites without eps (common
    corruptions) by their first headline metric, then clean accuracy. Defense tables add *kept*,
    the paired comparison with their baseline and shared ranks (:data:`COLUMN_NOTES`).
    """
    t = table(entries)
    return t.headers, t.rows


def column_notes_markdown() -> str:
    """:data:`COLUMN_NOTES` as one markdown paragraph."""
    return "Columns: " + "; ".join(f"*{name}*: {text}" for name, text in COLUMN_NOTES) + "."


def render(entries: Sequence[AnyEntry], fmt: str = "markdown") -> str:
    """A table of entries, best first (``fmt``: markdown or html); see :func:`table_rows`."""
    from tabulate import tabulate

    if fmt not in ("markdown", "html"):
        raise RobustEnsError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
    headers, rows = table_rows(entries)
    return tabulate(rows, headers=headers, tablefmt="github" if fmt == "markdown" else "html", disable_numparse=True)


def digest(entries: Sequence[AnyEntry]) -> str:
    """The sha256 of a set of entries (order-free), carried by every file generated from them."""
    return sha256_json(sorted((e.model_dump(mode="json") for e in entries),
                              key=lambda d: (d["protocol"]["dataset"], d["name"])))


def by_tier(entries: Sequence[AnyEntry]) -> list[tuple[str, list[AnyEntry]]]:
    """Entries grouped by tier, the largest tier first (numbers of different tiers are not ranked together).

    Imported references (measured elsewhere, on their full test sets) appear in every tier's table,
    marked as imported, so ours are always read beside them.
    """
    groups: dict[str, list[AnyEntry]] = {}
    refs = [e for e in entries if row_view(e)["imported"]]
    for e in entries:
        if e not in refs:
            groups.setdefault(row_view(e)["tier"], []).append(e)
    if not groups and refs:
        groups["full"] = []
    for g in groups.values():
        g.extend(refs)
    order = {t: i for i, t in enumerate(TIER_ORDER)}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))

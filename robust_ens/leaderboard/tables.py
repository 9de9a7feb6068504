"""Tables of entries: what a table shows of an entry, the ranking, and markdown or HTML text (tabulate).

Example:
    >>> from robust_ens.leaderboard import load_entries, render          # doctest: +SKIP
    >>> print(render(load_entries("leaderboards")))                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robust_ens.canonical import sha256_json
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.schema import AnyEntry, EntryV1, eps_label

GENERATED = "Generated from the JSON entries by `robust-ens leaderboard render`; do not edit."
TIER_ORDER = ("full", "small", "smoke")


def headline_metrics(entries: Sequence[AnyEntry]) -> list[str]:
    """Summary metrics shown as table columns: top-level ``metrics`` keys (no ``/`` in the name)."""
    keys: set[str] = set()
    for e in entries:
        keys |= {k for k in e.results.metrics if "/" not in k}
    return sorted(keys)


def row_view(e: AnyEntry) -> dict[str, Any]:
    """What a table shows of an entry, for both schema versions.

    Returns:
        ``{"name", "kind", "dataset", "architecture", "members", "defense", "clean", "worst": {eps: acc},
        "worst_ci": {eps: (lo, hi)}, "metrics", "flags", "imported", "paper_url", "tier", "n"}``.
    """
    if isinstance(e, EntryV1):
        return {"name": e.name, "kind": "defense", "dataset": e.protocol.dataset, "architecture": e.model.architecture, "members": e.model.n_members,
                "defense": e.model.defense or "-", "clean": e.results.clean_accuracy,
                "worst": {float(k): v for k, v in e.results.worst_case.items()}, "worst_ci": {},
                "metrics": dict(e.results.metrics), "flags": list(e.protocol.settings.get("flags", [])),
                "imported": False, "paper_url": None, "tier": str(e.protocol.settings.get("tier", "-")),
                "n": e.protocol.n_examples}
    return {"name": e.name, "kind": e.kind, "dataset": e.protocol.dataset, "architecture": e.model.architecture, "members": e.model.n_members,
            "defense": e.model.defense or "-", "clean": e.results.clean.acc,
            "worst": {w.eps: w.robust_acc for w in e.results.worst_case},
            "worst_ci": {w.eps: (w.ci95[0], w.ci95[1]) for w in e.results.worst_case},
            "metrics": dict(e.results.metrics), "flags": [f.split(":")[0] for f in e.results.flags],
            "imported": e.external is not None, "paper_url": e.paper.url if e.paper else None,
            "tier": e.protocol.tier, "n": e.protocol.n_examples}


def _fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if ("acc" in name.lower() or "success" in name.lower()) and 0 <= value <= 1 \
        else f"{value:.2f}"


def table_rows(entries: Sequence[AnyEntry]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a suite's table, best first.

    Entries with robust accuracies rank by their worst case over eps (lowest eps' worst case breaks
    ties, then clean accuracy); attack entries by their mean success; suites without eps (common
    corruptions) by their first headline metric, then clean accuracy.
    """
    views = [row_view(e) for e in entries]
    eps_keys = sorted({k for v in views for k in v["worst"]})
    metric_keys = headline_metrics(entries)
    attacks = all(v["kind"] == "attack" for v in views) and views

    def key(v: dict[str, Any]) -> tuple[float, ...]:
        if attacks:
            succ = [x for k, x in v["metrics"].items() if k.startswith("mean_success@")]
            return (-(sum(succ) / len(succ)) if succ else 0.0, v["clean"])
        worst = [v["worst"][k] for k in eps_keys if k in v["worst"]]
        if worst:
            return (-min(worst), *(-v["worst"].get(k, 0.0) for k in eps_keys), -v["clean"])
        first = v["metrics"].get(metric_keys[0], 0.0) if metric_keys else 0.0
        return (-first, -v["clean"])

    rows = []
    for rank, v in enumerate(sorted(views, key=key), 1):
        name = v["name"] + (" (imported)" if v["imported"] else "")
        rows.append(
            [str(rank), name, v["dataset"], v["architecture"], str(v["members"]), v["defense"], v["tier"], str(v["n"]),
             f"{100 * v['clean']:.2f}"]
            + [f"{100 * v['worst'][k]:.2f}" if k in v["worst"] else "-" for k in eps_keys]
            + [_fmt_metric(k, v["metrics"].get(k)) for k in metric_keys]
            + [", ".join(v["flags"]) or "-"]
        )
    headers = (["#", "name", "data", "architecture", "members", "defense", "tier", "n", "clean %"]
               + [f"worst @ {eps_label(k)} %" for k in eps_keys] + metric_keys + ["flags"])
    return headers, rows


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

"""Aggregations of per-example results: accuracy with a 95% interval, worst case, per class, flags.

Nothing here runs a model: every number of a summary is computed from the boolean vectors a run
keeps, so worst cases over attacks and surrogates, per-class numbers and intervals are never re-runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from robust_ens.leaderboard.compare import mcnemar_p
from robust_ens.leaderboard.schema import Z95, wilson  # noqa: F401 - the entries' interval, defined with their schema


def rate(ok: torch.Tensor) -> dict[str, Any]:
    """``{"acc", "k", "n", "ci95": [lo, hi]}`` of a boolean vector."""
    n = int(ok.numel())
    k = int(ok.sum())
    lo, hi = wilson(k, n)
    return {"acc": k / n if n else 0.0, "k": k, "n": n, "ci95": [lo, hi]}


def per_class(ok: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per class (``None`` for a class with no example in the subset)."""
    out: list[float | None] = []
    for c in range(num_classes):
        m = y == c
        out.append(float(ok[m].float().mean()) if bool(m.any()) else None)
    return out


def worst_case(cells: Iterable[torch.Tensor]) -> torch.Tensor:
    """An example is robust only if it survives every cell: the logical AND of the vectors."""
    out: torch.Tensor | None = None
    for c in cells:
        out = c.clone() if out is None else out & c
    if out is None:
        raise ValueError("worst case over no cells")
    return out


def mcnemar_exact(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Exact McNemar test of two models' per-example results on the same examples.

    Two models measured on one image set are paired: only the discordant examples (``a`` right
    and ``b`` wrong, or the reverse) carry evidence, so a paired test separates gaps that two
    overlapping Wilson intervals cannot.

    Args:
        a: Per-example correctness (bool) of the first model.
        b: The second model's, on the same examples in the same order.

    Returns:
        ``{"diff", "only_a", "only_b", "n", "p"}``: accuracy of ``a`` minus ``b``, the two discordant
        counts, the example count and the two-sided exact binomial p-value (``1.0`` with no
        discordant example).

    Raises:
        ValueError: the vectors differ in length.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired results need the same examples: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = int(a.numel())
    return {"diff": (only_a - only_b) / n if n else 0.0, "only_a": only_a, "only_b": only_b, "n": n,
            "p": mcnemar_p(only_a, only_b)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): several comparisons, one error rate."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


def noise_margin(p: float, n: int) -> float:
    """Two binomial standard errors of a proportion (at least one example's worth)."""
    return max(1.0 / max(n, 1), 2 * math.sqrt(max(p * (1 - p), 1.0 / max(n, 1)) / max(n, 1)))


def eps_flags(worst_by_eps: Mapping[float, float], n: int) -> list[str]:
    """``accuracy_rises_with_eps`` when robust accuracy at a larger eps beats a smaller one beyond noise."""
    eps = sorted(worst_by_eps)
    for a, b in zip(eps, eps[1:], strict=False):
        if worst_by_eps[b] > worst_by_eps[a] + noise_margin(worst_by_eps[a], n):
            return [f"accuracy_rises_with_eps: {worst_by_eps[a]:.3f} at eps {a:g} but {worst_by_eps[b]:.3f} at {b:g}"]
    return []


def whitebox_flags(sanity: Mapping[str, Any], transfer_worst: float | None) -> list[str]:
    """Flags from a target's white-box sanity cells (Pintor et al.'s indicators, AutoAttack's checks).

    Args:
        sanity: ``{"n", "whitebox_acc", "whitebox_acc_2x", "randomized", "nonfinite_grad",
            "zero_grad_fraction"}`` as measured by the runner.
        transfer_worst: Worst-case transfer accuracy on the same examples at the same eps.
    """
    flags: list[str] = []
    n = int(sanity.get("n", 0))
    if sanity.get("randomized"):
        flags.append("randomized_forward: two forward passes on the same images differ")
    if sanity.get("nonfinite_grad"):
        flags.append("nonfinite_gradients: the input gradient holds NaN or inf")
    zf = float(sanity.get("zero_grad_fraction", 0.0))
    if zf > 0.5:
        flags.append(f"zero_gradients: {zf:.0%} of examples have an all-zero input gradient")
    wb, wb2 = sanity.get("whitebox_acc"), sanity.get("whitebox_acc_2x")
    if wb is not None and wb2 is not None and wb2 > wb + noise_margin(wb, n):
        flags.append(f"more_steps_raise_accuracy: white-box accuracy {wb:.3f} rises to {wb2:.3f} with twice the steps")
    best_wb = min(v for v in (wb, wb2) if v is not None) if (wb is not None or wb2 is not None) else None
    if transfer_worst is not None and best_wb is not None and transfer_worst < best_wb - noise_margin(best_wb, n):
        flags.append(f"transfer_below_whitebox: transfer accuracy {transfer_worst:.3f} is below white-box {best_wb:.3f}"
                     " (gradient masking?)")
    return flags


def success_rate(clean_ok: torch.Tensor, adv_ok: torch.Tensor) -> dict[str, Any]:
    """Transfer success: the share of the target's clean-correct examples the attack makes wrong."""
    base = clean_ok
    k = int((base & ~adv_ok).sum())
    n = int(base.sum())
    lo, hi = wilson(k, n)
    return {"success": k / n if n else 0.0, "k": k, "n": n, "ci95": [lo, hi]}


def summarize_cells(cells: Sequence[Mapping[str, Any]], results: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per cell: its fields and :func:`rate` of its vector."""
    return [{**c, **rate(results[c["id"]])} for c in cells]

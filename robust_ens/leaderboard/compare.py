"""What a table can say about two rows from their counts alone: overlapping intervals, rank groups, paired bounds.

An entry holds, per accuracy, ``k`` of ``n`` examples and the 95% Wilson interval; it does not hold
which examples (those stay in the run folder, behind ``results_sha256``). So:

* :func:`rank_groups`: a row's rank is 1 + the number of rows whose interval lies wholly above its
  own; rows that share a rank are not ordered by the table.
* :func:`paired_baseline`: the baseline entry trained on the same images as a defense, measured on
  the same test images (the zoo's descriptions name ``train_n=N``).
* :func:`mcnemar_bounds`: two models measured on the same ``n`` images are paired, and the exact
  McNemar test needs the discordant counts (images only one of the two gets right). The counts
  ``k_a`` and ``k_b`` fix their difference but not their sum; the bounds are the smallest and the
  largest p-value over every split of the images the counts allow. When even the largest is below
  0.05, the gap is significant whichever images they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from robust_ens.leaderboard.schema import AnyEntry, Entry

ALPHA = 0.05
_TRAIN_N = re.compile(r"\btrain_n=(\d+)\b")


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of the discordant counts (binomial, p=1/2; 1.0 with none).

    The one implementation of the test: :func:`robust_ens.bench.aggregate.mcnemar_exact` counts the
    discordant examples of two per-example vectors and calls this. Exact integer arithmetic.
    """
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


def mcnemar_bounds(k_a: int, k_b: int, n: int) -> tuple[float, float]:
    """The smallest and largest exact McNemar p-value any pairing of the counts allows.

    With ``d = k_a - k_b``, the discordant counts are ``(b + d, b)`` for ``b`` from 0 to
    ``min(k_b, n - k_a)`` (``d >= 0``; the mirror otherwise). For a fixed difference the p-value
    does not fall as the discordant total grows, so the ends of that range are the bounds.
    """
    if not (0 <= k_a <= n and 0 <= k_b <= n):
        raise ValueError(f"counts {k_a}, {k_b} are not within 0..{n}")
    if k_a < k_b:
        return mcnemar_bounds(k_b, k_a, n)
    d = k_a - k_b
    most = min(k_b, n - k_a)
    return mcnemar_p(d, 0), mcnemar_p(most + d, most)


def p_text(lo: float, hi: float) -> str:
    """The paired column's words: separated whatever the pairing, not separated whatever it, or open."""
    if hi < ALPHA:
        return f"≤ {hi:.2g}: separated"
    if lo >= 1.0:
        return "1: not separated"
    if lo >= ALPHA:
        return f"≥ {lo:.2g}: not separated"
    return f"{lo:.1g}–{hi:.2g}: open"


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def rank_groups(intervals: Sequence[tuple[float, float] | None]) -> list[int]:
    """Each row's rank: 1 + the rows whose interval lies wholly above its own (rows in table order).

    A row without an interval ranks by its position.
    """
    out = []
    for i, iv in enumerate(intervals):
        if iv is None:
            out.append(i + 1)
        else:
            out.append(1 + sum(1 for j in intervals if j is not None and j[0] > iv[1]))
    return out


def train_n(e: AnyEntry) -> int | None:
    """The number of training images an entry's description names (``train_n=N``), if any."""
    m = _TRAIN_N.search(e.model.description or "")
    return int(m.group(1)) if m else None


def _same_images(a: Entry, b: Entry) -> bool:
    pa, pb = a.protocol, b.protocol
    return (pa.suite, pa.suite_version, pa.tier, pa.dataset, pa.split, pa.n_examples, pa.seed) == \
           (pb.suite, pb.suite_version, pb.tier, pb.dataset, pb.split, pb.n_examples, pb.seed)


def paired_baseline(e: AnyEntry, group: Sequence[AnyEntry]) -> Entry | None:
    """The baseline a defense entry is compared with, or ``None``.

    A candidate is a measured ``baseline`` entry of ``group`` on the same test images (suite,
    version, tier, dataset, split, n, seed) trained on as many images (``train_n``, both unknown
    counts as equal); the one with the same architecture, then member count, then name (the
    defense's name with ``baseline`` for its defense) is taken.
    """
    if not isinstance(e, Entry) or e.kind != "defense" or not e.model.defense or e.model.defense == "baseline" \
            or e.external is not None:
        return None
    cands = [b for b in group if isinstance(b, Entry) and b is not e and b.kind == "defense" and b.external is None
             and b.model.defense == "baseline" and _same_images(e, b) and train_n(b) == train_n(e)]
    if not cands:
        return None
    twin = e.name.replace(e.model.defense, "baseline", 1)
    return min(cands, key=lambda b: (b.model.architecture != e.model.architecture,
                                     b.model.n_members != e.model.n_members, b.name != twin, b.name))

"""The ``corruptions`` task: each target's accuracy on every (corruption, severity) copy of the examples.

The corrupted copies come from :func:`robust_ens.corruptions.evaluate.corrupted_set`, seeded per
example from (protocol seed, example, corruption, severity), so a copy does not depend on batches;
each is made (or read from the cache) once per cell and each target is evaluated on it
forward-only. The mean over cells is reported beside them (``mean_corruption_accuracy``).

Tier options (``[tiers.X.options]``): ``preset`` (corruption parameters, default ``cifar10c``) and
``upscale`` (default ``"auto"``: images below the corruptions' 32 px are upsampled by the smallest
integer factor that reaches it, and every target sees them average-pooled back, clean included).

``robust-ens corruptions evaluate`` runs this task through
:func:`~robust_ens.bench.runner.run_suite` on a :func:`corruptions_protocol` made from its options,
and scores the entry against a baseline entry with :func:`with_mce`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from robust_ens.bench.evaluate import CorruptionCell, RunContext, RunResult
from robust_ens.bench.examples import Examples
from robust_ens.bench.protocol import Protocol, Tier, get_suite
from robust_ens.bench.targets import Target
from robust_ens.corruptions.evaluate import (
    SUITE,
    Upscaled,
    corrupted_set,
    corruption_errors,
    result_from_entry,
    upscale_factor,
    upscale_images,
)
from robust_ens.evaluation import correct
from robust_ens.leaderboard import Entry

CUSTOM_TIER = "custom"


def _upscaled(ctx: RunContext, targets: list[Target]) -> tuple[RunContext, list[Target]]:
    """The context and targets of the run on upscaled images (themselves when no upscaling is needed)."""
    ex = ctx.ex
    factor = upscale_factor(ctx.tier.options.get("upscale", "auto"), ex.x_u8.shape[-2], ex.x_u8.shape[-1])
    if factor == 1:
        return ctx, targets
    up = Examples.of(upscale_images(ex.x_u8, factor), ex.y, ex.indices, ex.label, ex.num_classes, ex.batch_size)
    return (dataclasses.replace(ctx, ex=up),
            [dataclasses.replace(t, module=Upscaled(t.module, factor).eval()) for t in targets])


def run_corruptions(ctx: RunContext, targets: list[Target]) -> RunResult:
    """Run the corruptions task on resolved targets."""
    preset = str(ctx.tier.options.get("preset", "cifar10c"))
    ctx, targets = _upscaled(ctx, targets)
    cells = [CorruptionCell(f"{c}@{s}", c, s) for c in ctx.tier.corruptions for s in ctx.tier.severities]
    result = ctx.result(cells, preset=preset)
    ex = ctx.ex
    current: dict[str, torch.Tensor] = {}  # the cell in progress' corrupted copy, made or read once

    def compute(t: Target, cell: CorruptionCell, b: int, sl: slice) -> torch.Tensor:
        if cell.id not in current:
            current.clear()
            current[cell.id] = corrupted_set(ex.x_u8, cell.corruption, cell.severity, preset=preset,
                                             seed=ctx.protocol.seed, fingerprint=ex.fingerprint,
                                             cache=ctx.corruption_cache)
        return correct(t.module, current[cell.id][sl].to(ctx.device), ex.y[sl].to(ctx.device))

    for name, (clean, results) in ctx.per_target(targets, cells, compute).items():
        t = next(t for t in targets if t.name == name)
        row = ctx.target_result(t, clean, cells, results, worst_case=False)
        accs = [c.rate.acc for c in row.cells]
        row.metrics["mean_corruption_accuracy"] = sum(accs) / len(accs) if accs else None
        result.targets[name] = row
    return result


def corruptions_protocol(
    dataset: str,
    *,
    n: int,
    corruptions: Sequence[str],
    severities: Sequence[int],
    split: str = "test",
    seed: int = 0,
    preset: str = "cifar10c",
    batch_size: int = 500,
    upscale: str | int = "auto",
) -> Protocol:
    """The ``cifar10-corruptions`` protocol with one tier made from the arguments.

    The tier is named ``custom``, unless the arguments amount to one of the suite's own tiers (its
    dataset, split and seed too): then that tier is returned under its name, so the entry is the
    one ``robust-ens bench run`` writes and ``robust-ens regress`` can re-run it.

    Args:
        dataset: Dataset name (``cifar10``, ``digits``, ``imagefolder:<path>``).
        n: Examples (the first ``n`` of a seeded subset; the whole split when ``n`` is its size).
        corruptions: Corruption names.
        severities: Severities (1..5).
        split: Split.
        seed: The protocol seed: the example subset and the corruptions' random numbers.
        preset: Corruption parameters.
        batch_size: Images per batch (numbers do not depend on it).
        upscale: ``"auto"`` or an integer factor for images below 32 px.
    """
    base = get_suite(SUITE)
    options: dict[str, Any] = {}
    if preset != "cifar10c":
        options["preset"] = preset
    if str(upscale) != "auto":
        options["upscale"] = int(upscale)
    tier = Tier(name=CUSTOM_TIER, n=int(n), batch_size=int(batch_size), corruptions=tuple(corruptions),
                severities=tuple(int(s) for s in severities), options=options)
    if (dataset, split, seed) == (base.dataset, base.split, base.seed):
        tier = next((t for t in base.tiers.values() if dataclasses.replace(tier, name=t.name) == t), tier)
    return dataclasses.replace(base, dataset=dataset, split=split, seed=int(seed), tiers={tier.name: tier})


def with_mce(entry: Entry, baseline: Mapping[str, Any]) -> Entry:
    """``entry`` with Hendrycks & Dietterich's mCE and relative mCE (in %) against ``baseline``.

    Args:
        entry: A ``cifar10-corruptions`` entry (schema 2).
        baseline: :func:`~robust_ens.corruptions.evaluate.result_from_entry` of the baseline
            entry (schema 2, or a legacy schema-1 entry), with every (corruption, severity) of ``entry``.

    Returns:
        A copy whose ``results.metrics`` hold ``mCE`` and ``relative_mCE`` (when finite) and whose
        ``model.config`` names the baseline (``mCE_baseline``).
    """
    res = result_from_entry(entry)
    errs = corruption_errors(res, baseline, list(res["accuracy"]))
    metrics = dict(entry.results.metrics)
    metrics.update({k: float(errs[k]) for k in ("mCE", "relative_mCE") if math.isfinite(errs[k])})
    config = {**entry.model.config, "mCE_baseline": str(baseline["name"])}
    return entry.model_copy(update={"results": entry.results.model_copy(update={"metrics": metrics}),
                                    "model": entry.model.model_copy(update={"config": config})})

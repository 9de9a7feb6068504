"""The ``corruptions`` task: each target's accuracy on every (corruption, severity) copy of the examples.

The corrupted copies come from :func:`robust_ens.corruptions.evaluate.corrupted_set`, seeded per
example from (protocol seed, example, corruption, severity), so a copy does not depend on batches;
each target is evaluated on them forward-only, and the mean over cells is reported beside them
(``mean_corruption_accuracy``).
"""

from __future__ import annotations

import torch

from robust_ens.bench.evaluate import CorruptionCell, RunContext, RunResult
from robust_ens.bench.targets import Target
from robust_ens.evaluation import correct


def run_corruptions(ctx: RunContext, targets: list[Target]) -> RunResult:
    """Run the corruptions task on resolved targets."""
    from robust_ens.corruptions.evaluate import corrupted_set

    preset = str(ctx.tier.options.get("preset", "cifar10c"))
    cells = [CorruptionCell(f"{c}@{s}", c, s) for c in ctx.tier.corruptions for s in ctx.tier.severities]
    result = ctx.result(cells, preset=preset)
    ex = ctx.ex

    def compute(t: Target, cell: CorruptionCell, b: int, sl: slice) -> torch.Tensor:
        xc = corrupted_set(ex.x_u8, cell.corruption, cell.severity, preset=preset, seed=ctx.protocol.seed,
                           fingerprint=ex.fingerprint)
        return correct(t.module, xc[sl].to(ctx.device), ex.y[sl].to(ctx.device))

    for name, (clean, results) in ctx.per_target(targets, cells, compute).items():
        t = next(t for t in targets if t.name == name)
        row = ctx.target_result(t, clean, cells, results, worst_case=False)
        accs = [c.rate.acc for c in row.cells]
        row.metrics["mean_corruption_accuracy"] = sum(accs) / len(accs) if accs else None
        result.targets[name] = row
    return result

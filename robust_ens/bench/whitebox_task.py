"""The ``whitebox`` task: the original AutoAttack (``pyautoattack``) on each target, batch by batch.

Each target is attacked on its own at every eps of the tier (``version`` and, for ``"custom"``,
``attacks`` from the tier's options); AutoAttack's seed per batch comes from
:func:`~.examples.batch_seed`, and its output is projected onto the budget by the attack
library's :func:`~robust_ens.attacks.enforce_budget` before the forward-only evaluation.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from robust_ens.bench import aggregate as agg
from robust_ens.bench.evaluate import AttackCell, RunContext, RunResult
from robust_ens.bench.examples import batch_seed
from robust_ens.bench.targets import Target
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import correct


def run_whitebox(ctx: RunContext, targets: list[Target]) -> RunResult:
    """Run the white-box task on resolved targets."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise RobustEnsError(
            "cifar10-whitebox needs the original AutoAttack: pip install 'robust-ens[autoattack]' "
            "(the package pyautoattack)"
        ) from None
    from robust_ens.attacks import enforce_budget

    opts = dict(ctx.tier.options)
    version = str(opts.get("version", "standard"))
    cells = [AttackCell(f"autoattack-{version}@{e:.6g}", f"autoattack-{version}", "white-box", e) for e in ctx.tier.eps]
    result = ctx.result(cells, autoattack={"package": "pyautoattack", "version": version, **opts})
    norm = ctx.protocol.norm

    def compute(t: Target, cell: AttackCell, b: int, sl: slice) -> torch.Tensor:
        x, y = ctx.batch(sl)
        kw: dict[str, Any] = {"attacks": list(opts["attacks"])} if version == "custom" else {}
        aa = AutoAttack(t.module.eval(), norm=norm, eps=cell.eps, version=version, device=ctx.device,
                        seed=batch_seed(ctx.protocol.seed, cell.id, b), **kw)
        t0 = time.perf_counter()
        with _quiet_logs("pyautoattack"):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
        ctx.cost.attack_seconds += time.perf_counter() - t0
        return correct(t.module, enforce_budget(x, x_adv, cell.eps, norm), y)

    for name, (clean, results) in ctx.per_target(targets, cells, compute).items():
        t = next(t for t in targets if t.name == name)
        row = ctx.target_result(t, clean, cells, results)
        row.flags += agg.eps_flags({float(k): v.acc for k, v in (row.worst_case or {}).items()}, len(ctx.ex.y))
        result.targets[name] = row
    return result


class _quiet_logs:
    """Silence a chatty library's INFO logs for a block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)

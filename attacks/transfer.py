"""Transfer evaluation: craft on a surrogate once per (attack, eps), evaluate targets forward-only.

Example:
    >>> import torch
    >>> from robust_ens import Ensemble, models
    >>> from robust_ens.attacks.transfer import transfer_table
    >>> sur = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
    >>> tgt = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
    >>> rows = transfer_table(["mifgsm", "cwa"], sur, {"target": tgt}, torch.rand(8, 1, 8, 8),
    ...                       torch.arange(8), eps=[4/255, 8/255], steps=2)
    >>> [(r["attack"], round(r["eps"] * 255)) for r in rows]
    [('mifgsm', 4), ('mifgsm', 8), ('cwa', 4), ('cwa', 8)]
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robust_ens.evaluation import accuracy

from .base import ATTACKS, Attack, create_attack


def _build(name: str | Attack, eps: float, kwargs: Mapping[str, Any]) -> Attack:
    if isinstance(name, Attack):
        return name.replace(eps=eps)
    params = inspect.signature(ATTACKS.get(name)).parameters
    accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in kwargs.items() if accepts_all or k in params}
    return create_attack(name, eps=eps, **kw)


def transfer_table(
    attacks: Sequence[str | Attack],
    surrogate: nn.Module,
    targets: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    *,
    seed: int = 0,
    batch_size: int = 256,
    **attack_kwargs: Any,
) -> list[dict[str, Any]]:
    """Robust accuracy of each target under each transfer attack and eps.

    Args:
        attacks: Registered names (built with ``eps`` and the ``attack_kwargs`` each accepts)
            or attack objects (copied with each ``eps``).
        surrogate: Model or Ensemble the attacks run on (white-box).
        targets: Name -> model evaluated on the adversarial images (forward only).
        x: Clean images in [0, 1].
        y: Labels.
        eps: Budgets.
        seed: Attack seed (per batch: ``seed + batch index``).
        batch_size: Attack batch size.
        **attack_kwargs: Hyperparameters passed to every named attack that accepts them.

    Returns:
        One row per (attack, eps): ``attack``, ``eps``, ``surrogate`` (white-box accuracy),
        one accuracy per target name, ``clean`` accuracies under ``clean/<name>``, and ``seconds``.
    """
    clean = {f"clean/{k}": accuracy(m, x, y) for k, m in targets.items()}
    rows: list[dict[str, Any]] = []
    for a in attacks:
        for e in eps:
            atk = _build(a, float(e), attack_kwargs)
            t0 = time.perf_counter()
            adv = torch.cat([
                atk(surrogate, x[i : i + batch_size], y[i : i + batch_size], seed=seed + b).x_adv
                for b, i in enumerate(range(0, len(x), batch_size))
            ])
            row: dict[str, Any] = {"attack": a if isinstance(a, str) else type(a).__name__, "eps": float(e),
                                   "surrogate": accuracy(surrogate, adv, y)}
            row.update({k: accuracy(m, adv, y) for k, m in targets.items()})
            row.update(clean)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    return rows


__all__ = ["accuracy", "transfer_table"]

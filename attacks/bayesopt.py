"""Bayesian optimization of ViT-EnsembleAttack's augmentation parameters ``(p_h, s, lam)`` with optuna.

optuna (TPE sampler, seeded) is the maintained library used: it handles mixed search spaces,
is deterministic with a seeded sampler, and needs no GPU or compiled extension.

The objective of a trial is the **transfer success rate** to a held-out validation model: the
fraction of validation examples that the validation model classifies correctly when clean and
misclassifies after the attack (untargeted). Two modes:

* ``"per_member"`` (default): one study per surrogate; a trial attacks with that surrogate alone
  (its augmented copies) and scores the transfer. Cheap (one member per trial) and matches
  "parameters per surrogate".
* ``"joint"``: one study over all members' parameters together, attacking with the full ensemble.

Every trial uses the same attack seed (common random numbers), so differences between trials
come from the parameters, and the whole search is reproducible from ``seed``.

Example:
    >>> import torch
    >>> from robust_ens import models, Ensemble
    >>> from robust_ens.attacks import ViTEnsembleAttack
    >>> from robust_ens.attacks.bayesopt import optimize_augmentation
    >>> vit = lambda: models.create("timm:vit_tiny_patch16_224", num_classes=10, img_size=32,
    ...                             patch_size=8, depth=2, embed_dim=64, num_heads=4).eval()
    >>> ens, val = Ensemble([vit(), vit()], precision="fp32"), vit()
    >>> x, y = torch.rand(4, 3, 32, 32), val(torch.rand(4, 3, 32, 32)).argmax(1)
    >>> res = optimize_augmentation(ViTEnsembleAttack(steps=1, copies=1), ens, val, x, y, n_trials=2, seed=0)
    >>> len(res.params)
    2
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import predict
from robust_ens.overrides import COUNT

from .vit_augment import find_sites
from .vit_ensemble import ViTEnsembleAttack

log = logging.getLogger(__name__)

#: Search ranges ``(low, high)`` of each parameter (our choice; the paper's ranges were not available).
SEARCH_SPACE: dict[str, tuple[float, float]] = {"p_h": (0.0, 0.5), "s": (0.5, 1.5), "lam": (0.0, 0.5)}
MODES = ("per_member", "joint")


@dataclass
class BOResult:
    """What :func:`optimize_augmentation` found.

    Attributes:
        attack: The input attack with ``params`` set to the best parameters (repeatable as is).
        params: Best parameters per member (``None`` for members that cannot be augmented).
        best_values: Best transfer success rate per study (one per member, or one for ``"joint"``).
        trials: Every trial: study, number, parameters, value.
        baseline: Transfer success rate of the attack with every augmentation off (same seed).
        config: The search settings (mode, trials, seed, search space).
    """

    attack: ViTEnsembleAttack
    params: list[dict[str, float] | None]
    best_values: list[float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    baseline: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: the attack config, the chosen parameters and the search history."""
        return {"attack": self.attack.config(), "params": self.params, "best_values": self.best_values,
                "baseline": self.baseline, "trials": self.trials, "config": self.config}

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=1)


def transfer_success(
    attack: ViTEnsembleAttack,
    surrogate: nn.Module,
    target: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 256,
    clean_mask: torch.Tensor | None = None,
) -> float:
    """Fraction of the examples ``target`` gets right when clean that it gets wrong after the attack.

    Args:
        attack: The attack to run on ``surrogate``.
        surrogate: Model or Ensemble attacked.
        target: The held-out model the adversarial examples are transferred to.
        x: Images ``[N, C, H, W]`` in [0, 1].
        y: Labels ``[N]``.
        seed: Attack seed.
        batch_size: Attack/evaluation batch size.
        clean_mask: Precomputed "target correct on clean" mask (computed when None).
    """
    if clean_mask is None:
        clean_mask = predict(target, x, batch_size=batch_size).argmax(-1) == y
    idx = clean_mask.nonzero().flatten()
    if len(idx) == 0:
        return 0.0
    xs, ys = x[idx], y[idx]
    fooled = 0
    for i in range(0, len(xs), batch_size):
        xb, yb = xs[i : i + batch_size], ys[i : i + batch_size]
        adv = attack(surrogate, xb, yb, seed=seed + i).x_adv
        fooled += int((predict(target, adv, batch_size=batch_size).argmax(-1) != yb).sum())
    return fooled / len(xs)


def _check_search(mode: str, n_trials: Any, search_space: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    """Validate the search settings; return the ranges per parameter."""
    if mode not in MODES:
        raise RobustEnsError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int):
        raise RobustEnsError(f"n_trials must be an integer, got {n_trials!r}")
    COUNT.check(n_trials, "n_trials")
    space = dict(SEARCH_SPACE if search_space is None else search_space)
    if set(space) != {"p_h", "s", "lam"}:
        raise RobustEnsError(f"search_space must give ranges for p_h, s and lam, got {sorted(space)}")
    return space


@dataclass
class _Search:
    """One search's settings and history: the studies of both modes draw and record through it."""

    optuna: Any
    attack: ViTEnsembleAttack
    space: dict[str, tuple[float, float]]
    n_trials: int
    seed: int
    score: Callable[[ViTEnsembleAttack, nn.Module], float]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def suggest(self, trial: Any, suffix: str = "") -> dict[str, float]:
        return {k: float(trial.suggest_float(k + suffix, *self.space[k])) for k in ("p_h", "s", "lam")}

    def study(self, k: int) -> Any:
        """A maximizing study with the TPE sampler seeded ``seed + k``."""
        sampler = self.optuna.samplers.TPESampler(seed=self.seed + k, n_startup_trials=max(1, min(10, self.n_trials // 3)))
        return self.optuna.create_study(direction="maximize", sampler=sampler)

    def per_member(self, members: list[nn.Module], can: list[bool]) -> tuple[list[dict[str, float] | None], list[float]]:
        """One study per augmentable member, attacking with that member alone."""
        best_params: list[dict[str, float] | None] = [None] * len(members)
        best_values: list[float] = []
        for k, m in enumerate(members):
            if not can[k]:
                continue

            def objective(trial: Any, k: int = k, m: nn.Module = m) -> float:
                p = self.suggest(trial)
                value = self.score(self.attack.replace(params=[p]), m)
                self.trials.append({"study": k, "number": trial.number, "params": p, "value": value})
                log.info("BO member %d trial %d: %s -> %.3f", k, trial.number, p, value)
                return value

            study = self.study(k)
            study.optimize(objective, n_trials=self.n_trials)
            best_params[k] = {key: float(study.best_params[key]) for key in ("p_h", "s", "lam")}
            best_values.append(float(study.best_value))
        return best_params, best_values

    def joint(self, surrogate: nn.Module, can: list[bool]) -> tuple[list[dict[str, float] | None], list[float]]:
        """One study over every member's parameters, attacking with the whole surrogate."""

        def objective(trial: Any) -> float:
            ps: list[dict[str, float] | None] = [self.suggest(trial, f"_{k}") if can[k] else None for k in range(len(can))]
            value = self.score(self.attack.replace(params=ps), surrogate)
            self.trials.append({"study": "joint", "number": trial.number, "params": ps, "value": value})
            log.info("BO joint trial %d: %s -> %.3f", trial.number, ps, value)
            return value

        study = self.study(0)
        study.optimize(objective, n_trials=self.n_trials)
        best_params: list[dict[str, float] | None] = [
            {key: float(study.best_params[f"{key}_{k}"]) for key in ("p_h", "s", "lam")} if can[k] else None
            for k in range(len(can))
        ]
        return best_params, [float(study.best_value)]


def optimize_augmentation(
    attack: ViTEnsembleAttack,
    surrogate: nn.Module,
    validation_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_trials: int = 20,
    seed: int = 0,
    mode: str = "per_member",
    search_space: Mapping[str, tuple[float, float]] | None = None,
    attack_seed: int = 0,
    batch_size: int = 256,
) -> BOResult:
    """Choose ``(p_h, s, lam)`` per surrogate by Bayesian optimization (optuna TPE, seeded).

    Args:
        attack: The ViT-EnsembleAttack to tune (its other hyperparameters are kept).
        surrogate: The surrogate ensemble (or a single ViT).
        validation_model: Held-out model whose transfer success rate is maximized.
        x: Validation images (a small split, e.g. 64-256 images).
        y: Their labels.
        n_trials: Trial budget per study (per member in ``"per_member"`` mode).
        seed: Seed of the TPE sampler (study ``k`` uses ``seed + k``).
        mode: ``"per_member"`` (default) or ``"joint"``.
        search_space: Ranges per parameter (default :data:`SEARCH_SPACE`).
        attack_seed: Seed of every attack run (the same for every trial).
        batch_size: Attack/evaluation batch size.

    Returns:
        A :class:`BOResult`; ``result.attack`` carries the chosen parameters in its config.

    Raises:
        RobustEnsError: for a bad mode, trial budget or search space, or no augmentable member.
    """
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - dependency
        raise RobustEnsError("optimize_augmentation needs optuna: pip install 'optuna>=3.0'") from err
    space = _check_search(mode, n_trials, search_space)
    members = list(surrogate.members) if isinstance(surrogate, Ensemble) else [surrogate]
    can = [find_sites(m).supported for m in members]
    if not any(can):
        raise RobustEnsError("no surrogate member has an attention module that ViT augmentation supports")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clean_mask = predict(validation_model, x, batch_size=batch_size).argmax(-1) == y

    def score(atk: ViTEnsembleAttack, sur: nn.Module) -> float:
        return transfer_success(atk, sur, validation_model, x, y, seed=attack_seed, batch_size=batch_size,
                                clean_mask=clean_mask)

    search = _Search(optuna, attack, space, n_trials, seed, score)
    baseline = score(attack.replace(head_drop=False, score_scale=False, mlp_mix=False), surrogate)
    if mode == "per_member":
        best_params, best_values = search.per_member(members, can)
    else:
        best_params, best_values = search.joint(surrogate, can)
    tuned = attack.replace(params=best_params)
    cfg = {"mode": mode, "n_trials": n_trials, "seed": seed, "attack_seed": attack_seed,
           "search_space": {k: list(v) for k, v in space.items()}, "n_validation": len(x),
           "validation_model": type(validation_model).__name__}
    return BOResult(tuned, best_params, best_values, search.trials, baseline, cfg)


__all__ = ["MODES", "SEARCH_SPACE", "BOResult", "optimize_augmentation", "transfer_success"]

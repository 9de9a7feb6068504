"""Ensemble defenses (``robust_ens.defenses``): baseline, ADP, GAL, DVERGE, TRS, and diversity metrics.

Every defense is a joint loss plugged into the one training loop (:func:`robust_ens.train.fit`),
with hyperparameters in a declarative recipe file per defense (``recipes/<name>.toml``, tiers
``small`` and ``full``). This package only re-exports; the jobs live in its modules:

* ``base``, ``baseline``, ``adp``, ``gal``, ``dverge``, ``trs``: the registry and the defenses;
* ``recipe_registry``: every training recipe (defense tiers, dataset and model recipes);
* ``train``: :func:`train_defense` and :func:`~robust_ens.defenses.train.train_ensemble`, the one
  home of ensemble training; ``members``: members in and out of a run (init, checkpoints);
* ``distill``, ``features``, ``metrics``: feature distillation, layers, diversity metrics.

Example:
    >>> from robust_ens.defenses import list_defenses
    >>> list_defenses()
    ['adp', 'baseline', 'dverge', 'gal', 'trs']

Training (resumable: rerun with the same ``out_dir``)::

    from robust_ens.defenses import train_defense, transferability_matrix
    ens = train_defense("dverge", arch="resnet20", n_members=3, dataset="cifar10", recipe="small",
                        out_dir="runs/dverge")
    tm = transferability_matrix(ens, x_test, y_test)
"""

from __future__ import annotations

from robust_ens.defenses import adp as adp  # noqa: F401  (registers)
from robust_ens.defenses import baseline as baseline  # noqa: F401
from robust_ens.defenses import dverge as dverge  # noqa: F401
from robust_ens.defenses import gal as gal  # noqa: F401
from robust_ens.defenses import trs as trs  # noqa: F401
from robust_ens.defenses.base import DEFENSES, DefenseSpec, list_defenses
from robust_ens.defenses.distill import distill_features, linf_pgd
from robust_ens.defenses.features import check_layers, feature_layers, get_features
from robust_ens.defenses.metrics import (
    TransferMatrix,
    correct_by_all,
    gradient_cosine,
    mean_gradient_cosine,
    transferability_matrix,
    vulnerability_overlap,
)
from robust_ens.defenses.recipe_registry import (
    DEFAULT_TIER,
    MEAN_OF_MEMBERS,
    PACKED_KEY,
    TIERS,
    load_meta,
    load_recipe,
    resolve_recipe,
)
from robust_ens.defenses.train import defense_plan, member_mean_config, train_defense

__all__ = [
    "DEFAULT_TIER",
    "DEFENSES",
    "MEAN_OF_MEMBERS",
    "PACKED_KEY",
    "TIERS",
    "DefenseSpec",
    "TransferMatrix",
    "check_layers",
    "correct_by_all",
    "defense_plan",
    "distill_features",
    "feature_layers",
    "get_features",
    "gradient_cosine",
    "linf_pgd",
    "list_defenses",
    "load_meta",
    "load_recipe",
    "mean_gradient_cosine",
    "member_mean_config",
    "resolve_recipe",
    "train_defense",
    "transferability_matrix",
    "vulnerability_overlap",
]

"""``robust-ens quickstart``: the whole job on the embedded digits in about a minute on 2 cores.

Trains a 3-member surrogate ensemble and a 3-member target ensemble (different seeds) of
``small_cnn`` on scikit-learn's digits, reports clean accuracies and, where the attack library is
installed, a transfer table from the surrogate to the target ensemble. Trained members are
checkpointed in ``out_dir``; a second run reuses them.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robust_ens import __version__, data
from robust_ens.atomic import atomic_write_text
from robust_ens.defenses.recipe_registry import default_recipe
from robust_ens.defenses.train import train_ensemble
from robust_ens.ensemble import Ensemble
from robust_ens.evaluation import accuracy
from robust_ens.precision import REFERENCE_PRECISION

log = logging.getLogger(__name__)

SURROGATE_SEED = 0
TARGET_SEED = 100

# Extra report sections (e.g. the transfer table) register here: f(context) -> section dict.
Section = Callable[[dict[str, Any]], dict[str, Any]]
SECTIONS: dict[str, Section] = {}


TRANSFER_EPS = (0.05, 0.1, 0.2)  # digits are 8x8 with 17 grey levels: small eps barely move them


def transfer_section(context: dict[str, Any]) -> dict[str, Any]:
    """Transfer table: attacks made once on the surrogate ensemble, evaluated on the target ensemble.

    The sets are crafted through the engine's route (:func:`~robust_ens.bench.transfer_task.transfer_table`:
    fixed batches, uint8 sets in ``<out_dir>/advsets``, reused by a second run).
    """
    from robust_ens.attacks import create_attack
    from robust_ens.bench.transfer_task import transfer_table

    surrogate, target = context["ensembles"]["surrogate"], context["ensembles"]["target"]
    records = []
    for eps in TRANSFER_EPS:
        # alpha = eps / steps (the MI-FGSM paper's choice) so every eps is reachable; CWA's own default is eps / 5.
        attacks = [create_attack("mifgsm", eps=eps, alpha=eps / 10, steps=10), create_attack("cwa", eps=eps, steps=10)]
        records += transfer_table(attacks, surrogate, {"target": target}, context["x"], context["y"], eps=[eps])
    rows = [
        [r["attack"], f"{r['eps']:g}", f"{100 * r['surrogate']:.1f}%", f"{100 * r['target']:.1f}%", f"{r['seconds']:.1f}"]
        for r in records
    ]
    return {
        "title": "Transfer from the surrogate ensemble to the target ensemble (10 steps, Linf)",
        "headers": ["attack", "eps", "surrogate acc (white-box)", "target acc (transfer)", "seconds"],
        "table": rows,
        "records": records,
    }


SECTIONS["transfer"] = transfer_section


def run(out_dir: str | Path = "runs/quickstart", *, n_members: int = 3, epochs: int | None = None,
        n_eval: int = 500, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Train both ensembles, evaluate them and write ``out_dir/results.json``.

    Returns:
        The results dictionary (also written to disk).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    recipe = default_recipe("digits")
    if epochs is not None:
        recipe = recipe.replace(epochs=epochs)
    ensembles: dict[str, Ensemble] = {}
    member_rows = []
    for role, seed in (("surrogate", SURROGATE_SEED), ("target", TARGET_SEED)):
        members, records = train_ensemble(
            "small_cnn", n_members, "digits", recipe=recipe, seed=seed, out_dir=out / role,
            device=device, progress=progress,
        )
        ensembles[role] = Ensemble(members, combine="logits", precision=REFERENCE_PRECISION).eval()
        for i, rec in enumerate(records):
            member_rows.append({"role": role, "member": i, "seed": seed + i, "clean_acc": rec["test_acc"]})
    x, y = data.load("digits", "test", n=min(n_eval, data.DIGITS_TEST), seed=0, device=device)
    ens_rows = [{"role": role, "clean_acc": accuracy(ens, x, y)} for role, ens in ensembles.items()]
    results: dict[str, Any] = {
        "dataset": "digits",
        "n_eval": len(x),
        "members": member_rows,
        "ensembles": ens_rows,
        "recipe": recipe.to_dict(),
        "environment": {
            "robust_ens": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(x.device), "threads": torch.get_num_threads(),
        },
    }
    context = {"ensembles": ensembles, "x": x, "y": y, "progress": progress, "out": out}
    for name, section in SECTIONS.items():
        results[name] = section(context)
    results["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def render(results: dict[str, Any]) -> str:
    """Plain-text tables of a quickstart result."""
    from tabulate import tabulate

    parts = [
        "Clean accuracy on digits (test split, {} images)".format(results["n_eval"]),
        tabulate(
            [[r["role"], r["member"], r["seed"], f"{100 * r['clean_acc']:.1f}%"] for r in results["members"]]
            + [[r["role"], "ensemble", "", f"{100 * r['clean_acc']:.1f}%"] for r in results["ensembles"]],
            headers=["role", "member", "seed", "clean acc"],
        ),
    ]
    for name in SECTIONS:
        section = results.get(name)
        if section and "table" in section:
            parts += ["", section["title"], tabulate(section["table"], headers=section["headers"])]
    parts.append(f"\nfinished in {results['seconds']:.1f} s")
    return "\n".join(parts)

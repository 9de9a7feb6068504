"""ViT-EnsembleAttack transfer experiment on cifar10-jpeg (tiny ViT surrogates, held-out ViT and CNN targets).

Stages (each resumable; everything is cached under ``--work-dir``):

1. ``train``: three tiny ViT/DeiT surrogates, one held-out tiny ViT target, one held-out ResNet-20
   target and one tiny DeiT validation model (for Bayesian optimization only), all trained with
   :func:`robust_ens.train.train_classifier` on the same fixed subset of the training split.
   A model whose checkpoint exists is loaded instead of retrained; an interrupted model resumes
   from its last finished epoch.
2. ``bo``: Bayesian optimization (optuna TPE) of ``(p_h, s, lam)`` per surrogate, maximizing
   transfer success to the validation model on a validation split of the *test* set that is
   disjoint from the evaluation images (cached as ``bo.json``).
3. ``eval``: every attack row at every eps on the evaluation images, each adversarial set
   evaluated on both targets (cached per row as ``rows/<row>_eps<k>.json``), then the results
   are written to ``--out`` (JSON) and ``--out-md`` (markdown table).

Transfer success rate (the definition used): among the evaluation images the target classifies
correctly when clean, the fraction it misclassifies after the attack.

Run (one thread; see experiments/README.md)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ROBUST_ENS_DATA=../shared/data \\
        .venv/bin/python experiments/vit_transfer.py --work-dir runs/vit_transfer
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens import Ensemble, data, evaluation, models
from robust_ens.attacks import create_attack
from robust_ens.attacks.base import Attack
from robust_ens.attacks.bayesopt import SEARCH_SPACE, optimize_augmentation
from robust_ens.attacks.vit_ensemble import ViTEnsembleAttack
from robust_ens.defenses.recipe_registry import model_recipe as get_recipe
from robust_ens.evaluation import accuracy
from robust_ens.train import train_classifier

log = logging.getLogger("vit_transfer")

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ModelSpec:
    """One model of the experiment.

    Attributes:
        name: File stem under the work directory.
        recipe: Recipe name in :data:`robust_ens.attacks.vit_recipes.VIT_RECIPES`.
        seed: Training seed (initialization, batch order, augmentation).
        role: ``"surrogate"``, ``"target"`` or ``"validation"``.
    """

    name: str
    recipe: str
    seed: int
    role: str


#: The models, in training order (the validation model last: it is only needed for BO).
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("sur_vit_s0", "vit_tiny_c10", 0, "surrogate"),
    ModelSpec("sur_vit_s1", "vit_tiny_c10", 1, "surrogate"),
    ModelSpec("sur_deit_s2", "deit_tiny_c10", 2, "surrogate"),
    ModelSpec("tgt_vit_s100", "vit_tiny_c10", 100, "target"),
    ModelSpec("tgt_resnet20_s100", "resnet20_c10", 100, "target"),
    ModelSpec("val_deit_s200", "deit_tiny_c10", 200, "validation"),
)

#: Ablations of ViT-EnsembleAttack: row name -> switches turned off.
ABLATIONS: dict[str, dict[str, Any]] = {
    "VEA w/o head drop": {"head_drop": False},
    "VEA w/o score scale": {"score_scale": False},
    "VEA w/o MLP mix": {"mlp_mix": False},
    "VEA w/o reweighting": {"reweight": False},
    "VEA w/o step enlargement": {"step_scale": 1.0},
}


#: CWA rows beside the default (issue 15): label -> switches away from the authors' code.
CWA_VARIANTS: dict[str, dict[str, Any]] = {
    "before issue 15": {"carry_inner_momentum": False, "reverse_logits": "ensemble"},
    "inner momentum reset": {"carry_inner_momentum": False},
    "mean reverse logits": {"reverse_logits": "ensemble"},
    "batch outer norm": {"outer_norm": "batch"},
}


# --------------------------------------------------------------------------- metrics


def success_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
    """Transfer success rate: among examples predicted correctly when clean, the fraction now wrong.

    Args:
        clean_pred: Target's predictions on the clean images ``[N]``.
        adv_pred: Target's predictions on the adversarial images ``[N]``.
        y: True labels ``[N]``.

    Returns:
        ``(rate, fooled, correct)``: the rate (0.0 when the target gets nothing right), the number
        of fooled examples and the number of clean-correct examples.
    """
    if not (clean_pred.shape == adv_pred.shape == y.shape):
        raise ValueError(f"shapes differ: {tuple(clean_pred.shape)}, {tuple(adv_pred.shape)}, {tuple(y.shape)}")
    correct = clean_pred == y
    n_correct = int(correct.sum())
    fooled = int((correct & (adv_pred != y)).sum())
    return (fooled / n_correct if n_correct else 0.0), fooled, n_correct


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Top-1 predictions of ``model`` on float images ``x`` (the core's forward-only predict)."""
    return evaluation.predict(model, x, batch_size=batch_size).argmax(-1)


def eval_split(y_test: torch.Tensor, n_eval: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the evaluation images and of a disjoint validation split, both from the test set.

    Args:
        y_test: Labels of the whole test split.
        n_eval: Number of evaluation images (``subset_indices(y, n_eval, seed)``).
        n_val: Number of validation images, drawn from the remaining ones.
        seed: Seed of both choices.

    Returns:
        ``(eval_idx, val_idx)``, sorted and disjoint.
    """
    eval_idx = data.subset_indices(y_test, n_eval, seed=seed)
    rest = torch.ones(len(y_test), dtype=torch.bool)
    rest[eval_idx] = False
    pool = rest.nonzero().flatten()
    g = torch.Generator().manual_seed(seed + 1)
    val_idx = pool[torch.randperm(len(pool), generator=g)[:n_val]].sort().values
    return eval_idx, val_idx


# --------------------------------------------------------------------------- stage 1: training


def train_models(args: argparse.Namespace, specs: Sequence[ModelSpec]) -> dict[str, dict[str, Any]]:
    """Train (or load) every model in ``specs``; return ``{name: record}`` with test accuracy.

    Args:
        args: Parsed command line (``work_dir``, ``train_n``, ``epochs``, ``vit_lr``, ...).
        specs: Models to train.
    """
    work = Path(args.work_dir)
    xtr, ytr = data.load_uint8("cifar10", "train", progress=True)
    idx = data.subset_indices(ytr, args.train_n, seed=0)
    xtr, ytr = xtr[idx], ytr[idx]
    xte, yte = data.load_uint8("cifar10", "test")
    ds = data.info("cifar10")
    records: dict[str, dict[str, Any]] = {}
    for spec in specs:
        r = get_recipe(spec.recipe)
        changes: dict[str, Any] = {"epochs": args.epochs, "seed": spec.seed}
        if r.config.optimizer == "adamw" and args.vit_lr is not None:
            changes["lr"] = args.vit_lr
        cfg = r.config.replace(**changes)
        stem = work / spec.name
        if stem.with_suffix(".json").is_file():
            m = load_trained(stem, spec)
            rec = m.checkpoint or {}
            if rec.get("recipe") == cfg.to_dict() and rec.get("extra", {}).get("train_n") == args.train_n:
                log.info("%s: already trained (%s)", spec.name, stem)
                records[spec.name] = {**rec.get("metrics", {}), "recipe": spec.recipe, "role": spec.role,
                                      "seed": spec.seed}
                continue
            log.warning("%s: checkpoint has other settings; retraining", spec.name)
        torch.manual_seed(cfg.seed)
        m = models.create(r.arch, num_classes=10, mean=ds.mean, std=ds.std, **r.arch_kwargs)
        res = train_classifier(m, xtr, ytr, cfg, device="cpu", state_dir=work / f"{spec.name}.state",
                               progress=not args.quiet, desc=spec.name)
        acc = accuracy(m, xte, yte)
        metrics = {"test_acc": acc, "train_seconds": res.seconds, "images_per_second": res.images_per_second,
                   "train_n": len(xtr), "epochs": cfg.epochs, "final_train_loss": res.history[-1]["loss"],
                   "final_train_acc": res.history[-1].get("train_acc")}
        models.save_checkpoint(m, stem, dataset="cifar10-jpeg", recipe=cfg.to_dict(), metrics=metrics,
                               extra={"train_n": args.train_n, "role": spec.role, "recipe_name": spec.recipe})
        log.info("%s: test acc %.4f after %.0f s", spec.name, acc, res.seconds)
        records[spec.name] = {**metrics, "recipe": spec.recipe, "role": spec.role, "seed": spec.seed}
    return records


def load_trained(stem: Path, spec: ModelSpec) -> nn.Module:
    """Load one trained checkpoint (eval mode, CPU), with its sidecar record as ``checkpoint``.

    ``models.load_checkpoint`` refuses records whose architecture options are outside its
    allow-list of safe keywords, which (since the checkpoint hardening of issue 14) lacks the tiny
    ViTs' ``embed_dim``, ``depth`` and ``num_heads``. Those records were written by this script, so
    on that refusal the model is rebuilt from its recipe here (this file's code, not the record's),
    and the weights are checked against the sha256 the record holds before they are loaded.
    """
    from robust_ens.errors import CheckpointError

    try:
        return models.load_checkpoint(stem).eval()
    except CheckpointError as err:
        if "not accepted by architecture" not in str(err):
            raise
    from safetensors.torch import load_file

    from robust_ens.models.checkpoint import sha256_file

    record = json.loads(stem.with_suffix(".json").read_text())
    weights = stem.with_suffix(".safetensors")
    if record.get("sha256") and sha256_file(weights) != record["sha256"]:
        raise RuntimeError(f"sha256 mismatch for {weights}")
    r = get_recipe(spec.recipe)
    ds = data.info("cifar10")
    m = models.create(r.arch, num_classes=10, mean=ds.mean, std=ds.std, **r.arch_kwargs)
    m.load_state_dict(load_file(str(weights)))
    m.checkpoint = record
    return m.eval()


def load_models(work: Path, specs: Sequence[ModelSpec]) -> dict[str, nn.Module]:
    """Load the trained checkpoints of ``specs`` (eval mode, CPU)."""
    return {s.name: load_trained(work / s.name, s) for s in specs}


# --------------------------------------------------------------------------- stage 2: Bayesian optimization


def run_bo(
    args: argparse.Namespace, surrogate: Ensemble, val_model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor
) -> dict[str, Any]:
    """Optimize ``(p_h, s, lam)`` per surrogate on the validation split; cached as ``bo.json``."""
    path = Path(args.work_dir) / "bo.json"
    space = {**SEARCH_SPACE, "s": tuple(args.s_range)}
    settings: dict[str, Any] = {"n_trials": args.bo_trials, "n_val": len(x_val), "eps": args.bo_eps,
                                "seed": args.seed, "copies": args.copies}
    if space != SEARCH_SPACE:  # recorded only when changed, so caches of default runs stay valid
        settings["search_space"] = {k: list(v) for k, v in space.items()}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("settings") == settings:
            log.info("BO: cached %s", path)
            return dict(cached)
    eps = args.bo_eps / 255
    base = ViTEnsembleAttack(eps=eps, alpha=eps / 10, steps=args.steps, decay=1.0, copies=args.copies)
    t0 = time.perf_counter()
    res = optimize_augmentation(base, surrogate, val_model, x_val, y_val, n_trials=args.bo_trials, seed=args.seed,
                                attack_seed=args.seed, batch_size=args.batch_size, search_space=space)
    out = {"settings": settings, "seconds": time.perf_counter() - t0, **res.to_dict()}
    path.write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------- stage 3: attacks


def attack_rows(eps: float, params: list[dict[str, float] | None] | None, copies: int) -> dict[str, Attack]:
    """The attack of every table row at ``eps`` (10 steps, alpha eps/10, MI decay 1 unless noted)."""
    a = eps / 10
    common = {"eps": eps, "steps": 10, "decay": 1.0}
    vea = ViTEnsembleAttack(alpha=a, copies=copies, params=params, **common)
    rows: dict[str, Attack] = {
        "MI-FGSM-Ens": create_attack("mifgsm", alpha=a, **common),
        "MI-FGSM-Ens (alpha 2eps/10)": create_attack("mifgsm", alpha=2 * a, **common),
        "CWA": create_attack("cwa", alpha=a, **common),
        "CWA (alpha eps/5, paper)": create_attack("cwa", alpha=None, **common),
        "ViT-EnsembleAttack (full)": vea,
    }
    # CWA as this package ran it before issue 15 (inner momentum reset every outer step, reverse
    # step on the mean logits), and each of the two corrections alone (issue 15's fidelity check)
    rows.update({f"{name}, {label}": create_attack("cwa", alpha=alpha, **common, **switches)
                 for name, alpha in (("CWA", a), ("CWA (alpha eps/5, paper)", None))
                 for label, switches in CWA_VARIANTS.items()})
    for name, off in ABLATIONS.items():
        rows[name] = vea.replace(**off)
    if params is not None:  # how much the Bayesian-optimized parameters matter
        rows["VEA with DEFAULT_PARAMS (no BO)"] = vea.replace(params=None)
    return rows


def run_row(
    name: str,
    attack: Attack,
    surrogate: Ensemble,
    targets: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    clean: dict[str, torch.Tensor],
    *,
    seed: int,
    batch_size: int,
    quiet: bool,
) -> dict[str, Any]:
    """Attack ``x`` in batches, transfer to every target, and measure cost.

    Returns:
        A JSON-ready record: success rate per target (and on the surrogate ensemble itself), the
        attack's config, its passes per example and seconds per example.
    """
    from tqdm.auto import tqdm

    advs, fwd, bwd, secs = [], 0.0, 0.0, 0.0
    for i in tqdm(range(0, len(x), batch_size), desc=name, disable=quiet, leave=False):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        res = attack(surrogate, xb, yb, seed=seed + i)
        advs.append(res.x_adv)
        fwd += res.cost.forward * len(xb)
        bwd += res.cost.backward * len(xb)
        secs += res.cost.seconds
    adv = torch.cat(advs)
    linf = float((adv - x).abs().max())
    out: dict[str, Any] = {"row": name, "attack": attack.config(), "linf": linf,
                           "forward_per_example": fwd / len(x), "backward_per_example": bwd / len(x),
                           "seconds_per_example": secs / len(x), "targets": {}}
    for tname, model in {"surrogate_ensemble": surrogate, **targets}.items():
        rate, fooled, correct = success_rate(clean[tname], predict(model, adv), y)
        out["targets"][tname] = {"success_rate": rate, "fooled": fooled, "clean_correct": correct}
    return out


# --------------------------------------------------------------------------- report


def render_markdown(result: dict[str, Any]) -> str:
    """A markdown report of ``result`` (models, the success-rate table per eps, cost)."""
    lines = ["# ViT-EnsembleAttack transfer on cifar10-jpeg (tiny ViT surrogates)", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    p = result["protocol"]
    lines += [
        f"Generated by `experiments/vit_transfer.py` ({result['provenance']['command']}).",
        "",
        f"{p['n_eval']} test images (subset seed {p['subset_seed']}), {p['steps']} iterations, alpha = eps/10 "
        "(unless noted), MI decay 1.0, Linf. Success rate = among the images the target classifies correctly "
        "when clean, the fraction misclassified after the attack. Surrogates: "
        + ", ".join(p["surrogates"]) + f". Augmentation parameters: {p['params_source']}.",
        "",
        "## Models",
        "",
        "| model | recipe | role | seed | train images x epochs | test acc (10,000) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rec in result["models"].items():
        lines.append(f"| {name} | {rec['recipe']} | {rec['role']} | {rec['seed']} | {rec['train_n']} x "
                     f"{rec['epochs']} | {rec['test_acc']:.3f} | {rec['train_seconds']:.0f} |")
    tnames = list(p["targets"])
    head = " | ".join(f"{t} ({p['eval_clean_correct'][t]} clean-correct)" for t in tnames)
    for eps_key, rows in result["results"].items():
        if not rows:
            continue
        lines += ["", f"## eps = {eps_key}", "",
                  f"| attack | {head} | surrogate ens. (white-box) | fwd+bwd / example | s / example |",
                  "|---|" + "---|" * (len(tnames) + 3)]
        for row in rows:
            rates = " | ".join(f"{100 * row['targets'][t]['success_rate']:.1f}%" for t in tnames)
            wb = 100 * row["targets"]["surrogate_ensemble"]["success_rate"]
            passes = row["forward_per_example"] + row["backward_per_example"]
            lines.append(f"| {row['row']} | {rates} | {wb:.1f}% | {passes:.0f} | {row['seconds_per_example']:.3f} |")
        ses = []
        for t in tnames:
            n = p["eval_clean_correct"][t]
            worst = max(math.sqrt(r["targets"][t]["success_rate"] * (1 - r["targets"][t]["success_rate"]) / n)
                        for r in rows)
            ses.append(f"{t} {100 * worst:.1f} points")
        lines += ["", "One binomial standard error of a rate (largest over the rows): " + ", ".join(ses)
                  + "; differences between rows smaller than about twice that are within noise."]
    bo = result.get("bo")
    if bo:
        lines += ["", "## Bayesian optimization", "",
                  f"optuna TPE, {bo['settings']['n_trials']} trials per surrogate, {bo['settings']['n_val']} "
                  f"validation images (test split, disjoint from the evaluation images), eps "
                  f"{bo['settings']['eps']}/255, validation model val_deit_s200, {bo['seconds']:.0f} s; search "
                  "ranges " + ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in
                                        bo["settings"].get("search_space", SEARCH_SPACE).items()) + ".", "",
                  "| surrogate | p_h | s | lam | best val. success (this surrogate alone) | all augmentations off (3-member ensemble) |", "|---|---|---|---|---|---|"]
        for k, (prm, best) in enumerate(zip(bo["params"], bo["best_values"], strict=False)):
            if prm is not None:
                lines.append(f"| {p['surrogates'][k]} | {prm['p_h']:.3f} | {prm['s']:.3f} | {prm['lam']:.3f} | "
                             f"{100 * best:.1f}% | {100 * bo['baseline']:.1f}% |")
    lines += ["", f"Device: {result['provenance']['device']}; seconds are wall time on that machine, which "
              "other work may have shared, so compare them within this table only.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--work-dir", default="runs/vit_transfer", help="checkpoints and caches (resumable)")
    ap.add_argument("--stage", choices=("train", "bo", "eval", "all"), default="all")
    ap.add_argument("--train-n", type=int, default=28000, help="training images (same subset for every model)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--vit-lr", type=float, default=None, help="override the ViT recipes' AdamW lr")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--n-val", type=int, default=256)
    ap.add_argument("--eps", type=int, nargs="+", default=[8, 16], help="in 1/255")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--copies", type=int, default=3, help="augmented copies K per surrogate")
    ap.add_argument("--bo-trials", type=int, default=20, help="trials per surrogate; 0: DEFAULT_PARAMS, no BO")
    ap.add_argument("--s-range", type=float, nargs=2, default=list(SEARCH_SPACE["s"]), metavar=("LOW", "HIGH"),
                    help="search range of the attention score scale s (default: bayesopt.SEARCH_SPACE's)")
    ap.add_argument("--bo-eps", type=int, default=8, help="eps (1/255) at which BO scores trials")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "vit_transfer.json"))
    ap.add_argument("--out-md", default=str(HERE / "results" / "vit_transfer.md"))
    ap.add_argument("--rows", nargs="+", default=["*"], metavar="PATTERN",
                    help="run only the table rows whose name matches one of these fnmatch patterns")
    ap.add_argument("--cached-only", action="store_true",
                    help="report only rows already cached in the work dir (runs no attack)")
    ap.add_argument("--note", default="", help="a paragraph put under the report's title (e.g. what was reduced)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the requested stages; return the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # the validation model serves only Bayesian optimization: without BO it is not trained
    specs = [s for s in MODELS if args.bo_trials > 0 or s.role != "validation"]
    records = train_models(args, specs)
    if args.stage == "train":
        return 0
    nets = load_models(work, specs)
    sur_names = [s.name for s in MODELS if s.role == "surrogate"]
    tgt_names = [s.name for s in MODELS if s.role == "target"]
    surrogate = Ensemble([nets[n] for n in sur_names], precision="fp32")
    targets = {n: nets[n] for n in tgt_names}

    xte, yte = data.load("cifar10", "test")
    eval_idx, val_idx = eval_split(yte, args.n_eval, args.n_val, args.seed)
    x, y = xte[eval_idx], yte[eval_idx]

    bo: dict[str, Any] | None = None
    params: list[dict[str, float] | None] | None = None
    if args.bo_trials > 0:
        val_model = nets[next(s.name for s in MODELS if s.role == "validation")]
        bo = run_bo(args, surrogate, val_model, xte[val_idx], yte[val_idx])
        params = bo["params"]
    if args.stage == "bo":
        return 0

    clean = {n: predict(m, x) for n, m in {"surrogate_ensemble": surrogate, **targets}.items()}
    rows_dir = work / "rows"
    rows_dir.mkdir(exist_ok=True)
    # Rows run in the order of the first --rows pattern they match, each at every eps before the
    # next row, so an interrupted run has finished the rows named first (each row is cached).
    # The report lists them per eps in that order. The numbers do not depend on the order.
    per_eps = {e: attack_rows(e / 255, params, args.copies) for e in args.eps}
    names = [n for n in per_eps[args.eps[0]] if any(fnmatch.fnmatchcase(n, pat) for pat in args.rows)]
    names.sort(key=lambda n: next(i for i, pat in enumerate(args.rows) if fnmatch.fnmatchcase(n, pat)))
    results: dict[str, list[dict[str, Any]]] = {f"{e}/255": [] for e in args.eps}
    for name in names:
        for e in args.eps:
            atk = per_eps[e][name]
            key = "".join(c if c.isalnum() else "_" for c in name) + f"_eps{e}"
            path = rows_dir / f"{key}.json"
            if path.is_file():
                row = json.loads(path.read_text())
                # compare as JSON (tuples in the config come back as lists)
                if row.get("attack") == json.loads(json.dumps(atk.config())) and row.get("n") == len(x):
                    results[f"{e}/255"].append(row)
                    continue
            if args.cached_only:
                log.info("eps %d/255: %s not cached; left out (--cached-only)", e, name)
                continue
            log.info("eps %d/255: %s", e, name)
            row = run_row(name, atk, surrogate, targets, x, y, clean, seed=args.seed, batch_size=args.batch_size,
                          quiet=args.quiet)
            row["n"] = len(x)
            path.write_text(json.dumps(row, indent=1))
            log.info("  %s", {t: round(v["success_rate"], 3) for t, v in row["targets"].items()})
            results[f"{e}/255"].append(row)

    result = {
        "protocol": {
            "dataset": "cifar10-jpeg", "n_eval": len(x), "subset_seed": args.seed, "steps": args.steps,
            "eps": [f"{e}/255" for e in args.eps], "surrogates": sur_names, "targets": tgt_names,
            "copies": args.copies, "batch_size": args.batch_size, "attack_seed": args.seed,
            "eval_clean_correct": {t: int((clean[t] == y).sum()) for t in tgt_names},
            "params_source": (f"Bayesian optimization ({args.bo_trials} trials per surrogate)" if params is not None
                              else "DEFAULT_PARAMS (no BO)"),
            "params": params,
            "success_rate_definition": "fooled / clean-correct on the target",
        },
        "note": args.note,
        "models": records,
        "bo": bo,
        "results": results,
        "provenance": {
            "command": "python experiments/vit_transfer.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)",
            "seconds_this_invocation": time.perf_counter() - t_start,
        },
    }
    if bo is not None:
        result["bo"] = {k: v for k, v in bo.items() if k != "trials"} | {"n_trials_run": len(bo.get("trials", []))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out_md).write_text(render_markdown(result))
    log.info("wrote %s and %s", args.out, args.out_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

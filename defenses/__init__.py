"""Ensemble defenses (``robust_ens.defenses``): baseline, ADP, GAL, DVERGE, TRS, and diversity metrics.

Every defense is a joint loss plugged into the one training loop (:func:`robust_ens.train.fit`),
with hyperparameters in a declarative recipe file per defense (``recipes/<name>.toml``, tiers
``small`` and ``full``).

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

import copy
import dataclasses
import json
import logging
import time
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens.defenses import adp as adp  # noqa: F401  (registers)
from robust_ens.defenses import baseline as baseline  # noqa: F401
from robust_ens.defenses import dverge as dverge  # noqa: F401
from robust_ens.defenses import gal as gal  # noqa: F401
from robust_ens.defenses import trs as trs  # noqa: F401
from robust_ens.defenses.base import DEFENSES, DefenseSpec, check_members, make_params, param_names
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
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy
from robust_ens.overrides import coerce
from robust_ens.train import TrainConfig, check_train_n, fit, locks_out_dir, train_classifier

log = logging.getLogger(__name__)

TIERS = ("small", "full")
DEFAULT_TIER = "full"
_TOP_KEYS = ("train_n", "eval_n")
_SECTIONS = ("train", "defense", "warmup")
PACKED_KEY = "packed"  # [tier.packed]: settings for packed:<arch> ensembles (shared weights)
MEAN_OF_MEMBERS = "mean_of_members"  # [tier.packed] flag, see member_mean_config

__all__ = [
    "DEFENSES",
    "DefenseSpec",
    "TransferMatrix",
    "check_layers",
    "correct_by_all",
    "distill_features",
    "feature_layers",
    "get_features",
    "gradient_cosine",
    "linf_pgd",
    "defense_plan",
    "list_defenses",
    "load_recipe",
    "member_mean_config",
    "mean_gradient_cosine",
    "resolve_recipe",
    "train_defense",
    "transferability_matrix",
    "vulnerability_overlap",
]


def list_defenses(pattern: str = "*") -> list[str]:
    """Names of the registered defenses matching an fnmatch ``pattern``."""
    return DEFENSES.list(pattern)


def load_meta(name: str) -> dict[str, Any]:
    """The ``[meta]`` table of defense ``name``'s recipe file (``paper``, ...); empty when it has none."""
    DEFENSES.get(name)
    text = resources.files("robust_ens.defenses").joinpath("recipes", f"{name}.toml").read_text()
    meta: dict[str, Any] = tomllib.loads(text).get("meta", {})
    return meta


def load_recipe(name: str, tier: str = DEFAULT_TIER) -> dict[str, Any]:
    """The recipe of defense ``name`` at ``tier`` from ``recipes/<name>.toml``.

    Returns:
        ``{"train": {...TrainConfig fields}, "defense": {...}, "warmup": {...}, "train_n": ..., "eval_n": ...}``
        (missing sections are empty dicts, missing sizes ``None``).

    Raises:
        RobustEnsError: unknown defense or tier (listing the known ones).
    """
    DEFENSES.get(name)
    text = resources.files("robust_ens.defenses").joinpath("recipes", f"{name}.toml").read_text()
    doc = tomllib.loads(text)
    tiers = [k for k in doc if k != "meta"]
    if tier not in doc or tier == "meta":
        raise RobustEnsError(f"unknown recipe tier {tier!r} for defense {name!r}; known tiers: {', '.join(tiers)}")
    return _normalize(doc[tier], f"{name}:{tier}")


def _normalize(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {s: dict(raw.get(s, {})) for s in _SECTIONS}
    for k in _TOP_KEYS:
        out[k] = raw.get(k)
    out[PACKED_KEY] = _flatten_packed(raw.get(PACKED_KEY, {}), where)
    unknown = set(raw) - set(_SECTIONS) - set(_TOP_KEYS) - {PACKED_KEY}
    if unknown:
        raise RobustEnsError(
            f"recipe {where} has unknown key(s) {sorted(unknown)}; a tier holds {list(_TOP_KEYS)} and the "
            f"tables {[*_SECTIONS, PACKED_KEY]}"
        )
    return out


def _flatten_packed(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``[tier.packed]`` (and ``[tier.packed.warmup]``) as flat override names (``lr``, ``warmup.lr``)."""
    flat: dict[str, Any] = {}
    for k, v in dict(table).items():
        if isinstance(v, Mapping):
            if k != "warmup":
                raise RobustEnsError(f"recipe {where}: [packed] may hold options and a [packed.warmup] table, not {k!r}")
            flat.update({f"warmup.{wk}": wv for wk, wv in v.items()})
        else:
            flat[k] = v
    return flat


def resolve_recipe(
    name: str, recipe: str | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
    *, packed: bool = False,
) -> dict[str, Any]:
    """Recipe tier (name, dict or ``None`` = ``"full"``) with flat ``overrides`` routed to their section.

    An override key is dotted, naming its section: ``train.<field>`` (a
    :class:`~robust_ens.train.TrainConfig` field of the defense's training), ``warmup.<field>``
    (the baseline warm-up of DVERGE/TRS), ``defense.<field>`` (a hyperparameter of the defense);
    or ``train_n``/``eval_n``; or a bare name that exists in exactly one of ``train`` and
    ``defense`` (a bare training option never reaches the warm-up). A bare name that is both
    (DVERGE's ``momentum``) is refused with both candidates; unknown keys raise listing all.

    With ``packed=True`` (a ``packed:<arch>`` ensemble) the tier's ``[tier.packed]`` table is
    applied first, as overrides in the same form, then ``overrides``: the settings where the
    papers' independent-member recipes do not carry over to shared weights.
    """
    spec = DEFENSES.get(name)
    if recipe is None or isinstance(recipe, str):
        tier = recipe or DEFAULT_TIER
        rec = load_recipe(name, tier)
        rec["tier"] = tier
    elif isinstance(recipe, Mapping):
        body = {k: v for k, v in recipe.items() if k != "tier"}
        if any(k in body for k in _SECTIONS):
            rec = _normalize(body, f"{name}:<dict>")
        else:  # flat option names, routed like overrides
            rec = _route(spec, {}, body, f"{name}:<dict>")
        rec["tier"] = str(recipe.get("tier", "custom"))
    else:
        raise RobustEnsError(f"recipe must be a tier name {TIERS}, a dict or None, got {type(recipe).__name__}")
    if packed and rec.get(PACKED_KEY):
        table = dict(rec[PACKED_KEY])
        mean = bool(table.pop(MEAN_OF_MEMBERS, False))
        rec = _route(spec, rec, table, f"{name}:{rec.get('tier')}.packed")
        rec["packed_applied"] = True
        rec[MEAN_OF_MEMBERS] = mean
    if overrides:
        rec = _route(spec, rec, overrides, "overrides")
    return rec


def _route(spec: DefenseSpec, base: Mapping[str, Any], flat: Mapping[str, Any], where: str) -> dict[str, Any]:
    rec: dict[str, Any] = {s: dict(base.get(s, {})) for s in _SECTIONS}
    for k in (*_TOP_KEYS, "tier", PACKED_KEY, "packed_applied", MEAN_OF_MEMBERS):
        if k in base:
            rec[k] = base[k]
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    defense_fields = param_names(spec.params_cls)
    known = {"train": train_fields, "warmup": train_fields, "defense": defense_fields}
    for key, value in flat.items():
        section, dot, option = key.partition(".")
        if dot:  # dotted: train.<option>, defense.<option>, warmup.<option>
            if section not in known or option not in known[section]:
                raise RobustEnsError(
                    f"unknown option {key!r} in {where} for defense {spec.name!r}; dotted options are "
                    f"train.<{'|'.join(train_fields)}>, warmup.<the same>, defense.<{'|'.join(defense_fields)}>"
                )
            rec[section][option] = value
        elif key in _TOP_KEYS:
            rec[key] = value
        else:
            homes = [s for s in ("train", "defense") if key in known[s]]
            if len(homes) > 1:
                raise RobustEnsError(
                    f"option {key!r} is ambiguous for defense {spec.name!r}: it is both a training option "
                    f"(train.{key}) and a {spec.name} hyperparameter (defense.{key}); pass train.{key}=... or "
                    f"defense.{key}=..."
                )
            if not homes:
                raise RobustEnsError(
                    f"unknown option {key!r} in {where} for defense {spec.name!r}; training options: {train_fields}; "
                    f"{spec.name} hyperparameters: {defense_fields}; also {list(_TOP_KEYS)}, and train.<option>, "
                    "defense.<option>, warmup.<training option>"
                )
            rec[homes[0]][key] = value
    for k in _TOP_KEYS:
        rec.setdefault(k, None)
    return rec


def member_mean_config(cfg: TrainConfig, n_members: int) -> TrainConfig:
    """Rates for shared weights: train on the *mean* of the members' losses, as TabM does.

    Every defense's loss sums over members, so a weight shared by M members gets M members'
    gradients. Optimizing ``sum / M`` at the recipe's rate and weight decay is the same as
    optimizing the sum with SGD at ``lr / M`` and ``weight_decay * M``, and with Adam (invariant
    to the loss scale; coupled L2) at ``lr`` and ``weight_decay * M``; AdamW's decoupled decay
    needs no change. ``[tier.packed] mean_of_members = true`` turns this on.
    """
    m = max(1, int(n_members))
    if cfg.optimizer == "sgd":
        return cfg.replace(lr=cfg.lr / m, weight_decay=cfg.weight_decay * m)
    if cfg.optimizer == "adam":
        return cfg.replace(weight_decay=cfg.weight_decay * m)
    return cfg


def _apply_run_options(rec: dict[str, Any], spec: DefenseSpec, epochs: Any, train_n: Any,
                       warmup_epochs: Any) -> None:
    """Apply ``epochs`` / ``train_n`` / ``warmup_epochs`` (0 disables the warm-up) to a recipe."""
    for label, value in (("epochs", epochs), ("train_n", train_n), ("warmup_epochs", warmup_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                  or (value == 0 and label != "warmup_epochs")):
            raise RobustEnsError(f"{label} must be a positive integer, got {value!r}")
    if epochs is not None:
        rec["train"]["epochs"] = int(epochs)
    if train_n is not None:
        rec["train_n"] = int(train_n)
        rec["train_n_given"] = True
    if warmup_epochs is not None:
        if warmup_epochs and not spec.warm_start:
            raise RobustEnsError(f"defense {spec.name!r} has no baseline warm-up; drop warmup_epochs (--warmup-epochs)")
        if warmup_epochs == 0:
            rec["warmup"] = {}
        else:
            if not rec["warmup"]:
                raise RobustEnsError(
                    f"the {rec.get('tier')} tier of {spec.name!r} has no warm-up to size; give its settings as "
                    "warmup.<option> overrides (e.g. warmup.lr=0.1) together with warmup_epochs"
                )
            rec["warmup"]["epochs"] = int(warmup_epochs)


def defense_plan(
    name: str,
    *,
    arch: str = "resnet20",
    n_members: int = 3,
    dataset: str = "cifar10",
    train_n: int | None = None,
    epochs: int | None = None,
    warmup_epochs: int | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    init: Any = None,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """One line saying what :func:`train_defense` with these arguments will run, before it runs.

    Example:
        >>> from robust_ens.defenses import defense_plan
        >>> defense_plan("dverge", recipe="small", epochs=1, dataset="digits")  # doctest: +ELLIPSIS
        'dverge (small tier) on digits, train_n=2000, 3 x resnet20: baseline warm-up 8 epochs (warmup.epochs / --warmup-epochs), then 1 dverge epoch(s) (--epochs)...'
    """
    spec = DEFENSES.get(name)
    rec = resolve_recipe(name, recipe, overrides, packed=_is_packed(arch, init))
    _apply_run_options(rec, spec, epochs, train_n, warmup_epochs)
    cfg = _train_config(rec["train"], 0)
    head = f"{name} ({rec.get('tier')} tier) on {dataset}, train_n={rec.get('train_n') or 'all'}, " \
           f"{n_members} x {arch if init is None else 'given members'}: "
    steps = []
    if spec.warm_start and rec["warmup"] and init is None:
        w = _train_config(rec["warmup"], 0)
        steps.append(f"baseline warm-up {w.epochs} epochs (warmup.epochs / --warmup-epochs)")
    elif spec.warm_start and init is None:
        steps.append("no baseline warm-up")
    steps.append(f"{cfg.epochs} {name} epoch(s) (--epochs)")
    return head + ", then ".join(steps) + f"; {cfg.optimizer} lr {cfg.lr}, batch {cfg.batch_size}"


def _train_config(values: Mapping[str, Any], seed: int) -> TrainConfig:
    vals = dict(values)
    try:
        return TrainConfig(**{**vals, "seed": seed})
    except TypeError as err:
        known = [f.name for f in dataclasses.fields(TrainConfig)]
        raise RobustEnsError(f"bad training option in recipe ({err}); known: {known}") from err


def _init_members(init: Any, n_members: int, device: str | torch.device | None) -> list[nn.Module]:
    from robust_ens import models

    if isinstance(init, Ensemble):
        members = list(init.members)
    elif isinstance(init, str | Path):
        folder = Path(init)
        stems = sorted(folder.glob("member*.json"), key=lambda p: int(p.stem.removeprefix("member") or 0))
        if not stems:
            raise RobustEnsError(f"init folder {folder} holds no member<i>.json checkpoints")
        members = [models.load_checkpoint(s, device=device) for s in stems]
    elif isinstance(init, Sequence):
        members = list(init)
    else:
        raise RobustEnsError(
            f"init must be an Ensemble, a list of modules or a folder of member<i> checkpoints, got {type(init).__name__}"
        )
    if len(members) != n_members:
        raise RobustEnsError(f"init holds {len(members)} members but n_members={n_members}")
    for i, m in enumerate(members):
        if not isinstance(m, nn.Module):
            raise RobustEnsError(f"init member {i} must be an nn.Module, got {type(m).__name__}")
    # Never train the caller's modules in place.
    return [copy.deepcopy(m) for m in members]


def _train_independent(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, seed: int,
    device: Any, state_root: Path | None, progress: bool, stop_after_epoch: int | None, desc: str,
) -> list[dict[str, float]]:
    rows = []
    for i, m in enumerate(members):
        res = train_classifier(
            m, x, y, cfg.replace(seed=seed + i), device=device,
            state_dir=(state_root / f"member{i}.state") if state_root is not None else None,
            progress=progress, stop_after_epoch=stop_after_epoch, desc=f"{desc}[{i}]",
        )
        rows.append({"seconds": res.seconds, "epochs_done": len(res.history),
                     "final_loss": res.history[-1]["loss"] if res.history else float("nan")})
    return rows


def _record(name: str, rec: Mapping[str, Any], cfg: TrainConfig, params: Any, arch: str, n_members: int,
            dataset: str, init: Any) -> dict[str, Any]:
    return {
        "defense": name, "tier": rec.get("tier"), "arch": arch, "n_members": n_members, "dataset": dataset,
        "train_n": rec.get("train_n"), "train": cfg.to_dict(), "defense_params": dataclasses.asdict(params),
        "warmup": dict(rec.get("warmup") or {}), "init": "given" if init is not None else None,
    }


@locks_out_dir
def train_defense(
    name: str,
    *,
    arch: str = "resnet20",
    n_members: int = 3,
    dataset: str = "cifar10",
    train_n: int | None = None,
    epochs: int | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    init: Ensemble | Sequence[nn.Module] | str | Path | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    out_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    stop_after_epoch: int | None = None,
    warmup_epochs: int | None = None,
) -> Ensemble:
    """Train an ensemble with a registered defense and return it (members in eval mode).

    Args:
        name: A name from :func:`list_defenses`.
        arch: Member architecture (registry name or ``timm:<name>``) when ``init`` is ``None``.
        n_members: Ensemble size (>= 2 for defenses with pairwise losses).
        dataset: ``"cifar10"``, ``"digits"`` or ``"imagefolder:<path>"``.
        train_n: Train on a deterministic subset of this many images (default: the recipe's, else all).
        epochs: Override the recipe's number of epochs.
        recipe: Tier name (``"small"``, ``"full"``; ``None`` = ``"full"``, the papers' settings) or a
            dict with ``train``/``defense``/``warmup`` tables or flat option names.
        init: Starting members: an :class:`~robust_ens.Ensemble`, a list of modules (copied, never
            changed in place) or a folder of ``member<i>`` checkpoints. ``None`` builds fresh members
            (seeds ``seed + i``); DVERGE then first trains them as a baseline for the recipe's
            ``warmup`` epochs, standing in for the authors' pre-trained baseline members.
        seed: Seed of member ``0`` and of the joint training loop.
        device: Training device (default: CUDA if available).
        progress: Progress bars.
        out_dir: Folder for resumable state and final checkpoints (``member<i>.safetensors`` +
            sidecars, ``summary.json``). A finished run with the same record is loaded, not retrained;
            an interrupted one resumes from its last finished epoch.
        overrides: Flat options routed to the recipe (see :func:`resolve_recipe`).
        data_root: Extra folder to search for the dataset.
        arch_kwargs: Extra architecture keyword arguments for fresh members.
        stop_after_epoch: Stop the defense phase after this many epochs (simulates an interruption;
            no final checkpoints are written then).
        warmup_epochs: Epochs of the baseline warm-up (DVERGE, TRS small) instead of the recipe's;
            ``0`` skips it. ``epochs`` never changes the warm-up; :func:`defense_plan` says what
            will run.

    Returns:
        The trained :class:`~robust_ens.Ensemble` (``combine="logits"``); ``ensemble.history``
        holds the per-epoch training history and ``ensemble.record`` the recipe record.

    Raises:
        RobustEnsError: unknown defense, tier or option; too few members; bad ``init``.
    """
    from robust_ens import data, models

    spec = DEFENSES.get(name)
    check_members(name, n_members, spec.min_members)
    packed = _is_packed(arch, init)
    rec = resolve_recipe(name, recipe, overrides, packed=packed)
    _apply_run_options(rec, spec, epochs, train_n, warmup_epochs)
    if epochs is not None and warmup_epochs is None and spec.warm_start and rec["warmup"] and init is None:
        log.warning("%s: epochs=%d sets the defense's epochs; the baseline warm-up still runs its recipe's %s "
                    "epochs first (warmup_epochs= / --warmup-epochs to change it, 0 to skip it)",
                    name, epochs, rec["warmup"].get("epochs", "?"))
    cfg = _train_config(rec["train"], seed)
    member_mean = packed and bool(rec.get(MEAN_OF_MEMBERS))
    if member_mean:
        cfg = member_mean_config(cfg, n_members)
    params = make_params(spec.params_cls, coerce(spec.params_cls, rec["defense"], f"{name} hyperparameter"), name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir) if out_dir is not None else None
    record = _record(name, rec, cfg, params, arch if init is None else "init", n_members, dataset, init)
    if packed:
        record["packed_recipe"] = bool(rec.get("packed_applied"))
        record["mean_of_members"] = member_mean

    ds = data.info(dataset, data_root)
    if out is not None:
        done = _load_finished(out, n_members, record, dev, packed)
        if done is not None:
            log.info("%s ensemble already trained in %s; loading it", name, out)
            return done

    xtr, ytr = data.load_uint8(dataset, "train", root=data_root, progress=progress)
    check_train_n(rec.get("train_n"), len(ytr), dataset,
                  "" if rec.get("train_n_given") else f" (from the {rec.get('tier')} tier of {name})")
    idx = data.subset_indices(ytr, rec.get("train_n"), seed=seed)
    xtr, ytr = xtr[idx], ytr[idx]

    t0 = time.perf_counter()
    packed_ens: Ensemble | None = None  # a PackedEnsemble: one network, members are views of it
    warmup_seconds = 0.0
    if init is None:
        kw = dict(spec.arch_kwargs(params)) if spec.arch_kwargs else {}
        base = arch[len(_PACKED) :] if packed else arch
        family = models.MODELS.meta(base).get("family") if base in models.MODELS else None
        if kw and family != "cifar_resnet":
            log.warning("%s: architecture %r has no %s option; building it without", name, arch, sorted(kw))
            kw = {}
        kw.update(arch_kwargs or {})
        members: list[nn.Module] = []
        if packed:
            torch.manual_seed(seed)
            packed_ens = models.create(arch, members=n_members, num_classes=ds.num_classes,  # type: ignore[assignment]
                                       in_chans=ds.in_chans, mean=ds.mean, std=ds.std, **kw)
            assert packed_ens is not None
            members = list(packed_ens.members)
        else:
            for i in range(n_members):
                torch.manual_seed(seed + i)
                members.append(models.create(arch, num_classes=ds.num_classes, in_chans=ds.in_chans,
                                             mean=ds.mean, std=ds.std, **kw))
        if spec.warm_start and rec["warmup"]:
            wcfg = _train_config(rec["warmup"], seed)
            if member_mean:
                wcfg = member_mean_config(wcfg, n_members)
            log.info("%s: baseline warm-up of %d epochs before the defense (init=None)", name, wcfg.epochs)
            tw = time.perf_counter()
            if packed_ens is not None:  # shared weights: the members' joint cross-entropy, one loop
                base_spec = DEFENSES.get("baseline")
                fit({"packed": packed_ens}, base_spec.make_step(members, base_spec.params_cls(), wcfg), xtr, ytr, wcfg,
                    device=dev, state_dir=(out / "warmup") if out is not None else None, progress=progress,
                    desc=f"{name}-warmup")
            else:
                _train_independent(
                    members, xtr, ytr, wcfg, seed=seed, device=dev,
                    state_root=(out / "warmup") if out is not None else None, progress=progress,
                    stop_after_epoch=None, desc=f"{name}-warmup",
                )
            warmup_seconds = time.perf_counter() - tw
    elif packed:
        packed_ens = _init_packed(init, n_members)
        members = list(packed_ens.members)
    else:
        members = _init_members(init, n_members, dev)

    history: list[dict[str, float]]
    td = time.perf_counter()
    if spec.independent and packed_ens is None:
        rows = _train_independent(
            members, xtr, ytr, cfg, seed=seed, device=dev, state_root=out, progress=progress,
            stop_after_epoch=stop_after_epoch, desc=name,
        )
        history = rows
        finished = all(r["epochs_done"] == cfg.epochs for r in rows)
        epochs_run = sum(r["epochs_done"] for r in rows) / max(1, len(rows))
    else:
        # A packed ensemble is one module (its members share the weights, so they must not
        # enter the optimizer M times); the defense's step sees its members like any others.
        modules: dict[str, nn.Module] = (
            {"packed": packed_ens} if packed_ens is not None else {f"member{i}": m for i, m in enumerate(members)}
        )
        step = spec.make_step(members, params, cfg)
        res = fit(
            modules, step, xtr, ytr, cfg, device=dev,
            state_dir=(out / "state") if out is not None else None, progress=progress,
            stop_after_epoch=stop_after_epoch, desc=name,
        )
        history = res.history
        finished = len(res.history) == cfg.epochs
        epochs_run = float(len(res.history) - (res.resumed_from or 0))
    defense_seconds = time.perf_counter() - td
    seconds = time.perf_counter() - t0
    for m in members:
        m.eval()
    ens = packed_ens if packed_ens is not None else Ensemble(members)
    ens.history = history  # type: ignore[assignment]
    ens.record = record  # type: ignore[assignment]
    if not finished:
        log.info("%s stopped after epoch %s (interrupted); rerun with the same out_dir to resume", name, stop_after_epoch)
        return ens

    xte, yte = data.load_uint8(dataset, "test", root=data_root)
    eval_n = rec.get("eval_n")
    if eval_n is not None and eval_n < len(yte):
        tidx = data.subset_indices(yte, int(eval_n), seed=0)
        xte, yte = xte[tidx], yte[tidx]
    member_acc = [accuracy(m, xte, yte) for m in members]
    fp32 = _fp32_view(ens, members)
    ens_acc = accuracy(fp32, xte, yte, device=dev)
    metrics = {"test_acc": ens_acc, "member_test_acc": member_acc, "eval_n": len(yte), "train_n": len(ytr),
               "train_seconds": seconds, **_cost(fp32, xte, dev, defense_seconds, epochs_run, warmup_seconds, rec)}
    log.info("%s: ensemble test acc %.4f, members %s (%d test images, %.0f s)", name, ens_acc,
             [round(a, 4) for a in member_acc], len(yte), seconds)
    ens.metrics = metrics  # type: ignore[assignment]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if packed_ens is not None:
            models.save_checkpoint(packed_ens, out / "packed", dataset=dataset, recipe=record, metrics=metrics)
        else:
            for i, m in enumerate(members):
                models.save_checkpoint(m, out / f"member{i}", dataset=dataset, recipe=record,
                                       metrics={**metrics, "member": i, "member_test_acc": member_acc[i]})
        (out / "summary.json").write_text(json.dumps(
            {"record": record, "metrics": metrics, "history": history}, indent=2, default=float) + "\n")
    return ens


_PACKED = "packed:"


def _is_packed(arch: str, init: Any) -> bool:
    """Whether ``train_defense`` trains a packed ensemble (``packed:<arch>``, or one given as ``init``)."""
    from robust_ens.models.packed import PackedEnsemble

    if init is not None:
        return isinstance(init, PackedEnsemble) or (
            isinstance(init, str | Path) and (Path(init) / "packed.json").is_file()
        )
    return arch.startswith(_PACKED)


def _init_packed(init: Any, n_members: int) -> Ensemble:
    from robust_ens import models
    from robust_ens.models.packed import PackedEnsemble

    ens = init if isinstance(init, PackedEnsemble) else models.load_checkpoint(Path(init) / "packed")
    if not isinstance(ens, PackedEnsemble) or len(ens) != n_members:
        raise RobustEnsError(f"init holds a packed ensemble of {len(ens)} members but n_members={n_members}")  # type: ignore[arg-type]
    return copy.deepcopy(ens)  # never train the caller's module in place


def _load_finished(out: Path, n_members: int, record: Mapping[str, Any], dev: torch.device,
                   packed: bool) -> Ensemble | None:
    """The ensemble of a finished run in ``out`` with the same record, else ``None``."""
    from robust_ens import models

    ens: Ensemble
    if packed:
        if not (out / "packed.json").is_file():
            return None
        loaded = models.load_checkpoint(out / "packed", device=dev)
        if not isinstance(loaded, Ensemble) or loaded.checkpoint.get("recipe") != record:  # type: ignore[union-attr]
            return None
        ens = loaded
    else:
        if not all((out / f"member{i}.json").is_file() for i in range(n_members)):
            return None
        members = [models.load_checkpoint(out / f"member{i}", device=dev) for i in range(n_members)]
        if not all(m.checkpoint.get("recipe") == record for m in members):  # type: ignore[union-attr]
            return None
        ens = Ensemble(members)
    ens.record = dict(record)  # type: ignore[assignment]
    return ens


def _fp32_view(ens: Ensemble, members: Sequence[nn.Module]) -> Ensemble:
    """The trained ensemble evaluated in fp32 (a packed one keeps its batched forward)."""
    if type(ens) is Ensemble:
        return Ensemble(members, precision="fp32")
    view = copy.copy(ens)  # shallow: same modules and weights, its own precision attribute
    view.precision = "fp32"
    return view


def _cost(ens: Ensemble, x: torch.Tensor, dev: torch.device, defense_seconds: float, epochs: float,
          warmup_seconds: float, rec: Mapping[str, Any]) -> dict[str, Any]:
    """What the ensemble costs: parameters, training seconds per epoch, inference seconds per example."""
    n_params = sum(p.numel() for p in ens.parameters())  # a shared weight counts once
    xb = x[:256].to(dev).float().div(255)
    with torch.no_grad():
        ens(xb[:8])  # warm-up (allocations, kernel choice)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        ens(xb)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        per_example = (time.perf_counter() - t) / max(1, len(xb))
    warm = rec.get("warmup") or {}
    return {
        "parameters": n_params,
        "train_seconds_per_epoch": defense_seconds / epochs if epochs else None,
        "warmup_seconds": warmup_seconds,
        "warmup_seconds_per_epoch": warmup_seconds / warm["epochs"] if warmup_seconds and warm.get("epochs") else None,
        "inference_seconds_per_example": per_example,
        "inference_precision": "fp32",
        "inference_batch": len(xb),
        "device": str(dev),
    }

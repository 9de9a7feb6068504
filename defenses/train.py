"""The one home of ensemble training: :func:`train_defense` (every registered defense, the plain
deep ensemble included), :func:`train_ensemble` (plain members from a
:class:`~robust_ens.train.TrainConfig`: the baseline defense) and ``train`` tables
(:func:`parse_train_table`, a protocol's or zoo entry's surrogate).

Every run goes the same way: resolve the recipe (:mod:`robust_ens.defenses.recipe_registry`), load
the training subset, build the members (fresh, given, or a finished run in ``out_dir``), the
baseline warm-up where a defense starts from trained members, the defense's epochs on the one loop
(:func:`robust_ens.train.fit`), then evaluation and checkpoints (:mod:`robust_ens.defenses.members`).

Example:
    >>> from robust_ens.defenses.train import parse_train_table
    >>> plan = parse_train_table({"arch": "small_cnn", "members": 2, "epochs": 1}, "digits", what="example")
    >>> plan.arch, plan.members, plan.config.epochs, plan.config.optimizer
    ('small_cnn', 2, 1, 'adam')
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens import data
from robust_ens.defenses.base import DEFENSES, DefenseSpec, check_members, make_params
from robust_ens.defenses.members import (
    evaluate,
    fresh_members,
    init_members,
    init_packed,
    is_packed,
    load_finished,
    load_plain_members,
    plain_member_metrics,
    save_outputs,
    save_plain_members,
)
from robust_ens.defenses.recipe_registry import (
    MEAN_OF_MEMBERS,
    default_recipe,
    list_recipes,
    model_recipe,
    resolve_recipe,
)
from robust_ens.device import resolve_device
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.overrides import coerce
from robust_ens.train import TrainConfig, fit, locks_out_dir, train_classifier

log = logging.getLogger(__name__)


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
    rec = resolve_recipe(name, recipe, overrides, packed=is_packed(arch, init))
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


def _train_independent(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, seed: int,
    device: Any, state_root: Path | None, progress: bool, stop_after_epoch: int | None, desc: str,
) -> list[dict[str, float]]:
    """Train each member on its own with cross-entropy (member ``i`` under seed ``seed + i``)."""
    rows = []
    for i, m in enumerate(members):
        res = train_classifier(
            m, x, y, cfg.replace(seed=seed + i), device=device,
            state_dir=(state_root / f"member{i}.state") if state_root is not None else None,
            progress=progress, stop_after_epoch=stop_after_epoch, desc=f"{desc}[{i}]",
        )
        rows.append({"seconds": res.seconds, "epochs_done": len(res.history),
                     "final_loss": res.history[-1]["loss"] if res.history else float("nan"),
                     "images_per_second": res.images_per_second})
    return rows


@dataclass
class _Plan:
    """A resolved defense run: the recipe, the configs and what the checkpoints record."""

    spec: DefenseSpec
    rec: dict[str, Any]
    cfg: TrainConfig
    params: Any
    packed: bool
    member_mean: bool
    record: dict[str, Any]
    plain: bool = False  # plain members (train_ensemble): each checkpoint records the member's own recipe

    def member_recipes(self, seed: int, n_members: int) -> list[dict[str, Any]]:
        """What plain member ``i``'s checkpoint records as its recipe: its TrainConfig (seed ``seed + i``)."""
        return [self.cfg.replace(seed=seed + i).to_dict() for i in range(n_members)]


def _plan(name: str, arch: str, n_members: int, dataset: str, train_n: int | None, epochs: int | None,
          recipe: str | Mapping[str, Any] | None, init: Any, seed: int, overrides: Mapping[str, Any] | None,
          warmup_epochs: int | None) -> _Plan:
    """Resolve the recipe of a :func:`train_defense` call (raising on any bad option before work starts)."""
    spec = DEFENSES.get(name)
    check_members(name, n_members, spec.min_members)
    packed = is_packed(arch, init)
    rec = resolve_recipe(name, recipe, overrides, packed=packed)
    _apply_run_options(rec, spec, epochs, train_n, warmup_epochs)
    if epochs is not None and warmup_epochs is None and spec.warm_start and rec["warmup"] and init is None:
        log.warning("%s: epochs=%d sets the defense's epochs; the baseline warm-up still runs its recipe's %s "
                    "epochs first (warmup_epochs= / --warmup-epochs to change it, 0 to skip it)",
                    name, epochs, rec["warmup"].get("epochs", "?"))
    cfg = _train_config(rec["train"], seed)
    if rec["warmup"]:
        _train_config(rec["warmup"], seed)  # refused now, not after the data loads
    member_mean = packed and bool(rec.get(MEAN_OF_MEMBERS))
    if member_mean:
        cfg = member_mean_config(cfg, n_members)
    params = make_params(spec.params_cls, coerce(spec.params_cls, rec["defense"], f"{name} hyperparameter"), name)
    record = {
        "defense": name, "tier": rec.get("tier"), "arch": arch if init is None else "init", "n_members": n_members,
        "dataset": dataset, "train_n": rec.get("train_n"), "train": cfg.to_dict(),
        "defense_params": dataclasses.asdict(params), "warmup": dict(rec.get("warmup") or {}),
        "init": "given" if init is not None else None,
    }
    if packed:
        record["packed_recipe"] = bool(rec.get("packed_applied"))
        record["mean_of_members"] = member_mean
    return _Plan(spec, rec, cfg, params, packed, member_mean, record)


def _warm_up(plan: _Plan, members: list[nn.Module], packed_ens: Ensemble | None, x: torch.Tensor, y: torch.Tensor,
             seed: int, dev: torch.device, out: Path | None, progress: bool) -> float:
    """The baseline warm-up of a defense that starts from trained members; returns its seconds."""
    name = plan.spec.name
    wcfg = _train_config(plan.rec["warmup"], seed)
    if plan.member_mean:
        wcfg = member_mean_config(wcfg, len(members))
    log.info("%s: baseline warm-up of %d epochs before the defense (init=None)", name, wcfg.epochs)
    tw = time.perf_counter()
    state = (out / "warmup") if out is not None else None
    if packed_ens is not None:  # shared weights: the members' joint cross-entropy, one loop
        base_spec = DEFENSES.get("baseline")
        fit({"packed": packed_ens}, base_spec.make_step(members, base_spec.params_cls(), wcfg), x, y, wcfg,
            device=dev, state_dir=state, progress=progress, desc=f"{name}-warmup")
    else:
        _train_independent(members, x, y, wcfg, seed=seed, device=dev, state_root=state, progress=progress,
                           stop_after_epoch=None, desc=f"{name}-warmup")
    return time.perf_counter() - tw


def _train_phase(plan: _Plan, members: list[nn.Module], packed_ens: Ensemble | None, x: torch.Tensor,
                 y: torch.Tensor, seed: int, dev: torch.device, out: Path | None, progress: bool,
                 stop_after_epoch: int | None) -> tuple[list[dict[str, float]], bool, float]:
    """The defense's own epochs; returns ``(history, finished, epochs run in this call)``."""
    name, cfg = plan.spec.name, plan.cfg
    if plan.spec.independent and packed_ens is None:
        rows = _train_independent(members, x, y, cfg, seed=seed, device=dev, state_root=out, progress=progress,
                                  stop_after_epoch=stop_after_epoch, desc=name)
        finished = all(r["epochs_done"] == cfg.epochs for r in rows)
        return rows, finished, sum(r["epochs_done"] for r in rows) / max(1, len(rows))
    # A packed ensemble is one module (its members share the weights, so they must not
    # enter the optimizer M times); the defense's step sees its members like any others.
    modules: dict[str, nn.Module] = (
        {"packed": packed_ens} if packed_ens is not None else {f"member{i}": m for i, m in enumerate(members)}
    )
    step = plan.spec.make_step(members, plan.params, cfg)
    res = fit(modules, step, x, y, cfg, device=dev, state_dir=(out / "state") if out is not None else None,
              progress=progress, stop_after_epoch=stop_after_epoch, desc=name)
    return res.history, len(res.history) == cfg.epochs, float(len(res.history) - (res.resumed_from or 0))


def check_train_n(train_n: Any, available: int, dataset: str, source: str = "") -> None:
    """Refuse a training-subset size the dataset cannot provide, saying which option to pass."""
    if train_n is None:
        return
    if isinstance(train_n, bool) or not isinstance(train_n, int) or train_n < 1:
        raise RobustEnsError(f"train_n (--train-n) must be a positive integer, got {train_n!r}")
    if train_n > available:
        raise RobustEnsError(
            f"train_n={train_n}{source} exceeds the {available} images in the train split of {dataset}; "
            f"pass --train-n {available} (train_n={available}) or fewer"
        )


def _train_subset(name: str, rec: Mapping[str, Any], dataset: str, data_root: str | Path | None, seed: int,
                  progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's deterministic training subset (uint8 images, labels)."""
    xtr, ytr = data.load_uint8(dataset, "train", root=data_root, progress=progress)
    check_train_n(rec.get("train_n"), len(ytr), dataset,
                  "" if rec.get("train_n_given") else f" (from the {rec.get('tier')} tier of {name})")
    idx = data.subset_indices(ytr, rec.get("train_n"), seed=seed)
    return xtr[idx], ytr[idx]


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
        name: A name from :func:`~robust_ens.defenses.list_defenses`.
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
        overrides: Flat options routed to the recipe (see
            :func:`~robust_ens.defenses.recipe_registry.resolve_recipe`).
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
    plan = _plan(name, arch, n_members, dataset, train_n, epochs, recipe, init, seed, overrides, warmup_epochs)
    return _run(plan, arch=arch, n_members=n_members, dataset=dataset, init=init, seed=seed, device=device,
                progress=progress, out_dir=out_dir, data_root=data_root, arch_kwargs=arch_kwargs,
                stop_after_epoch=stop_after_epoch)


def _run(plan: _Plan, *, arch: str, n_members: int, dataset: str, init: Any, seed: int,
         device: str | torch.device | None, progress: bool, out_dir: str | Path | None,
         data_root: str | Path | None, arch_kwargs: Mapping[str, Any] | None, stop_after_epoch: int | None) -> Ensemble:
    """Run a resolved plan (see :func:`train_defense` for the arguments)."""
    name = plan.spec.name
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    ds = data.info(dataset, data_root)
    if out is not None:
        done = _load_done(plan, out, n_members, seed, dev)
        if done is not None:
            log.info("%s ensemble already trained in %s; loading it", name, out)
            return done
    xtr, ytr = _train_subset(name, plan.rec, dataset, data_root, seed, progress)

    t0 = time.perf_counter()
    packed_ens: Ensemble | None = None  # a PackedEnsemble: one network, members are views of it
    warmup_seconds = 0.0
    if init is None:
        members, packed_ens = fresh_members(plan.spec, plan.params, arch, n_members, ds, seed, plan.packed, arch_kwargs)
        if plan.spec.warm_start and plan.rec["warmup"]:
            warmup_seconds = _warm_up(plan, members, packed_ens, xtr, ytr, seed, dev, out, progress)
    elif plan.packed:
        packed_ens = init_packed(init, n_members)
        members = list(packed_ens.members)
    else:
        members = init_members(init, n_members, dev)

    td = time.perf_counter()
    history, finished, epochs_run = _train_phase(plan, members, packed_ens, xtr, ytr, seed, dev, out, progress,
                                                 stop_after_epoch)
    defense_seconds = time.perf_counter() - td
    seconds = time.perf_counter() - t0
    for m in members:
        m.eval()
    ens = packed_ens if packed_ens is not None else Ensemble(members)
    ens.history = history  # type: ignore[assignment]
    ens.record = plan.record  # type: ignore[assignment]
    if not finished:
        log.info("%s stopped after epoch %s (interrupted); rerun with the same out_dir to resume", name, stop_after_epoch)
        return ens
    if plan.plain:
        member_metrics = plain_member_metrics(members, history, dataset, data_root, len(ytr))
        ens.member_metrics = member_metrics
        if out is not None:
            save_plain_members(out, members, dataset, plan.member_recipes(seed, n_members), member_metrics)
        return ens
    times = {"seconds": seconds, "defense_seconds": defense_seconds, "epochs_run": epochs_run,
             "warmup_seconds": warmup_seconds}
    metrics = evaluate(name, ens, members, dataset, data_root, plan.rec, dev, times, len(ytr))
    ens.metrics = metrics
    if out is not None:
        save_outputs(out, members, packed_ens, dataset, plan.record, metrics, history)
    return ens


def _load_done(plan: _Plan, out: Path, n_members: int, seed: int, dev: torch.device) -> Ensemble | None:
    """The finished run in ``out`` with the same recipe, else ``None``."""
    if not plan.plain:
        return load_finished(out, n_members, plan.record, dev, plan.packed)
    found = load_plain_members(out, plan.member_recipes(seed, n_members), dev)
    if found is None:
        return None
    ens = Ensemble(found[0])
    ens.record = dict(plan.record)  # type: ignore[assignment]
    ens.member_metrics = found[1]
    return ens


# --------------------------------------------------------------------------- plain members


@locks_out_dir
def train_ensemble(
    arch: str = "resnet20",
    n_members: int = 3,
    dataset: str = "cifar10",
    *,
    epochs: int | None = None,
    train_n: int | None = None,
    recipe: TrainConfig | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    data_root: str | Path | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """Train ``n_members`` independent members (seeds ``seed, seed+1, ...``) and checkpoint each.

    This is :func:`train_defense` for the ``"baseline"`` defense with ``recipe`` as its training
    configuration (default: the dataset's,
    :func:`~robust_ens.defenses.recipe_registry.default_recipe`); only the checkpoints differ:
    each member's records its own configuration (seed ``seed + i``) and its own metrics, and no
    ``summary.json`` is written. A finished run in ``out_dir`` is loaded instead of retrained; a
    member interrupted mid-training resumes from its last finished epoch.

    Returns:
        ``(members, records)``: trained models in eval mode and, per member, its metrics
        (``test_acc`` on the whole test split, ``train_seconds``, ``images_per_second``,
        ``train_n``, ``final_train_loss``).
    """
    if n_members < 1:
        raise RobustEnsError(f"n_members must be >= 1, got {n_members}")
    cfg = recipe or default_recipe(dataset)
    if epochs is not None:
        cfg = cfg.replace(epochs=epochs)
    tier = {"tier": "custom", "train": {k: v for k, v in cfg.to_dict().items() if k != "seed"}}
    plan = dataclasses.replace(_plan("baseline", arch, n_members, dataset, train_n, None, tier, None, seed, None, None),
                               plain=True)
    ens = _run(plan, arch=arch, n_members=n_members, dataset=dataset, init=None, seed=seed, device=device,
               progress=progress, out_dir=out_dir, data_root=data_root, arch_kwargs=arch_kwargs, stop_after_epoch=None)
    records: list[dict[str, Any]] = ens.member_metrics  # type: ignore[assignment]  # set by _run
    return list(ens.members), records


@dataclass(frozen=True)
class TrainTable:
    """A ``train = {...}`` table of a protocol surrogate or a zoo entry, resolved into what
    :func:`train_ensemble` takes.

    Attributes:
        arch: Member architecture.
        members: Ensemble size (seeds ``seed, seed+1, ...``).
        seed: Seed of member 0.
        train_n: Training images (``None``: the whole training set).
        arch_kwargs: Extra architecture arguments.
        config: The training recipe.
    """

    arch: str
    members: int
    seed: int
    train_n: int | None
    arch_kwargs: dict[str, Any]
    config: TrainConfig

    def train(self, dataset: str, *, out_dir: str | Path | None = None, device: str | torch.device | None = None,
              progress: bool = True) -> tuple[list[nn.Module], list[dict[str, Any]]]:
        """Train (or load, when ``out_dir`` holds them) the members; see :func:`train_ensemble`."""
        return train_ensemble(self.arch, self.members, dataset, recipe=self.config, seed=self.seed,
                              train_n=self.train_n, out_dir=out_dir, device=device, progress=progress,
                              arch_kwargs=self.arch_kwargs)


def parse_train_table(table: Mapping[str, Any], dataset: str, *, what: str) -> TrainTable:
    """Read a ``train`` table: ``arch`` or ``recipe`` (a model recipe of
    :mod:`robust_ens.defenses.recipe_registry`), ``members``, ``seed``, ``train_n``, ``epochs``,
    ``arch_kwargs``; any other key overrides a :class:`~robust_ens.train.TrainConfig` field of the
    dataset's default recipe (or the named recipe's).

    Args:
        table: The table.
        dataset: Whose default recipe applies.
        what: What the table belongs to, for error messages (``"surrogate 'r20x2-small'"``).

    Raises:
        RobustEnsError: an unknown recipe or a bad setting (one line naming ``what``).
    """
    spec = dict(table)
    members = int(spec.pop("members", 1))
    seed = int(spec.pop("seed", 0))
    train_n = spec.pop("train_n", None)
    arch_kwargs = dict(spec.pop("arch_kwargs", {}))
    cfg: TrainConfig
    if "recipe" in spec:
        rname = spec.pop("recipe")
        known = list_recipes(kind="model")
        if rname not in known:
            raise RobustEnsError(f"{what}: unknown recipe {rname!r}; known: {', '.join(known)}")
        r = model_recipe(rname)
        assert r.arch is not None  # a model recipe names its architecture
        arch, arch_kwargs, cfg = r.arch, {**r.arch_kwargs, **arch_kwargs}, r.config
    else:
        arch = spec.pop("arch", "resnet20")
        cfg = default_recipe(dataset)
    try:
        cfg = cfg.replace(**spec)
    except (TypeError, RobustEnsError) as err:
        raise RobustEnsError(f"{what}: bad train setting: {err}") from None
    return TrainTable(arch, members, seed, None if train_n is None else int(train_n), arch_kwargs, cfg)


__all__ = [
    "TrainTable",
    "check_train_n",
    "defense_plan",
    "member_mean_config",
    "parse_train_table",
    "train_defense",
    "train_ensemble",
]

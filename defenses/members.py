"""The members of a defense run (:func:`robust_ens.defenses.train.train_defense`): where they come
from (fresh, given as ``init``, or a finished run in ``out_dir``) and where they go (evaluation,
checkpoints and ``summary.json``)."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens import data, models
from robust_ens.atomic import atomic_write_text
from robust_ens.defenses.base import DefenseSpec
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy
from robust_ens.models.packed import PackedEnsemble

log = logging.getLogger(__name__)

PACKED_PREFIX = "packed:"
SUMMARY = "summary.json"


def is_packed(arch: str, init: Any) -> bool:
    """Whether ``train_defense`` trains a packed ensemble (``packed:<arch>``, or one given as ``init``)."""
    if init is not None:
        return isinstance(init, PackedEnsemble) or (
            isinstance(init, str | Path) and (Path(init) / "packed.json").is_file()
        )
    return arch.startswith(PACKED_PREFIX)


def fresh_members(
    spec: DefenseSpec, params: Any, arch: str, n_members: int, ds: data.DatasetInfo, seed: int, packed: bool,
    arch_kwargs: Mapping[str, Any] | None,
) -> tuple[list[nn.Module], Ensemble | None]:
    """New members (member ``i`` initialized under seed ``seed + i``; a packed ensemble under ``seed``).

    Returns:
        ``(members, packed_ensemble)``; the second is ``None`` unless ``packed``.
    """
    kw = dict(spec.arch_kwargs(params)) if spec.arch_kwargs else {}
    base = arch[len(PACKED_PREFIX) :] if packed else arch
    family = models.MODELS.meta(base).get("family") if base in models.MODELS else None
    if kw and family != "cifar_resnet":
        log.warning("%s: architecture %r has no %s option; building it without", spec.name, arch, sorted(kw))
        kw = {}
    kw.update(arch_kwargs or {})
    if packed:
        torch.manual_seed(seed)
        packed_ens: Ensemble = models.create(arch, members=n_members, num_classes=ds.num_classes,  # type: ignore[assignment]
                                             in_chans=ds.in_chans, mean=ds.mean, std=ds.std, **kw)
        return list(packed_ens.members), packed_ens
    members: list[nn.Module] = []
    for i in range(n_members):
        torch.manual_seed(seed + i)
        members.append(models.create(arch, num_classes=ds.num_classes, in_chans=ds.in_chans,
                                     mean=ds.mean, std=ds.std, **kw))
    return members, None


def init_members(init: Any, n_members: int, device: str | torch.device | None) -> list[nn.Module]:
    """Copies of the given starting members (an Ensemble, a list of modules or a checkpoint folder)."""
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


def init_packed(init: Any, n_members: int) -> Ensemble:
    """A copy of the given packed ensemble (a :class:`PackedEnsemble` or a folder holding ``packed``)."""
    ens = init if isinstance(init, PackedEnsemble) else models.load_checkpoint(Path(init) / "packed")
    if not isinstance(ens, PackedEnsemble) or len(ens) != n_members:
        raise RobustEnsError(f"init holds a packed ensemble of {len(ens)} members but n_members={n_members}")  # type: ignore[arg-type]
    return copy.deepcopy(ens)  # never train the caller's module in place


def load_finished(out: Path, n_members: int, record: Mapping[str, Any], dev: torch.device,
                  packed: bool) -> Ensemble | None:
    """The ensemble of a finished run in ``out`` with the same record, else ``None``."""
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


def fp32_view(ens: Ensemble, members: Sequence[nn.Module]) -> Ensemble:
    """The trained ensemble evaluated in fp32 (a packed one keeps its batched forward)."""
    if type(ens) is Ensemble:
        return Ensemble(members, precision="fp32")
    return ens.with_precision("fp32")  # a view: same modules and weights


def evaluate(
    name: str, ens: Ensemble, members: Sequence[nn.Module], dataset: str, data_root: str | Path | None,
    rec: Mapping[str, Any], dev: torch.device, times: Mapping[str, float], train_n: int,
) -> dict[str, Any]:
    """Test accuracy of the ensemble (fp32) and of each member, with the run's cost.

    Args:
        name: The defense (for the log line).
        ens: The trained ensemble.
        members: Its members.
        dataset: Dataset name.
        data_root: Extra folder to search for it.
        rec: The resolved recipe (``eval_n``, ``warmup``).
        dev: Device.
        times: ``seconds`` (whole run), ``defense_seconds``, ``epochs_run`` and ``warmup_seconds``.
        train_n: Training images used.

    Returns:
        The metrics recorded in the checkpoints and ``summary.json``.
    """
    xte, yte = data.load_uint8(dataset, "test", root=data_root)
    eval_n = rec.get("eval_n")
    if eval_n is not None and eval_n < len(yte):
        tidx = data.subset_indices(yte, int(eval_n), seed=0)
        xte, yte = xte[tidx], yte[tidx]
    member_acc = [accuracy(m, xte, yte) for m in members]
    fp32 = fp32_view(ens, members)
    ens_acc = accuracy(fp32, xte, yte, device=dev)
    seconds = times["seconds"]
    metrics = {"test_acc": ens_acc, "member_test_acc": member_acc, "eval_n": len(yte), "train_n": train_n,
               "train_seconds": seconds, **_cost(fp32, xte, dev, times["defense_seconds"], times["epochs_run"],
                                                 times["warmup_seconds"], rec)}
    log.info("%s: ensemble test acc %.4f, members %s (%d test images, %.0f s)", name, ens_acc,
             [round(a, 4) for a in member_acc], len(yte), seconds)
    return metrics


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


def save_outputs(
    out: Path, members: Sequence[nn.Module], packed_ens: Ensemble | None, dataset: str,
    record: Mapping[str, Any], metrics: Mapping[str, Any], history: list[dict[str, float]],
) -> None:
    """Checkpoints (``packed`` or ``member<i>``, each recording ``record``) and ``summary.json`` of a finished run."""
    out.mkdir(parents=True, exist_ok=True)
    if packed_ens is not None:
        models.save_checkpoint(packed_ens, out / "packed", dataset=dataset, recipe=dict(record), metrics=dict(metrics))
    else:
        for i, m in enumerate(members):
            models.save_checkpoint(m, out / f"member{i}", dataset=dataset, recipe=dict(record),
                                   metrics={**metrics, "member": i, "member_test_acc": metrics["member_test_acc"][i]})
    atomic_write_text(out / SUMMARY, json.dumps(
        {"record": record, "metrics": metrics, "history": history}, indent=2, default=float) + "\n")


# --------------------------------------------------------------------------- plain members' checkpoints
# Plain members (robust_ens.defenses.train.train_ensemble) keep their own format: each member's
# sidecar records its own TrainConfig (``seed + i``) as ``recipe`` and its own metrics.


def load_plain_members(out: Path, recipes: Sequence[Mapping[str, Any]],
                       dev: torch.device) -> tuple[list[nn.Module], list[dict[str, Any]]] | None:
    """The members in ``out`` whose sidecars record ``recipes`` (and their metrics), else ``None``."""
    if not all((out / f"member{i}.json").is_file() for i in range(len(recipes))):
        return None
    members: list[nn.Module] = [models.load_checkpoint(out / f"member{i}", device=dev) for i in range(len(recipes))]
    records: list[dict[str, Any]] = [getattr(m, "checkpoint", {}) for m in members]  # the sidecars
    if not all(rec.get("recipe") == dict(r) for rec, r in zip(records, recipes, strict=True)):
        return None
    return members, [dict(rec.get("metrics", {})) for rec in records]


def plain_member_metrics(members: Sequence[nn.Module], rows: Sequence[Mapping[str, float]], dataset: str,
                         data_root: str | Path | None, train_n: int) -> list[dict[str, Any]]:
    """Per member: accuracy on the whole test split, training seconds and speed, final loss."""
    xte, yte = data.load_uint8(dataset, "test", root=data_root)
    return [{"test_acc": accuracy(m, xte, yte), "train_seconds": row["seconds"],
             "images_per_second": row["images_per_second"], "train_n": train_n, "final_train_loss": row["final_loss"]}
            for m, row in zip(members, rows, strict=True)]


def save_plain_members(out: Path, members: Sequence[nn.Module], dataset: str, recipes: Sequence[Mapping[str, Any]],
                       metrics: Sequence[Mapping[str, Any]]) -> None:
    """Checkpoint each member with its own recipe and metrics."""
    for i, m in enumerate(members):
        models.save_checkpoint(m, out / f"member{i}", dataset=dataset, recipe=dict(recipes[i]), metrics=dict(metrics[i]))

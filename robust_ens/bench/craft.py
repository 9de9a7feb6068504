"""Crafting adversarial sets through the store: the one batch routine the engine and ``robust-ens attack`` share.

``attack_batch`` keys a batch by everything that moves its pixels (see :mod:`.advsets`), reads it
from the store or attacks the surrogate, quantizes to uint8 within the budget and records what
quantization cost on the surrogate. ``craft_set`` runs it over fixed batches (seeds from the
attack seed and the batch index) and ``write_set`` saves a whole set with its record.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robust_ens import __version__
from robust_ens.atomic import atomic_write, atomic_write_text
from robust_ens.attacks import Attack
from robust_ens.bench.advsets import AdvSetStore, StoredSet, enforced_eps
from robust_ens.bench.targets import Target
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import correct


def attack_batch(
    store: AdvSetStore,
    atk: Attack,
    surrogate: Target,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    data_fingerprint: str,
    *,
    device: torch.device,
    target: torch.Tensor | None = None,
    on_cost: Callable[[dict[str, float]], None] | None = None,
) -> StoredSet:
    """One uint8 adversarial batch: from the store, or made on ``surrogate`` and stored."""
    x = x_u8.to(device).float().div_(255)
    yd = y.to(device)
    td = target.to(device) if target is not None else None
    fields = {"attack": atk.config(), "code_version": type(atk).code_version, "surrogate": surrogate.sha256s,
              "eps": atk.eps, "norm": atk.norm, "data": data_fingerprint, "indices": indices.tolist(), "seed": seed,
              "targeted": False if target is None else target.tolist()}
    if atk.norm != "Linf":
        raise RobustEnsError(f"the adversarial-set store holds Linf sets (uint8 within floor(255 eps)); got {atk.norm}")

    def make() -> tuple[torch.Tensor, dict[str, Any]]:
        res = atk(surrogate.module, x, yd, target=td, seed=seed)
        if on_cost is not None:
            on_cost({"seconds": res.cost.seconds, "forward": res.cost.forward * len(y),
                     "backward": res.cost.backward * len(y)})
        return res.x_adv, {"cost": res.cost.as_dict(), "robust_ens": __version__,
                           "surrogate_acc_float": float(correct(surrogate.module, res.x_adv, yd).float().mean())}

    def measure(q: torch.Tensor) -> dict[str, Any]:
        # what quantization cost, measured once per set, on the surrogate it was made on
        return {"surrogate_acc_uint8": float(correct(surrogate.module, q.to(device), yd).float().mean())}

    return store.get_or_make(fields, x_u8, make, atk.eps, measure=measure)


@dataclass
class CraftedSet:
    """A whole adversarial set and what it cost."""

    x_adv: torch.Tensor  # uint8
    labels: torch.Tensor
    indices: torch.Tensor
    target: torch.Tensor | None
    records: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0

    def surrogate_accuracy(self) -> dict[str, float]:
        """Mean over batches (weighted by size) of the surrogate's accuracy on the float and stored sets."""
        n = sum(r["n"] for r in self.records) or 1
        return {k: sum(r[k] * r["n"] for r in self.records) / n for k in ("surrogate_acc_float", "surrogate_acc_uint8")}


def craft_set(
    store: AdvSetStore,
    atk: Attack,
    surrogate: Target,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    data_fingerprint: str,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    targets: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    progress: bool = True,
) -> CraftedSet:
    """Attack fixed batches of ``(x_u8, y)``; batch ``b`` uses seed ``seed + b``.

    Args:
        targets: Optional ``(batch, x float, y) -> target labels`` for a targeted attack.
    """
    from robust_ens import progress as _progress

    xs, ts, recs = [], [], []
    hits = 0
    with _progress.bar(total=len(y), desc=f"attack {atk.config()['name']}", unit="img", enable=progress) as bar:
        for b, i in enumerate(range(0, len(y), batch_size)):
            sl = slice(i, i + batch_size)
            tgt = targets(b, x_u8[sl].to(device).float().div(255), y[sl].to(device)) if targets else None
            got = attack_batch(store, atk, surrogate, x_u8[sl], y[sl], indices[sl], seed + b, data_fingerprint,
                               device=device, target=tgt)
            hits += int(got.hit)
            xs.append(got.x_adv)
            recs.append(got.record)
            if tgt is not None:
                ts.append(tgt.cpu())
            bar.update(len(y[sl]))
    return CraftedSet(torch.cat(xs) if xs else x_u8[:0].clone(), y.clone(), indices.clone(),
                      torch.cat(ts) if ts else None, recs, hits)


def write_set(path: str | Path, crafted: CraftedSet, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (``x_adv`` uint8, ``labels``, ``indices``, ``target``) and ``<path>.json``.

    Both are written through temp files and renamed, so an interrupted write leaves nothing half-written.

    Raises:
        RobustEnsError: when the folder cannot be created or written (one line, naming ``--out``).
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors") if out.suffix not in (".json",) else out.with_suffix(".safetensors")
    side = out.with_suffix(".json")
    tensors = {"x_adv": crafted.x_adv.contiguous(), "labels": crafted.labels.contiguous(),
               "indices": crafted.indices.to(torch.int64).contiguous()}
    if crafted.target is not None:
        tensors["target"] = crafted.target.contiguous()
    try:
        atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "robust-ens adversarial set (uint8)"}))
        atomic_write_text(side, json.dumps(record, indent=2, default=str) + "\n")
    except OSError as err:
        raise RobustEnsError(f"--out {path}: cannot write there ({err.strerror or err}); pick a writable path") from None
    return out, side


def check_writable(path: str | Path) -> None:
    """Fail before any work when ``--out``'s folder cannot be created or written."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, suffix=".tmp")
        os.close(fd)
        Path(tmp).unlink()
    except OSError as err:
        raise RobustEnsError(f"--out {path}: cannot write there ({err.strerror or err}); pick a writable path") from None


def budget_check(x_u8: torch.Tensor, x_adv_u8: torch.Tensor, eps: float) -> dict[str, Any]:
    """The budget measured on the stored uint8 tensors (in 1/255 levels and in [0, 1] units)."""
    d = (x_adv_u8.int() - x_u8.int()).abs()
    levels = int(d.max()) if d.numel() else 0
    return {"eps": eps, "enforced_eps": enforced_eps(eps), "max_linf": levels / 255, "max_change_levels": levels,
            "within_budget": levels / 255 <= eps + 1e-12}

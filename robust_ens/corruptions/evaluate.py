"""Corrupted copies of a dataset, small-image upscaling, and mCE from leaderboard entries.

What the engine's ``corruptions`` task (:mod:`robust_ens.bench.corruptions_task`, the one route
that evaluates a model under corruptions) builds on, and what reads entries of the
``cifar10-corruptions`` suite back:

- :func:`corrupted_set`: the corrupted copy of a uint8 dataset, made in batches with per-example
  seeds and cached as uint8 (``<cache>/corruptions/<preset>/<data fingerprint>/<name>-s<severity>-seed<seed>.npy``),
  so later evaluations of other models cost forward passes only;
- :func:`upscale_factor`, :func:`upscale_images`, :class:`Upscaled`: images below the corruptions'
  32 px are upsampled by an integer factor and the model sees them average-pooled back;
- :func:`result_from_entry`: an entry's accuracy per (corruption, severity), from schema 2's
  corruption cells or from a legacy schema-1 entry's ``acc/<corruption>/<severity>`` metrics
  (schema 1 is read, never written); :func:`corruption_errors`: Hendrycks & Dietterich's (relative)
  mCE of one such result against another.

Example:
    >>> import torch
    >>> from robust_ens.corruptions.evaluate import corrupted_set
    >>> x = (torch.rand(4, 3, 32, 32) * 255).byte()
    >>> torch.equal(corrupted_set(x, "contrast", 1, cache=False, batch_size=3),
    ...             corrupted_set(x, "contrast", 1, cache=False, batch_size=4))
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_ens.corruptions import corrupt
from robust_ens.errors import RobustEnsError

log = logging.getLogger(__name__)

SUITE = "cifar10-corruptions"


def data_fingerprint(x_u8: torch.Tensor) -> str:
    """A short sha256 of a uint8 dataset's bytes and shape (the cache key of its corrupted copies)."""
    h = hashlib.sha256(str(tuple(x_u8.shape)).encode())
    h.update(x_u8.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_path(key: str, preset: str, name: str, severity: int, seed: int) -> Path:
    from robust_ens.data import cache_dir

    return cache_dir() / "corruptions" / preset / key / f"{name}-s{severity}-seed{seed}.npy"


def corrupted_set(
    x_u8: torch.Tensor,
    name: str,
    severity: int,
    *,
    preset: str = "cifar10c",
    seed: int = 0,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    cache: bool = True,
    fingerprint: str | None = None,
) -> torch.Tensor:
    """The corrupted copy (uint8, CPU, same shape) of a uint8 ``[N, C, H, W]`` dataset.

    Example ``i`` uses index ``i`` of the dataset for its random numbers, so the result does not
    depend on ``batch_size``. With ``cache=True`` the copy is read from / written to the cache.

    Args:
        x_u8: The images.
        name: Corruption name (see :func:`~robust_ens.corruptions.list_corruptions`).
        severity: 1..5.
        preset: Corruption parameters.
        seed: Corruption seed.
        batch_size: Images corrupted at once.
        device: Where the corruption runs (default CPU).
        cache: Read and write the uint8 cache.
        fingerprint: The cache key of ``x_u8`` (default :func:`data_fingerprint`).
    """
    if x_u8.dtype != torch.uint8 or x_u8.dim() != 4:
        raise RobustEnsError(f"x_u8 must be a uint8 tensor [N, C, H, W], got {x_u8.dtype} {tuple(x_u8.shape)}")
    path = None
    if cache:
        path = _cache_path(fingerprint or data_fingerprint(x_u8), preset, name, severity, seed)
        if path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.shape == tuple(x_u8.shape) and arr.dtype == np.uint8:
                    return torch.from_numpy(arr)
                log.warning("ignoring cache %s with shape %s", path, arr.shape)
            except (OSError, ValueError) as err:
                log.warning("ignoring unreadable cache %s (%s)", path, err)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty_like(x_u8, device="cpu")
    for s in range(0, x_u8.shape[0], batch_size):
        xb = x_u8[s : s + batch_size].to(dev).float().div_(255.0)
        idx = torch.arange(s, s + xb.shape[0])
        yb = corrupt(xb, name, severity, preset=preset, seed=seed, index=idx)
        out[s : s + xb.shape[0]] = yb.mul_(255.0).add_(0.5).clamp_(0, 255).byte().cpu()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, out.numpy())
        tmp.replace(path)
    return out


# --------------------------------------------------------------------------- small images


class Upscaled(torch.nn.Module):
    """Runs ``model`` on images average-pooled by ``factor`` (undoing an integer upsampling)."""

    def __init__(self, model: torch.nn.Module, factor: int) -> None:
        super().__init__()
        self.model = model
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` on ``avg_pool2d(x, factor)``."""
        return self.model(torch.nn.functional.avg_pool2d(x, self.factor) if self.factor > 1 else x)


def upscale_factor(text: str | int, h: int, w: int) -> int:
    """``"auto"``: the smallest integer factor that brings the shorter side to 32 px (the corruptions' minimum).

    Raises:
        RobustEnsError: for anything but ``"auto"`` or a positive integer.
    """
    if str(text) == "auto":
        side = min(h, w)
        return 1 if side >= 32 else -(-32 // side)
    try:
        k = int(str(text))
    except ValueError as err:
        raise RobustEnsError(f"upscale must be 'auto' or a positive integer, got {text!r}") from err
    if k < 1:
        raise RobustEnsError(f"upscale must be a positive integer, got {k}")
    return k


def upscale_images(x_u8: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinearly upsample a uint8 set by ``factor`` (itself for 1)."""
    if factor <= 1:
        return x_u8
    up = torch.nn.functional.interpolate(x_u8.float(), scale_factor=factor, mode="bilinear", align_corners=False)
    return up.round_().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- entries: reading and mCE


def result_from_entry(entry: Any) -> dict[str, Any]:
    """The ``name`` / ``clean_accuracy`` / ``accuracy`` (``{corruption: {severity: acc}}``) of an entry.

    Args:
        entry: A :class:`~robust_ens.leaderboard.Entry` or legacy
            :class:`~robust_ens.leaderboard.EntryV1`, a dict or a JSON path, of suite
            ``cifar10-corruptions``. Schema 2 gives its corruption cells; a schema-1 entry (read,
            never written) its ``acc/<corruption>/<severity>`` metrics.

    Raises:
        RobustEnsError: when the entry is not of suite ``cifar10-corruptions``.
    """
    from robust_ens import leaderboard as lb

    e = entry if isinstance(entry, lb.Entry | lb.EntryV1) else lb.validate(entry)
    if e.protocol.suite != SUITE:
        raise RobustEnsError(f"entry {e.name!r} is of suite {e.protocol.suite!r}, not {SUITE!r}")
    acc: dict[str, dict[int, float]] = {}
    if isinstance(e, lb.Entry):  # schema 2: one cell per (corruption, severity)
        for c in e.results.corruptions:
            acc.setdefault(c.corruption, {})[int(c.severity)] = float(c.acc)
        return {"name": e.name, "clean_accuracy": e.results.clean.acc, "accuracy": acc,
                "protocol": {"n_examples": e.protocol.n_examples, "seed": e.protocol.seed}}
    for key, value in e.results.metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "acc":
            acc.setdefault(parts[1], {})[int(parts[2])] = float(value)
    return {"name": e.name, "clean_accuracy": e.results.clean_accuracy, "accuracy": acc,
            "protocol": dict(e.protocol.settings, n_examples=e.protocol.n_examples, seed=e.protocol.seed)}


def check_baseline(baseline: Mapping[str, Any], corruptions: Sequence[str], severities: Sequence[int],
                   preset: str) -> None:
    """Refuse a baseline (a :func:`result_from_entry` result) that lacks a (corruption, severity) or used another preset.

    Raises:
        RobustEnsError: naming what is missing.
    """
    missing = [f"{c}@{s}" for c in corruptions for s in severities if s not in baseline["accuracy"].get(c, {})]
    if missing:
        raise RobustEnsError(f"the baseline {baseline['name']!r} has no accuracy for {', '.join(missing[:6])}"
                             f"{' ...' if len(missing) > 6 else ''}; evaluate it on the same corruptions and severities")
    used = baseline["protocol"].get("preset")
    if used not in (None, preset):
        raise RobustEnsError(f"the baseline {baseline['name']!r} used preset {used!r}, not {preset!r}")


def corruption_errors(result: Mapping[str, Any], baseline: Mapping[str, Any], corruptions: Sequence[str]) -> dict[str, Any]:
    """Hendrycks & Dietterich's CE / relative CE per corruption and their means (in %).

    ``CE_c = sum_s E(c, s) / sum_s E_base(c, s)``; relative
    ``CE_c = sum_s (E(c, s) - E_clean) / sum_s (E_base(c, s) - E_base_clean)``; errors are
    ``1 - accuracy``. Both arguments are :func:`result_from_entry` results.
    """
    ce, rce = {}, {}
    e0, b0 = 1 - result["clean_accuracy"], 1 - baseline["clean_accuracy"]
    for c in corruptions:
        if c not in baseline["accuracy"]:
            raise RobustEnsError(f"the baseline has no accuracy for {c!r}; evaluate it on the same corruptions")
        sev = sorted(result["accuracy"][c], key=int)
        bacc = {int(k): v for k, v in baseline["accuracy"][c].items()}
        e = [1 - result["accuracy"][c][s] for s in sev]
        b = [1 - bacc[int(s)] for s in sev]
        ce[c] = sum(e) / sum(b) if sum(b) > 0 else float("nan")
        denom = sum(bi - b0 for bi in b)
        rce[c] = sum(ei - e0 for ei in e) / denom if denom != 0 else float("nan")
    return {
        "CE": ce,
        "relative_CE": rce,
        "mCE": 100.0 * float(np.nanmean(list(ce.values()))) if ce else float("nan"),
        "relative_mCE": 100.0 * float(np.nanmean(list(rce.values()))) if rce else float("nan"),
    }

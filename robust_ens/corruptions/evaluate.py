"""Classification under corruptions (the ``cifar10-corruptions`` suite's evaluation).

:func:`corrupted_set` generates a corrupted copy of a uint8 dataset on the fly, in batches, and
caches it as uint8 (``<cache>/corruptions/<preset>/<data fingerprint>/<name>-s<severity>-seed<seed>.npy``),
so later evaluations of other models cost forward passes only. :func:`evaluate_corruptions`
returns accuracy per corruption and severity, the mean corruption accuracy (RobustBench's
definition: the mean over the 15 common corruptions x 5 severities) and, given a baseline result,
Hendrycks & Dietterich's mCE and relative mCE.

Example:
    >>> import torch
    >>> from robust_ens.corruptions.evaluate import evaluate_corruptions
    >>> x = (torch.rand(8, 3, 32, 32) * 255).byte(); y = torch.zeros(8, dtype=torch.long)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    >>> r = evaluate_corruptions(model, x, y, corruptions=["contrast"], severities=[1], cache=False)
    >>> sorted(r["accuracy"]["contrast"])
    [1]
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_ens.corruptions import corrupt, list_corruptions
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


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


def corruption_errors(result: Mapping[str, Any], baseline: Mapping[str, Any], corruptions: Sequence[str]) -> dict[str, Any]:
    """Hendrycks & Dietterich's CE / relative CE per corruption and their means (in %).

    ``CE_c = sum_s E(c, s) / sum_s E_base(c, s)``; relative
    ``CE_c = sum_s (E(c, s) - E_clean) / sum_s (E_base(c, s) - E_base_clean)``; errors are
    ``1 - accuracy``.
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


def evaluate_corruptions(
    model: torch.nn.Module,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    *,
    preset: str = "cifar10c",
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    cache: bool = True,
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Accuracy per corruption and severity, mean corruption accuracy and (relative) mCE.

    Args:
        model: Classifier on float images in [0, 1] (normalisation inside, as everywhere here).
        x_u8: uint8 test images ``[N, C, H, W]`` (e.g. ``data.load_uint8("cifar10")``).
        y: int64 labels ``[N]``.
        preset: Corruption parameters (``cifar10c`` for 32 px data).
        corruptions: Names (default: the preset's 15 common corruptions).
        severities: Severities evaluated (default 1..5).
        seed: Corruption seed.
        batch_size: Images per corruption/forward batch.
        device: Where corruptions and the model run (default: the model's device).
        cache: Reuse / store corrupted sets as uint8 in the data cache.
        baseline: A previous result of this function (e.g. of a standard model); adds CE,
            relative CE, mCE and relative mCE against it.
        baseline_name: Name recorded for the baseline.
        progress: Show a progress bar (default: unless ``ROBUST_ENS_QUIET`` is set).

    Returns:
        A plain dict: ``protocol`` (preset, seed, n, corruptions, severities), ``clean_accuracy``,
        ``accuracy`` ``{corruption: {severity: acc}}``, ``mean_accuracy_per_corruption``,
        ``mean_corruption_accuracy`` (mean over every corruption x severity evaluated),
        ``seconds``, and with a baseline ``CE``, ``relative_CE``, ``mCE``, ``relative_mCE``.
    """
    if y.shape[0] != x_u8.shape[0]:
        raise RobustEnsError(f"{x_u8.shape[0]} images but {y.shape[0]} labels")
    names = list(corruptions) if corruptions is not None else list_corruptions(preset, subset="common")
    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    fp = data_fingerprint(x_u8) if cache else None
    res: dict[str, Any] = {
        "protocol": {"version": PROTOCOL_VERSION, "preset": preset, "seed": seed, "n_examples": int(x_u8.shape[0]),
                     "corruptions": names, "severities": [int(s) for s in severities]},
        "clean_accuracy": accuracy(model, x_u8, y, batch_size=batch_size, device=dev),
        "accuracy": {},
    }
    from robust_ens import progress as _progress

    bar = _progress.bar(total=len(names) * len(severities), desc="corruptions", unit="set", enable=progress, every=1)
    for c in names:
        res["accuracy"][c] = {}
        for s in severities:
            bar.set_postfix_str(f"{c} s{s}")
            xc = corrupted_set(x_u8, c, int(s), preset=preset, seed=seed, batch_size=batch_size, device=dev,
                               cache=cache, fingerprint=fp)
            res["accuracy"][c][int(s)] = accuracy(model, xc, y, batch_size=batch_size, device=dev)
            log.info("%s s%d: accuracy %.4f", c, s, res["accuracy"][c][int(s)])
            bar.update(1)
    bar.close()
    res["mean_accuracy_per_corruption"] = {c: float(np.mean(list(v.values()))) for c, v in res["accuracy"].items()}
    allacc = [a for v in res["accuracy"].values() for a in v.values()]
    res["mean_corruption_accuracy"] = float(np.mean(allacc)) if allacc else float("nan")
    if baseline is not None:
        res.update(corruption_errors(res, baseline, names))
        res["baseline"] = baseline_name or str(baseline.get("name", "baseline"))
    res["seconds"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------ leaderboard entries

SUITE = "cifar10-corruptions"


def _metric_key(name: str, severity: int | str) -> str:
    return f"acc/{name}/{int(severity)}"


def to_entry(
    result: Mapping[str, Any],
    *,
    name: str,
    model_name: str | None = None,
    architecture: str = "unknown",
    n_members: int = 1,
    checkpoint_sha256: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    description: str = "",
    dataset: str = "cifar10",
    settings: Mapping[str, Any] | None = None,
    device: str = "cpu",
    forward_passes: int = 0,
    command: str | None = None,
) -> Any:
    """A leaderboard :class:`~robust_ens.leaderboard.Entry` of suite ``cifar10-corruptions``.

    Args:
        result: What :func:`evaluate_corruptions` returned.
        name: Entry name (file name of the JSON entry; letters, digits, ``._+-``).
        model_name: Model name shown in tables (default ``name``).
        architecture: Architecture (e.g. ``small_cnn``; ``ensemble(a,b)`` for ensembles).
        n_members: Number of ensemble members.
        checkpoint_sha256: sha256 of each member's weights file.
        parameters: Free-form model parameters (e.g. parameter count, ensemble combine rule).
        description: Free text.
        dataset: Dataset name of the protocol (``cifar10``, ``cifar10-jpeg``, ``digits``).
        settings: Extra protocol settings recorded next to preset, corruptions and severities.
        device: Device of the evaluation (the entry's cost).
        forward_passes: Forward passes per member spent (images evaluated).
        command: Command line for the provenance (default ``sys.argv``).

    Returns:
        The validated entry. ``results.metrics`` holds ``mean_corruption_accuracy``, with a
        baseline ``mCE`` and ``relative_mCE`` (in %), and ``acc/<corruption>/<severity>`` for
        every corruption and severity evaluated; :func:`result_from_entry` reads them back.
    """
    from robust_ens import leaderboard as lb

    proto = dict(result["protocol"])
    metrics: dict[str, float] = {"mean_corruption_accuracy": float(result["mean_corruption_accuracy"])}
    for key in ("mCE", "relative_mCE"):
        if key in result and np.isfinite(result[key]):
            metrics[key] = float(result[key])
    for c, per in result["accuracy"].items():
        for s, acc in per.items():
            metrics[_metric_key(c, s)] = float(acc)
    extra = {"preset": proto["preset"], "corruptions": list(proto["corruptions"]),
             "severities": [int(s) for s in proto["severities"]]}
    if result.get("baseline") is not None:
        extra["baseline"] = str(result["baseline"])
    extra.update(dict(settings or {}))
    payload = {
        "name": name,
        "model": {"name": model_name or name, "architecture": architecture, "n_members": int(n_members),
                  "checkpoint_sha256": list(checkpoint_sha256), "parameters": dict(parameters or {}),
                  "description": description},
        "protocol": {"suite": SUITE, "suite_version": str(proto.get("version", PROTOCOL_VERSION)), "dataset": dataset,
                     "n_examples": int(proto["n_examples"]), "seed": int(proto["seed"]),
                     "threat_model": "common-corruptions", "settings": extra},
        "results": {"clean_accuracy": float(result["clean_accuracy"]), "metrics": metrics},
        "cost": {"seconds": float(result.get("seconds", 0.0)), "device": device,
                 "forward_passes": int(forward_passes)},
        "provenance": lb.provenance(command).model_dump(),
    }
    return lb.validate(payload)


def result_from_entry(entry: Any) -> dict[str, Any]:
    """The ``clean_accuracy`` / ``accuracy`` part of an evaluation read back from an entry
    (a :class:`~robust_ens.leaderboard.Entry`, a dict or a JSON path), e.g. to serve as baseline.

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


def upscale_factor(text: str, h: int, w: int) -> int:
    """``"auto"``: the smallest integer factor that brings the shorter side to 32 px (the corruptions' minimum)."""
    if text == "auto":
        side = min(h, w)
        return 1 if side >= 32 else -(-32 // side)
    try:
        k = int(text)
    except ValueError as err:
        raise RobustEnsError(f"--upscale must be 'auto' or a positive integer, got {text!r}") from err
    if k < 1:
        raise RobustEnsError(f"--upscale must be a positive integer, got {k}")
    return k


def upscale(x_u8: torch.Tensor, model: torch.nn.Module, factor: int) -> tuple[torch.Tensor, torch.nn.Module]:
    """Bilinearly upsample a uint8 set by ``factor`` and wrap ``model`` to pool it back (identity for 1)."""
    if factor <= 1:
        return x_u8, model
    up = torch.nn.functional.interpolate(x_u8.float(), scale_factor=factor, mode="bilinear", align_corners=False)
    return up.round_().clamp_(0, 255).to(torch.uint8), Upscaled(model, factor).eval()


def default_entry_name(spec: str) -> str:
    """An entry name from a model spec: the checkpoint stem, or ``ens-a+b`` for an ensemble."""
    import re

    parts = [s.strip() for s in spec.split(",") if s.strip()]
    stems = [p.removeprefix("zoo:").replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".safetensors").removesuffix(".json")
             for p in parts]
    name = stems[0] if len(stems) == 1 else "ens-" + "+".join(stems)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:120]

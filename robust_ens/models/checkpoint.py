"""Checkpoints that never unpickle code: safetensors weights plus a JSON sidecar.

Layout for ``save_checkpoint(model, "runs/m0")``::

    runs/m0.safetensors   the weights (state dict)
    runs/m0.json          architecture, kwargs, normalization, dataset, recipe, metrics, sha256

``load_checkpoint`` verifies the sha256 recorded in the sidecar (and one given by the caller,
e.g. from the zoo index) before it reads a single tensor.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens.errors import CheckpointError
from robust_ens.models.registry import create
from robust_ens.models.wrapper import Normalized

SIDE_SUFFIX = ".json"
WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (SIDE_SUFFIX, WEIGHT_SUFFIX, *PICKLE_SUFFIXES) else p


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone() breaks storage sharing (tied weights), which safetensors refuses to save.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    dataset: str | None = None,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<path>.safetensors`` and the ``<path>.json`` sidecar; return the weights path.

    Args:
        model: A :class:`Normalized` model (from :func:`robust_ens.models.create`).
        path: Destination without suffix (a ``.safetensors``/``.json`` suffix is stripped).
        dataset: Dataset the model was trained on.
        recipe: Training hyperparameters.
        metrics: Measured metrics (accuracy, ...).
        extra: Anything else JSON-serializable to record.
    """
    from safetensors.torch import save_file

    if not isinstance(model, Normalized):
        raise CheckpointError(
            "save_checkpoint needs a model built by robust_ens.models.create (a Normalized wrapper) "
            "so the architecture can be rebuilt on load"
        )
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_suffix(WEIGHT_SUFFIX)
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(_state_dict(model), str(tmp))
    tmp.replace(weights)
    import robust_ens

    record = {
        "format": "robust-ens-checkpoint/1",
        "arch": model.arch,
        "arch_kwargs": model.arch_kwargs,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "normalization": model.normalization,
        "dataset": dataset,
        "recipe": recipe or {},
        "metrics": metrics or {},
        "extra": extra or {},
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "robust_ens_version": robust_ens.__version__,
        "torch_version": torch.__version__,
    }
    stem.with_suffix(SIDE_SUFFIX).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return weights


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Return the JSON record of a checkpoint."""
    side = _stem(path).with_suffix(SIDE_SUFFIX)
    if not side.is_file():
        raise CheckpointError(
            f"no checkpoint record {side}: save checkpoints with robust_ens.models.save_checkpoint, "
            "which writes the weights and this JSON sidecar together"
        )
    try:
        record: dict[str, Any] = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint record {side} is not valid JSON: {err}") from err
    return record


def _load_tensors(weights: Path) -> dict[str, torch.Tensor]:
    if weights.suffix == WEIGHT_SUFFIX:
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{weights} is not a valid safetensors file: {err}") from err
    if weights.suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
            raise CheckpointError(
                f"refused to load {weights}: it is not a plain tensor state dict and loading it would "
                "require unpickling arbitrary code. Convert it to safetensors in an environment you trust."
            ) from err
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{weights} does not hold a state dict of tensors")
        return obj
    raise CheckpointError(
        f"unsupported checkpoint file {weights}: expected {WEIGHT_SUFFIX} (or a weights-only {PICKLE_SUFFIXES} file)"
    )


def load_checkpoint(
    path: str | Path, *, device: str | torch.device | None = None, sha256: str | None = None
) -> Normalized:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The checkpoint stem, its ``.safetensors`` file or its ``.json`` sidecar.
        device: Where to put the model (default CPU).
        sha256: Expected hash of the weights file (e.g. from the zoo index); checked in addition
            to the hash recorded in the sidecar.

    Returns:
        The model in eval mode with ``checkpoint`` (the sidecar record) attached.

    Raises:
        CheckpointError: missing files, hash mismatch, a pickle that would run code, or weights
            that do not fit the recorded architecture.
    """
    record = read_sidecar(path)
    stem = _stem(path)
    weights = stem.parent / record.get("weights", stem.name + WEIGHT_SUFFIX)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} are missing (the record {stem}.json names them)")
    actual = sha256_file(weights)
    for label, expected in (("the checkpoint record", record.get("sha256")), ("the caller", sha256)):
        if expected and expected != actual:
            raise CheckpointError(
                f"sha256 mismatch for {weights}: {label} expects {expected}, the file has {actual}. "
                "The file is corrupt or was replaced; re-create or re-download it."
            )
    norm = record.get("normalization") or {}
    try:
        model = create(
            record["arch"],
            num_classes=int(record["num_classes"]),
            in_chans=int(record.get("in_chans") or 3),
            mean=norm.get("mean"),
            std=norm.get("std"),
            **record.get("arch_kwargs", {}),
        )
    except KeyError as err:
        raise CheckpointError(f"checkpoint record {stem}.json lacks field {err}") from err
    state = _load_tensors(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {weights} do not fit architecture {record['arch']!r}: {err}") from err
    model.checkpoint = record
    return model.to(device or "cpu").eval()

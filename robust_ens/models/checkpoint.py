"""Checkpoints that never unpickle code: safetensors weights plus a JSON sidecar.

Layout for ``save_checkpoint(model, "runs/m0")``::

    runs/m0.safetensors   the weights (state dict)
    runs/m0.json          architecture, kwargs, normalization, dataset, recipe, metrics, sha256

``load_checkpoint`` verifies the sha256 recorded in the sidecar (and one given by the caller,
e.g. from the zoo index) before it reads a single tensor.

The sidecar is untrusted input (whoever hands over a checkpoint writes it), so loading checks it
before building anything: the architecture must be registered (or ``timm:<name>``), its
``arch_kwargs`` may hold only the options the architecture declares safe
(:func:`robust_ens.models.registry.safe_arch_kwargs`: no ``pretrained``, no file or URL
arguments), ``weights`` must be a file name in the checkpoint's own folder, and the model the
record describes is first built on the ``meta`` device (no memory) and compared with the tensor
shapes in the safetensors header (read without loading the tensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens.atomic import atomic_write, atomic_write_text
from robust_ens.errors import CheckpointError
from robust_ens.models.registry import (
    MODELS,
    PACKED_PREFIX,
    TIMM_PREFIX,
    _create_timm,
    check_arch_kwargs,
    create,
)
from robust_ens.models.weights_io import (
    PICKLE_SUFFIXES,
    WEIGHT_SUFFIX,
    load_state_checked,
    load_tensors,
    safetensors_shapes,
    sha256_file,
    state_mismatch,
)
from robust_ens.models.wrapper import Normalized

SIDE_SUFFIX = ".json"


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
    atomic_write(weights, lambda tmp: save_file(_state_dict(model), str(tmp)))
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
    atomic_write_text(stem.with_suffix(SIDE_SUFFIX), json.dumps(record, indent=2, sort_keys=True) + "\n")
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
        record = json.loads(side.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"checkpoint record {side} is not UTF-8 text (byte {err.start}); it is corrupt") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint record {side} is not valid JSON: {err}") from err
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint record {side}: {err.strerror or err}") from err
    if not isinstance(record, dict):
        raise CheckpointError(f"checkpoint record {side} must hold a JSON object, got {type(record).__name__}")
    return record


def _weights_path(record: dict[str, Any], stem: Path) -> Path:
    """The weights file the record names; only a plain file name in the checkpoint's folder."""
    name = record.get("weights", stem.name + WEIGHT_SUFFIX)
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or Path(name).name != name or Path(name).is_absolute():
        raise CheckpointError(
            f"checkpoint record {stem}.json names weights {name!r} outside its folder; refusing to load them "
            "(the weights must sit next to the record and be named by file name only)"
        )
    return stem.parent / name


def _record_int(record: dict[str, Any], key: str, default: int | None, stem: Path, lo: int) -> int:
    value = record.get(key, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        if value is None:
            raise CheckpointError(f"checkpoint record {stem}.json lacks field {key!r}")
        raise CheckpointError(f"checkpoint record {stem}.json: {key} must be an integer >= {lo}, got {value!r}")
    return value


def _check_record(record: dict[str, Any], stem: Path, shapes: dict[str, tuple[int, ...]] | None) -> dict[str, Any]:
    """Validate an untrusted record; return the keyword arguments for ``create``."""
    arch = record.get("arch")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"checkpoint record {stem}.json lacks field 'arch' (the architecture name)")
    base = arch.removeprefix(PACKED_PREFIX)
    if base not in MODELS and not (base.startswith(TIMM_PREFIX) and len(base) > len(TIMM_PREFIX)):
        raise CheckpointError(
            f"unknown architecture {arch!r} in the record {stem}.json; known: {', '.join(MODELS.list())} or timm:<name>"
        )
    kwargs = record.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"checkpoint record {stem}.json: arch_kwargs must be an object, got {type(kwargs).__name__}")
    try:
        check_arch_kwargs(arch, kwargs, where=f"arch_kwargs in the record {stem}.json:")
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(str(err)) from err
    members = kwargs.get("members")
    if members is not None and (isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 1024):
        raise CheckpointError(f"checkpoint record {stem}.json: arch_kwargs.members must be an integer in 1..1024, got {members!r}")
    num_classes = _record_int(record, "num_classes", None, stem, 2)
    in_chans = _record_int(record, "in_chans", 3, stem, 1)
    if shapes is not None:
        biggest = max((d for s in shapes.values() for d in s), default=0)
        # Structural integers (depth, widths, sizes) far beyond anything in the file cannot describe
        # it; refusing them keeps even the meta-device build small.
        bound = 16 * max(biggest, len(shapes))
        for key, value in kwargs.items():
            if isinstance(value, int) and not isinstance(value, bool) and not -bound <= value <= bound:
                raise CheckpointError(
                    f"checkpoint record {stem}.json: arch_kwargs.{key}={value} is far larger than anything in the "
                    "weights; the record does not describe these weights"
                )
        for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            if value > biggest:
                raise CheckpointError(
                    f"checkpoint record {stem}.json says {key}={value}, but no tensor in the weights has a "
                    f"dimension that large (largest {biggest}); the record does not describe these weights"
                )
    norm = record.get("normalization") or {}
    if not isinstance(norm, dict):
        raise CheckpointError(f"checkpoint record {stem}.json: normalization must be an object")
    stats: dict[str, Any] = {}
    for key in ("mean", "std"):
        v = norm.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != in_chans
                              or not all(isinstance(t, int | float) and not isinstance(t, bool) for t in v)):
            raise CheckpointError(
                f"checkpoint record {stem}.json: normalization.{key} must be a list of {in_chans} numbers, got {v!r}"
            )
        stats[key] = v
    if stats.get("std") is not None and any(t <= 0 for t in stats["std"]):
        raise CheckpointError(f"checkpoint record {stem}.json: normalization.std must be positive")
    return {"name": arch, "num_classes": num_classes, "in_chans": in_chans, **stats, **kwargs}


def _build(spec: dict[str, Any], stem: Path) -> Normalized:
    args = dict(spec)
    name = args.pop("name")
    try:
        return create(name, **args)
    except CheckpointError:
        raise
    except Exception as err:  # a record describing a model that cannot be built
        raise CheckpointError(f"cannot build {name!r} from the record {stem}.json: {err}") from err


def _meta_shapes(spec: dict[str, Any], stem: Path) -> dict[str, tuple[int, ...]] | None:
    """State-dict shapes of the model ``spec`` describes, built on the meta device (no memory).

    ``None`` for ``packed:`` architectures (their wrapper is built on real tensors; the header
    checks of :func:`_check_record` bound their size).
    """
    args = {k: v for k, v in spec.items() if k not in ("name", "mean", "std")}
    name = spec["name"]
    if name.startswith(PACKED_PREFIX):
        return None
    try:
        with torch.device("meta"):
            if name.startswith(TIMM_PREFIX):
                nc, ic = args.pop("num_classes"), args.pop("in_chans")
                net = _create_timm(name[len(TIMM_PREFIX):], nc, ic, False, **args)
            else:
                net = MODELS.create(name, **args)
    except Exception as err:  # a record describing a model that cannot be built
        raise CheckpointError(f"cannot build {name!r} from the record {stem}.json: {err}") from err
    return {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}


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
    weights = _weights_path(record, stem)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} are missing (the record {stem}.json names them)")
    actual = sha256_file(weights)
    for label, expected in (("the checkpoint record", record.get("sha256")), ("the caller", sha256)):
        if expected and expected != actual:
            raise CheckpointError(
                f"sha256 mismatch for {weights}: {label} expects {expected}, the file has {actual}. "
                "The file is corrupt or was replaced; re-create or re-download it."
            )
    state: dict[str, torch.Tensor] | None = None
    if weights.suffix == WEIGHT_SUFFIX:
        shapes = safetensors_shapes(weights)
    else:
        state = load_tensors(weights)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    spec = _check_record(record, stem, shapes)
    # Build what the record describes on the meta device first (no memory) and compare shapes.
    expected = _meta_shapes(spec, stem)
    if expected is not None and expected != shapes:
        raise CheckpointError(
            f"weights in {weights} do not fit the architecture {spec['name']!r} its record describes: "
            + state_mismatch(expected, shapes, have="record")
        )
    model = _build(spec, stem)
    if state is None:
        state = load_tensors(weights)
    load_state_checked(model, state, f"weights in {weights} do not fit architecture {spec['name']!r}")
    model.checkpoint = record
    return model.to(device or "cpu").eval()


__all__ = [
    "PICKLE_SUFFIXES",
    "SIDE_SUFFIX",
    "WEIGHT_SUFFIX",
    "load_checkpoint",
    "read_sidecar",
    "safetensors_shapes",
    "save_checkpoint",
    "sha256_file",
]

"""Weight files read without unpickling code: hashes, safetensors headers and tensor state dicts.

The bottom of :mod:`robust_ens.models` (it imports nothing of the package): the registry reads a
user's timm weights file through :func:`load_tensors`, and :mod:`~robust_ens.models.checkpoint`
builds its verified loading on these helpers.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from robust_ens.errors import CheckpointError

WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header, without reading the tensors.

    Raises:
        CheckpointError: when the header is missing, truncated or not the safetensors format.
    """
    file = Path(path)
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file} is not a valid safetensors file: shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            size = file.stat().st_size
            if n < 2 or n > min(size - 8, 100 << 20):
                raise CheckpointError(f"{file} is not a valid safetensors file: header length {n} does not fit the file")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not a valid safetensors file: unreadable header ({err})") from err
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err.strerror or err}") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} is not a valid safetensors file: its header is not an object")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"{file} is not a valid safetensors file: tensor {key!r} has no valid shape")
        shapes[key] = tuple(shape)
    return shapes


def load_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from safetensors or a weights-only ``.pt``/``.pth``/``.bin``/``.ckpt`` file.

    Raises:
        CheckpointError: an invalid file, an unsupported suffix, or a pickle that would run code.
    """
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


def _keys(label: str, keys: Sequence[str], shown: int) -> str:
    more = f", ... {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {label} ({', '.join(keys[:shown])}{more})"


def state_mismatch(expected: Mapping[str, Sequence[int]], given: Mapping[str, Sequence[int]], *,
                   have: str = "model", shown: int = 3) -> str:
    """Why a state dict does not fit a model, in one line ("" when every key and shape fits).

    Args:
        expected: Key -> shape the model has.
        given: Key -> shape the file holds.
        have: What ``expected`` describes, for the shapes' labels ("model", "record").
        shown: How many keys of each kind to name.

    Example:
        >>> state_mismatch({"a.weight": (2, 3), "b.bias": (2,)}, {"a.weight": (4, 3), "c": (1,)})
        '1 missing (b.bias); 1 unexpected (c); 1 with other shapes (first: a.weight: model [2, 3], file [4, 3])'
    """
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and tuple(expected[k]) != tuple(given[k])]
    parts = []
    if missing:
        parts.append(_keys("missing", missing, shown))
    if extra:
        parts.append(_keys("unexpected", extra, shown))
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} with other shapes (first: {k}: {have} {list(expected[k])}, file {list(given[k])})")
    return "; ".join(parts)


def load_state_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, or one line naming what does not fit.

    Args:
        module: The model to fill.
        state: The tensors read from a file.
        what: The start of the message, e.g. ``"--weights w.pt does not fit the model"``.

    Raises:
        CheckpointError: ``what`` followed by the missing and unexpected keys (the first few and
            their counts) and the first key of another shape with both shapes.
    """
    own = module.state_dict()
    why = state_mismatch({k: tuple(v.shape) for k, v in own.items()},
                         {k: tuple(getattr(v, "shape", ())) for k, v in state.items()})
    if why:
        raise CheckpointError(f"{what}: {why}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # fitting keys and shapes; what torch says is left, its first line
        raise CheckpointError(f"{what}: {' '.join(str(err).split())[:300]}") from None


__all__ = ["PICKLE_SUFFIXES", "WEIGHT_SUFFIX", "load_state_checked", "load_tensors", "safetensors_shapes",
           "sha256_file", "state_mismatch"]

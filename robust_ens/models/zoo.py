"""The project's committed reference checkpoints (``models.load("zoo:NAME")``).

``robust_ens/zoo/index.json`` maps a name to a safetensors file shipped in the package and its
sha256; loading verifies the hash. Checkpoints are never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from robust_ens.errors import CheckpointError, UnknownNameError
from robust_ens.models.checkpoint import load_checkpoint
from robust_ens.models.wrapper import Normalized

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
ZOO_PREFIX = "zoo:"


def _index() -> dict[str, dict[str, Any]]:
    index = ZOO_DIR / "index.json"
    if not index.is_file():
        return {}
    data: dict[str, dict[str, Any]] = json.loads(index.read_text())
    return data


def list_zoo() -> list[str]:
    """Names of the committed reference checkpoints."""
    return sorted(_index())


def load(spec: str, *, device: str | torch.device | None = None) -> Normalized:
    """Load ``"zoo:NAME"`` (a committed reference checkpoint) or a checkpoint path.

    Args:
        spec: ``"zoo:NAME"`` or a path accepted by :func:`load_checkpoint`.
        device: Target device.
    """
    if spec.startswith(ZOO_PREFIX):
        name = spec[len(ZOO_PREFIX) :]
        entry = _index().get(name)
        if entry is None:
            raise UnknownNameError(f"unknown zoo checkpoint {name!r}; the zoo holds: {', '.join(list_zoo()) or '(none)'}")
        if "sha256" not in entry:
            raise CheckpointError(f"zoo entry {name!r} records no sha256; refusing to load it unchecked")
        return load_checkpoint(ZOO_DIR / entry["file"], device=device, sha256=entry["sha256"])
    return load_checkpoint(spec, device=device)

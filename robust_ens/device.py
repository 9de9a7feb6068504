"""The one device policy: where work runs when the caller names no device.

Example:
    >>> import torch
    >>> from robust_ens.device import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device(None).type in ("cuda", "cpu")
    True
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when this machine has it, else the CPU (the default of training, attacks and the CLI)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` (or ``""``) means :func:`default_device`.

    Resolve once, where a run starts (a command, ``train_classifier``, an engine), and pass the
    resulting device down; models and loaders that default to the CPU (``load_checkpoint``,
    ``data.load``) keep that default.
    """
    return torch.device(device) if device else default_device()


__all__ = ["default_device", "resolve_device"]

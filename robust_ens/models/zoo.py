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


def index() -> dict[str, dict[str, Any]]:
    """The zoo index: name -> {file, sha256, arch, dataset}."""
    index = ZOO_DIR / "index.json"
    if not index.is_file():
        return {}
    data: dict[str, dict[str, Any]] = json.loads(index.read_text())
    return data


def list_zoo() -> list[str]:
    """Names of the committed reference checkpoints."""
    return sorted(index())


def load(spec: str, *, device: str | torch.device | None = None) -> Normalized:
    """Load ``"zoo:NAME"`` (a committed reference checkpoint), ``"robustbench:DATASET/THREAT/NAME"`` or a checkpoint path.

    Args:
        spec: ``"zoo:NAME"`` or a path accepted by :func:`load_checkpoint`.
        device: Target device.
    """
    if spec.startswith("robustbench:"):  # RobustBench's zoo, offline (optional extra)
        from robust_ens.models.robustbench import load_robustbench

        return load_robustbench(spec, device=device)  # type: ignore[return-value]
    if spec.startswith(ZOO_PREFIX):
        name = spec[len(ZOO_PREFIX) :]
        entry = index().get(name)
        if entry is None:
            raise UnknownNameError(f"unknown zoo checkpoint {name!r}; the zoo holds: {', '.join(list_zoo()) or '(none)'}")
        if "sha256" not in entry:
            raise CheckpointError(f"zoo entry {name!r} records no sha256; refusing to load it unchecked")
        return load_checkpoint(ZOO_DIR / entry["file"], device=device, sha256=entry["sha256"])
    return load_checkpoint(spec, device=device)


def rebuild_digits_zoo(seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, dict[str, Any]]:
    """Retrain the committed digits reference checkpoints (``small_cnn``, one per seed).

    Run as ``robust-ens zoo rebuild``; writes ``robust_ens/zoo/`` and its index.
    """
    from robust_ens import data
    from robust_ens.evaluation import accuracy
    from robust_ens.models.checkpoint import save_checkpoint, sha256_file
    from robust_ens.models.registry import create
    from robust_ens.train import default_recipe, train_classifier

    info = data.info("digits")
    xtr, ytr = data.load_uint8("digits", "train")
    xte, yte = data.load_uint8("digits", "test")
    entries = index()
    for seed in seeds:
        name = f"digits_small_cnn_s{seed}"
        cfg = default_recipe("digits").replace(seed=seed, precision="fp32")
        torch.manual_seed(seed)
        model = create("small_cnn", num_classes=10, in_chans=1, mean=info.mean, std=info.std)
        train_classifier(model, xtr, ytr, cfg, device="cpu", progress=False)
        path = save_checkpoint(
            model, ZOO_DIR / name, dataset="digits", recipe=cfg.to_dict(),
            metrics={"test_acc": accuracy(model, xte, yte)},
        )
        entries[name] = {"file": path.name, "sha256": sha256_file(path), "arch": "small_cnn", "dataset": "digits"}
    (ZOO_DIR / "index.json").write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return entries


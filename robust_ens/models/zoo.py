"""The project's committed reference checkpoints (``models.load("zoo:NAME")``).

Two kinds of entries, both verified against their sha256 on every load (never downloaded):

* ``robust_ens/zoo/index.json``: single checkpoints shipped flat in ``robust_ens/zoo/`` (the
  digits models of the quickstart and the fast tests).
* ``robust_ens/zoo/<dataset>/manifest.json``: ensembles, one folder per entry holding the members'
  fp16 safetensors and their sidecars (or one ``packed`` checkpoint), with the recipe, tier, the
  sha256 of every file and the accuracy measured on the shipped weights. They are trained from
  ``robust_ens/zoo/<dataset>.toml`` by :func:`robust_ens.zoo_build.rebuild_zoo` (``robust-ens zoo
  rebuild``), which writes into a folder you give it, never over the shipped files. Besides the
  defenses, the file holds the protocols' own models (entries with ``protocol``: surrogate ensembles and an attack
  suite's targets, plain members trained from a ``train`` table), which the suites name as
  ``zoo:`` checkpoints so that their adversarial sets are the same on every machine.

This module only reads and loads; building the zoo (training) is :mod:`robust_ens.zoo_build`.
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
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "robust-ens zoo 1"


def _manifests(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Entries of every ``<root>/<dataset>/manifest.json`` (default the shipped zoo), each with its absolute ``folder``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((root or ZOO_DIR).glob(f"*/{MANIFEST}")):
        doc = json.loads(path.read_text())
        for name, entry in doc.get("entries", {}).items():
            out[name] = {**entry, "folder": str(path.parent / entry["folder"])}
    return out


def index() -> dict[str, dict[str, Any]]:
    """The zoo: name -> entry (``file`` + ``sha256`` for a single checkpoint, ``folder`` + ``files``
    for an ensemble; ``arch``, ``dataset`` and, for ensembles, ``recipe``, ``tier``, ``accuracy``)."""
    flat = ZOO_DIR / "index.json"
    data: dict[str, dict[str, Any]] = json.loads(flat.read_text()) if flat.is_file() else {}
    return {**data, **_manifests(ZOO_DIR)}


def list_zoo() -> list[str]:
    """Names of the committed reference checkpoints."""
    return sorted(index())


def entry(name: str) -> dict[str, Any]:
    """The zoo entry ``name``.

    Raises:
        UnknownNameError: naming what the zoo holds.
    """
    found = index().get(name)
    if found is None:
        raise UnknownNameError(f"unknown zoo checkpoint {name!r}; the zoo holds: {', '.join(list_zoo()) or '(none)'}")
    return found


def entry_files(name: str) -> dict[str, str]:
    """``{path: sha256}`` of every weights file of zoo entry ``name``."""
    e = entry(name)
    if "files" in e:
        return {str(Path(e["folder"]) / f): sha for f, sha in e["files"].items()}
    return {str(ZOO_DIR / e["file"]): e.get("sha256", "")}


def load(spec: str, *, device: str | torch.device | None = None) -> Normalized:
    """Load ``"zoo:NAME"`` (a committed reference checkpoint or ensemble), ``"robustbench:DATASET/THREAT/NAME"``
    or a checkpoint path.

    Args:
        spec: ``"zoo:NAME"`` or a path accepted by :func:`load_checkpoint`.
        device: Target device.

    Returns:
        The model; a zoo ensemble is an :class:`~robust_ens.Ensemble` (``combine="logits"``) of its
        members, a packed one its :class:`~robust_ens.models.packed.PackedEnsemble`.
    """
    if spec.startswith("robustbench:"):  # RobustBench's zoo, offline (optional extra)
        from robust_ens.models.robustbench import load_robustbench

        return load_robustbench(spec, device=device)  # type: ignore[return-value]
    if not spec.startswith(ZOO_PREFIX):
        return load_checkpoint(spec, device=device)
    name = spec[len(ZOO_PREFIX) :]
    e = entry(name)
    files = entry_files(name)
    if not all(files.values()):
        raise CheckpointError(f"zoo entry {name!r} records no sha256; refusing to load it unchecked")
    loaded = [load_checkpoint(path, device=device, sha256=sha) for path, sha in files.items()]
    if "files" not in e or len(loaded) == 1:
        return loaded[0]
    from robust_ens.ensemble import Ensemble

    ens = Ensemble(loaded).eval()
    record: dict[str, Any] = {"zoo": name, **{k: e[k] for k in ("recipe", "tier", "arch", "dataset") if k in e}}
    ens.checkpoint = record  # type: ignore[assignment]
    return ens  # type: ignore[return-value]

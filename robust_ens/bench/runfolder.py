"""The run folder: which protocol made it, per-example results per (target, cell), and a manifest.

Layout of ``runs/<suite>-<tier>/``::

    run.json                    suite, version, tier and protocol digest (a run of another version is refused)
    manifest.json               finished cells: {target: {cell: sha256 of its result file}}
    results/<target>/<cell>.safetensors   per-example correctness (uint8 0/1) and example indices
    partial/<target>/<cell>/b<k>.safetensors  finished batches of an unfinished cell
    summary.json, entries/      what the aggregation wrote

Adversarial sets live in the store (:mod:`.advsets`, machine-wide by default), not here.

A killed run restarts where it stopped: finished cells are read, finished batches of the cell in
progress are read, and the numbers come out identical.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from robust_ens.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from robust_ens.bench.protocol import Protocol
from robust_ens.canonical import sha256_bytes
from robust_ens.errors import RobustEnsError
from robust_ens.threads import small_work_threads

RUN_FORMAT = "robust-ens run 1"


def slug(name: str) -> str:
    """A file-name-safe form of a target or cell name (readable, and unique via a short hash)."""
    clean = re.sub(r"[^A-Za-z0-9._@+-]+", "_", name).strip("_")[:80] or "x"
    return clean if clean == name else f"{clean}-{sha256_bytes(name.encode())[:8]}"


class RunFolder:
    """One run's folder; refuses a folder made by another protocol version or tier.

    Args:
        root: The folder (created when missing).
        protocol: The protocol being run.
        tier: The tier's name.
    """

    def __init__(self, root: str | Path, protocol: Protocol, tier: str, *, write: bool = True) -> None:
        self.root = Path(root)
        self.protocol = protocol
        self.tier = tier
        self.write = write
        info: dict[str, Any] = {"format": RUN_FORMAT, "suite": protocol.suite, "version": protocol.version, "tier": tier,
                "digest": protocol.digest(tier)}
        run_json = self.root / "run.json"
        if run_json.is_file():
            try:
                old: Any = json.loads(run_json.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                raise RobustEnsError(f"{run_json} is unreadable; remove the folder or pick a new --out") from None
            if not isinstance(old, dict) or {k: old.get(k) for k in info} != info:
                old = old if isinstance(old, dict) else {}
                raise RobustEnsError(
                    f"{self.root} holds a run of {old.get('suite')} v{old.get('version')} tier {old.get('tier')} "
                    f"(protocol digest {str(old.get('digest'))[:12]}), not {protocol.suite} v{protocol.version} "
                    f"tier {tier} ({info['digest'][:12]}); pick a new --out"
                )
        self._info = info
        self._manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = {"cells": {}, "targets": {}}
        if self._manifest_path.is_file():
            try:
                self.manifest = json.loads(self._manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                warnings.warn(f"{self._manifest_path} is unreadable; finished cells will be recomputed",
                              RuntimeWarning, stacklevel=2)

    def check_examples(self, fingerprint: str) -> None:
        """Refuse a folder whose finished cells were measured on other images; record these otherwise.

        The protocol digest names the dataset, not its files: a data folder swapped between two runs
        into one ``--out`` (another ``$ROBUST_ENS_DATA`` or ``--data``) would resume on the old cells.
        Folders written before the fingerprint was recorded are accepted as they are.
        """
        run_json = self.root / "run.json"
        old: Any = {}
        if run_json.is_file():
            try:
                old = json.loads(run_json.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                old = {}
        recorded = old.get("examples") if isinstance(old, dict) else None
        if recorded is not None and recorded != fingerprint:
            raise RobustEnsError(
                f"{self.root} holds a run on other images (examples {str(recorded)[:12]}, now {fingerprint[:12]}): "
                "the data changed since; pick a new --out or point the data back")
        self._info["examples"] = fingerprint

    def open(self) -> None:
        """Create the folder and its ``run.json`` (called once the targets resolved: bad input leaves nothing)."""
        run_json = self.root / "run.json"
        if not self.write or run_json.is_file():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_json, self._info)
        except OSError as err:
            raise RobustEnsError(f"--out {self.root}: cannot create the run folder ({err.strerror})") from None

    # ---- finished cells
    def _result_path(self, target: str, cell: str) -> Path:
        return self.root / "results" / slug(target) / f"{slug(cell)}.safetensors"

    def load(self, target: str, cell: str) -> torch.Tensor | None:
        """The finished cell's per-example correctness (bool), or ``None`` (absent or corrupt)."""
        sha = self.manifest.get("cells", {}).get(target, {}).get(cell)
        path = self._result_path(target, cell)
        if sha is None or not path.is_file():
            return None
        blob = path.read_bytes()
        if sha256_bytes(blob) != sha:
            warnings.warn(f"result {path} does not match the manifest; recomputing the cell", RuntimeWarning, stacklevel=2)
            return None
        from safetensors.torch import load

        return load(blob)["correct"].bool()

    @small_work_threads()  # per-batch bookkeeping: one thread unless the user chose (robust_ens.threads)
    def save(self, target: str, cell: str, correct: torch.Tensor, indices: torch.Tensor) -> None:
        """Record a finished cell (rank 0 only writes)."""
        if not self.write:
            return
        from safetensors.torch import save

        blob = save({"correct": correct.to(torch.uint8).contiguous().cpu(), "indices": indices.contiguous().cpu()})
        atomic_write_bytes(self._result_path(target, cell), blob)
        self.manifest.setdefault("cells", {}).setdefault(target, {})[cell] = sha256_bytes(blob)
        atomic_write_json(self._manifest_path, self.manifest)
        self._clear_partial(target, cell)

    def set_target(self, name: str, description: dict[str, Any]) -> None:
        """Record what a target name resolved to (a name reused for another model is refused)."""
        old = self.manifest.get("targets", {}).get(name)
        if old is not None and old.get("sha256") != description.get("sha256"):
            raise RobustEnsError(
                f"target name {name!r} was used in {self.root} for other weights ({old.get('spec')}); "
                "give this one another name or pick a new --out"
            )
        if self.write and old != description:
            self.manifest.setdefault("targets", {})[name] = description
            atomic_write_json(self._manifest_path, self.manifest)

    # ---- batches of an unfinished cell
    def _partial_path(self, target: str, cell: str, batch: int) -> Path:
        return self.root / "partial" / slug(target) / slug(cell) / f"b{batch:05d}.safetensors"

    def load_batch(self, target: str, cell: str, batch: int) -> torch.Tensor | None:
        """A finished batch of an unfinished cell (``None`` if absent or unreadable)."""
        path = self._partial_path(target, cell, batch)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path))["correct"].bool()
        except Exception:  # noqa: BLE001 - a torn write is recomputed
            path.unlink(missing_ok=True)
            return None

    @small_work_threads()
    def save_batch(self, target: str, cell: str, batch: int, correct: torch.Tensor) -> None:
        """Keep one finished batch (any rank: batches are disjoint)."""
        from safetensors.torch import save

        atomic_write_bytes(self._partial_path(target, cell, batch),
                           save({"correct": correct.to(torch.uint8).contiguous().cpu()}))

    def _clear_partial(self, target: str, cell: str) -> None:
        folder = self.root / "partial" / slug(target) / slug(cell)
        if folder.is_dir():
            for f in folder.iterdir():
                f.unlink(missing_ok=True)
            folder.rmdir()

    def write_text(self, rel: str, text: str) -> Path:
        """Write a file of the run folder atomically."""
        path = self.root / rel
        if self.write:
            atomic_write_text(path, text)
        return path

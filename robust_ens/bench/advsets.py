"""The adversarial-set store: each set is made once per key and reused by every target.

Key = sha256 of the canonical JSON of {attack config, attack code version, the sha256 of the
library's source (:func:`robust_ens.bench.craft.source_digest`), surrogate checkpoint sha256s, the surrogate module's fingerprint (structure, combine and precision, normalization and
other buffers, dtypes, train/eval modes), the device it ran on, the torch version, eps, norm, dataset
fingerprint, example indices, seed, target labels} (:func:`robust_ens.bench.craft.attack_batch`
builds it). A set is stored as uint8 images (safetensors) plus a JSON record; both are written
atomically (temp file + rename), the record last, holding the sha256 of the images, so a
half-written or tampered set is detected.

**One store per machine.** Every command that crafts (``demo``, ``submit``, ``bench run``,
``attack``, ``regress``, ``quickstart``) uses :func:`default_store` (``$ROBUST_ENS_CACHE/advsets``) unless ``--store`` names
another, so a set made by one run is reused by every later one.

**Concurrent runs.** A set being made holds a per-key file lock (``filelock``, an ``flock`` the
kernel releases when its holder dies, so a killed run never blocks the next). Another process
that needs the same set waits for that lock (:attr:`AdvSetStore.on_wait` says what it waits for),
then reads the set instead of making it again: two runs started together make each set once
between them. The lock file stays (an empty file beside the set; waiters share its inode).

**Quantization.** Sets are stored as uint8, like the clean images they come from. Rounding a
perturbation to the 1/255 grid could leave the eps ball, so each pixel's change is rounded and
then clipped to ``k = floor(255 * eps)`` levels: the budget actually enforced is ``k / 255 <= eps``
(for eps 8/255 exactly 8/255; for eps 0.03, 7/255 = 0.0275). The record keeps that budget and the
surrogate's accuracy on the float and on the stored set, which measures what quantization cost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robust_ens.atomic import atomic_write, atomic_write_text
from robust_ens.canonical import sha256_bytes, sha256_json
from robust_ens.errors import RobustEnsError
from robust_ens.threads import small_work_threads

log = logging.getLogger(__name__)

FORMAT = "robust-ens adversarial set 1"
_EPS_TOL = 1e-9  # 8/255 * 255 is 7.999999999999999 in floats; it means 8 levels


def quantization_levels(eps: float) -> int:
    """The largest whole number of 1/255 levels within ``eps`` (Linf)."""
    return int(math.floor(eps * 255 + _EPS_TOL))


def default_store() -> Path:
    """The machine-wide store every command uses unless ``--store`` says otherwise: ``$ROBUST_ENS_CACHE/advsets``."""
    from robust_ens import data

    return data.cache_dir() / "advsets"


@small_work_threads()  # per-batch bookkeeping: one thread unless the user chose (robust_ens.threads)
def quantize(x_u8: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """uint8 adversarial images within ``floor(255 * eps)`` levels of ``x_u8`` and in [0, 255].

    Args:
        x_u8: The clean images, uint8.
        x_adv: Adversarial images, float in [0, 1], same shape.
        eps: The Linf budget in [0, 1] units.
    """
    k = quantization_levels(eps)
    d = torch.round(x_adv.detach().double().cpu() * 255) - x_u8.cpu().double()
    d = d.clamp(-k, k)
    return (x_u8.cpu().double() + d).clamp(0, 255).to(torch.uint8)


def enforced_eps(eps: float) -> float:
    """The Linf budget a stored set actually satisfies: ``floor(255 * eps) / 255``."""
    return quantization_levels(eps) / 255


def dataset_fingerprint(x_u8: torch.Tensor, y: torch.Tensor, label: str) -> str:
    """sha256 of a dataset's images, labels and name: two copies that differ by one pixel differ."""
    return sha256_json({"label": label, "images": sha256_bytes(x_u8.contiguous().numpy().tobytes()),
                        "labels": sha256_bytes(y.contiguous().numpy().tobytes()), "shape": list(x_u8.shape)})


@dataclass
class StoredSet:
    """A set read from (or just written to) the store."""

    key: str
    x_adv: torch.Tensor  # uint8
    record: dict[str, Any]
    hit: bool


class AdvSetStore:
    """A content-addressed folder of adversarial sets, safe to share between concurrent processes.

    Args:
        root: The store's folder (created on first write); default :func:`default_store`.
        on_wait: Called with a description of the set when another process is making it and
            this one waits for it (the engine puts it on the progress line).

    Attributes:
        hits: Sets read from the store (``waited`` of them after waiting for another process).
        misses: Sets made here.
        waited: Sets this store waited for another process to finish.
    """

    def __init__(self, root: str | Path | None = None, *, on_wait: Callable[[str], None] | None = None) -> None:
        self.root = Path(root) if root is not None else default_store()
        self.on_wait = on_wait
        self.hits = 0
        self.misses = 0
        self.waited = 0

    @staticmethod
    def key(fields: dict[str, Any]) -> str:
        """sha256 of the canonical JSON of the key fields."""
        return sha256_json(fields)

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def _lock_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.lock"

    @contextlib.contextmanager
    def _making(self, key: str, label: str) -> Iterator[None]:
        """Hold the key's lock; when another process holds it, say so and wait for it."""
        from filelock import FileLock, Timeout

        path = self._lock_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path))
            try:
                lock.acquire(blocking=False)
            except Timeout:
                self.waited += 1
                what = f"adversarial set {label or key[:12]}"
                log.info("waiting for %s: another run is making it", what)
                if self.on_wait is not None:
                    self.on_wait(what)
                lock.acquire()
        except OSError as err:
            raise RobustEnsError(f"--store {self.root}: cannot write there ({err.strerror or err}); "
                                 "pick a writable --store") from None
        try:
            yield
        finally:
            lock.release()

    def get(self, key: str, shape: tuple[int, ...]) -> StoredSet | None:
        """The stored set for ``key``; ``None`` when absent. A corrupt set is removed with a warning."""
        data_path, rec_path = self._paths(key)
        if not rec_path.is_file():
            return None
        try:
            record = json.loads(rec_path.read_text(encoding="utf-8"))
            if record.get("format") != FORMAT or record.get("key") != key:
                raise ValueError("its record names another key or format")
            from safetensors.torch import load_file

            x = load_file(str(data_path))["x_adv"]
            if x.dtype != torch.uint8 or tuple(x.shape) != tuple(shape):
                raise ValueError(f"it holds {x.dtype} {tuple(x.shape)}, expected uint8 {tuple(shape)}")
            if sha256_bytes(x.contiguous().numpy().tobytes()) != record.get("sha256"):
                raise ValueError("its images do not match the sha256 in its record")
        except Exception as err:  # noqa: BLE001 - any unreadable file is recomputed, never trusted
            warnings.warn(f"corrupt adversarial set {data_path} ({str(err).splitlines()[0][:120]}); recomputing it",
                          RuntimeWarning, stacklevel=2)
            for p in (rec_path, data_path):
                p.unlink(missing_ok=True)
            return None
        return StoredSet(key, x, record, hit=True)

    @small_work_threads()
    def put(self, key: str, x_adv_u8: torch.Tensor, record: dict[str, Any]) -> StoredSet:
        """Write a set atomically (images first, then the record that vouches for them)."""
        from safetensors.torch import save_file

        if x_adv_u8.dtype != torch.uint8:
            raise RobustEnsError(f"the store holds uint8 images, got {x_adv_u8.dtype}")
        data_path, rec_path = self._paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        x = x_adv_u8.contiguous().cpu()
        rec = {**record, "format": FORMAT, "key": key, "sha256": sha256_bytes(x.numpy().tobytes())}
        atomic_write(data_path, lambda tmp: save_file({"x_adv": x}, str(tmp)))
        atomic_write_text(rec_path, json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return StoredSet(key, x, rec, hit=False)

    def get_or_make(
        self,
        fields: dict[str, Any],
        x_u8: torch.Tensor,
        make: Callable[[], tuple[torch.Tensor, dict[str, Any]]],
        eps: float,
        measure: Callable[[torch.Tensor], dict[str, Any]] | None = None,
        label: str = "",
    ) -> StoredSet:
        """The set for ``fields``: from the store, or made by ``make()``, quantized and stored.

        Making holds the key's lock: a set another process is making is waited for and read,
        never made twice.

        Args:
            fields: The key fields (see the module docstring).
            x_u8: The clean uint8 images the set perturbs.
            make: Returns float adversarial images in [0, 1] and extra record fields.
            eps: The Linf budget (quantization clips to ``floor(255 * eps)`` levels).
            measure: Extra record fields computed on the quantized uint8 set before it is stored.
            label: What the set is, for the message when waiting for another process.
        """
        key = self.key(fields)
        shape = tuple(x_u8.shape)
        got = self.get(key, shape)
        if got is None:
            with self._making(key, label):
                got = self.get(key, shape)  # made by the process we waited for
                if got is None:
                    self.misses += 1
                    x_adv, extra = make()
                    q = quantize(x_u8, x_adv, eps)
                    max_levels = int((q.int() - x_u8.cpu().int()).abs().max()) if q.numel() else 0
                    record = {"fields": fields, "eps": eps, "enforced_eps": enforced_eps(eps),
                              "max_change_levels": max_levels, "n": int(x_u8.shape[0]), **extra,
                              **(measure(q) if measure is not None else {})}
                    return self.put(key, q, record)
        self.hits += 1
        return got


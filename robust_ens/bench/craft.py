"""Crafting adversarial sets through the store: the one batch routine every route that attacks shares.

``attack_batch`` keys a batch by everything that moves its pixels (see :mod:`.advsets`), reads it
from the store or attacks the surrogate, quantizes to uint8 within the budget and records what
quantization cost on the surrogate. The engine's transfer task calls it per batch;
``craft_set`` runs it over an :class:`~.examples.Examples`' fixed batches (seeds from
:func:`~.examples.batch_seed`) for ``robust-ens attack`` (:func:`attack_set`, then
``write_set``) and for :func:`~.transfer_task.transfer_table`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens import __version__
from robust_ens.atomic import atomic_write, atomic_write_text
from robust_ens.attacks import Attack
from robust_ens.bench.advsets import AdvSetStore, StoredSet, enforced_eps
from robust_ens.bench.examples import Examples, attack_cell_id, batch_seed
from robust_ens.bench.flops import gflops_per_s, pass_flops
from robust_ens.bench.targets import Target
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy, correct, predict


@functools.cache
def _cpu_description() -> str:
    """``x86_64; AMD EPYC; AVX512``: architecture, model (Linux: ``/proc/cpuinfo``) and the vector
    instructions torch dispatches to (``+AMX`` where the CPU has AMX); read once per process."""
    model, amx = "", False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    amx = amx or " amx_bf16" in line
    except OSError:
        pass
    if not model and platform.processor() != platform.machine():
        model = platform.processor()
    isa = torch.backends.cpu.get_cpu_capability() + ("+AMX" if amx else "")
    return "; ".join(p for p in (platform.machine(), model, isa) if p)


def device_name(device: torch.device) -> str:
    """The device as runs record it (``cost.device``; "the same device" for regress): the GPU's name, or
    the CPU's architecture, model and the vector instructions torch dispatches to, e.g. ``cpu (x86_64;
    AMD EPYC; AVX512)``. Two CPU models round some float32 kernels differently (seen: Intel with AMX
    against AMD EPYC, one ulp), so "the same device", where regress demands exact numbers, names the
    model; entries recorded before (``cpu (x86_64)``) name no model (:func:`names_the_cpu`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({_cpu_description()})"


def names_the_cpu(recorded_device: str) -> bool:
    """Whether a recorded ``cost.device`` identifies its device: a GPU's name, or a CPU with its model
    as :func:`device_name` writes it (``cpu (x86_64; AMD EPYC; AVX512)``); ``cpu`` and ``cpu (x86_64)`` do not."""
    return not recorded_device.startswith("cpu") or ";" in recorded_device


_SOURCE_DIGEST: str | None = None


def source_digest() -> str:
    """sha256 of the Python source of robust_ens and its attack library (every ``.py`` file).

    Part of the adversarial-set key: a set made by other code (an attack, a model's forward, the
    budget's quantization) is never served, even when nobody bumped an attack's ``code_version``;
    that is what lets ``robust-ens regress`` share the machine-wide store. Computed once per process.
    """
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        import robust_ens
        import robust_ens.attacks as attacks_pkg

        h = hashlib.sha256()
        for root in sorted({Path(robust_ens.__file__).parent, Path(attacks_pkg.__file__).parent}):
            for path in sorted(root.rglob("*.py")):
                h.update(f"{path.relative_to(root.parent).as_posix()}\n".encode())
                h.update(path.read_bytes().replace(b"\r\n", b"\n"))
        _SOURCE_DIGEST = h.hexdigest()
    return _SOURCE_DIGEST


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of what moves a module's outputs beyond its checkpoint files' sha256.

    The class path and ``repr`` of every submodule (architecture, an ensemble's ``combine`` and
    ``precision``, the normalization a checkpoint's JSON record gives), every buffer's bytes
    (normalization is a non-persistent buffer, outside the weights file), every parameter's name,
    dtype and shape, and which submodules are in training mode. Part of the adversarial-set key:
    the same weights behind another wrapper make another set.
    """
    h = hashlib.sha256()
    for name, m in module.named_modules():
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{m.training}\n".encode())
    h.update(repr(module).encode())
    for name, b in module.named_buffers():
        t = b.detach().cpu().contiguous().reshape(-1)
        h.update(f"\nbuffer {name} {b.dtype} {tuple(b.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for name, prm in module.named_parameters():
        h.update(f"\nparam {name} {prm.dtype} {tuple(prm.shape)}".encode())
    return h.hexdigest()


def attack_batch(
    store: AdvSetStore,
    atk: Attack,
    surrogate: Target,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    data_fingerprint: str,
    *,
    device: torch.device,
    target: torch.Tensor | None = None,
    on_cost: Callable[[dict[str, float]], None] | None = None,
    label: str = "",
) -> StoredSet:
    """One uint8 adversarial batch: from the store, or made on ``surrogate`` and stored.

    ``label`` names the batch in the message shown while another process is making it.
    """
    x = x_u8.to(device).float().div_(255)
    yd = y.to(device)
    td = target.to(device) if target is not None else None
    # everything that moves the set's pixels (a key that misses one serves a wrong set: see .advsets)
    fields = {"attack": atk.config(), "code_version": type(atk).code_version, "code": source_digest(),
              "surrogate": surrogate.sha256s,
              "surrogate_module": module_fingerprint(surrogate.module), "device": device_name(device),
              "torch": torch.__version__, "eps": atk.eps, "norm": atk.norm, "data": data_fingerprint,
              "indices": indices.tolist(), "seed": seed, "targeted": False if target is None else target.tolist()}
    if atk.norm != "Linf":
        raise RobustEnsError(f"the adversarial-set store holds Linf sets (uint8 within floor(255 eps)); got {atk.norm}")

    def make() -> tuple[torch.Tensor, dict[str, Any]]:
        res = atk(surrogate.module, x, yd, target=td, seed=seed)
        fwd, bwd = res.cost.forward * len(y), res.cost.backward * len(y)
        # measured after the attack, on one image (cached per architecture): the set is untouched
        flops = pass_flops(surrogate.module, tuple(x.shape[1:]), fwd, bwd, device)
        if on_cost is not None:
            on_cost({"seconds": res.cost.seconds, "forward": fwd, "backward": bwd, "flops": flops})
        return res.x_adv, {"cost": {**res.cost.as_dict(), "flops": flops}, "robust_ens": __version__,
                           "surrogate_acc_float": float(correct(surrogate.module, res.x_adv, yd).float().mean())}

    def measure(q: torch.Tensor) -> dict[str, Any]:
        # what quantization cost, measured once per set, on the surrogate it was made on
        return {"surrogate_acc_uint8": float(correct(surrogate.module, q.to(device), yd).float().mean())}

    first = int(indices[0]) if len(indices) else 0
    label = label or f"{atk.config()['name']} on {surrogate.name}, eps {atk.eps:.4g}, examples {first}+"
    return store.get_or_make(fields, x_u8, make, atk.eps, measure=measure, label=label)


@dataclass
class CraftedSet:
    """A whole adversarial set and what it cost."""

    x_adv: torch.Tensor  # uint8
    labels: torch.Tensor
    indices: torch.Tensor
    target: torch.Tensor | None
    records: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0

    def surrogate_accuracy(self) -> dict[str, float]:
        """Mean over batches (weighted by size) of the surrogate's accuracy on the float and stored sets."""
        n = sum(r["n"] for r in self.records) or 1
        return {k: sum(r[k] * r["n"] for r in self.records) / n for k in ("surrogate_acc_float", "surrogate_acc_uint8")}


TargetPicker = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def craft_set(
    store: AdvSetStore,
    atk: Attack,
    surrogate: Target,
    ex: Examples,
    *,
    seed: int,
    cell: str,
    device: torch.device,
    targets: TargetPicker | None = None,
    progress: bool = True,
) -> CraftedSet:
    """Attack the fixed batches of ``ex``; batch ``b`` uses :func:`~.examples.batch_seed` ``(seed, cell, b)``.

    Args:
        targets: Optional ``(batch, x float, y) -> target labels`` for a targeted attack
            (:func:`target_picker`).
    """
    from robust_ens import progress as _progress

    xs, ts, recs = [], [], []
    hits = 0
    with _progress.bar(total=len(ex.y), desc=f"attack {atk.config()['name']}", unit="img", enable=progress) as bar:
        for b, sl in enumerate(ex.batches):
            tgt = targets(b, ex.x_u8[sl].to(device).float().div(255), ex.y[sl].to(device)) if targets else None
            got = attack_batch(store, atk, surrogate, ex.x_u8[sl], ex.y[sl], ex.indices[sl], batch_seed(seed, cell, b),
                               ex.fingerprint, device=device, target=tgt)
            hits += int(got.hit)
            xs.append(got.x_adv)
            recs.append(got.record)
            if tgt is not None:
                ts.append(tgt.cpu())
            bar.update(sl.stop - sl.start)
    return CraftedSet(torch.cat(xs) if xs else ex.x_u8[:0].clone(), ex.y.clone(), ex.indices.clone(),
                      torch.cat(ts) if ts else None, recs, hits)


def target_picker(kind: str, surrogate: nn.Module, num_classes: int, seed: int, cell: str) -> TargetPicker | None:
    """Target labels of a targeted attack per batch (``None`` for ``"none"``).

    ``"random"``: a uniformly drawn wrong class, from a generator seeded by
    :func:`~.examples.batch_seed` ``(seed, cell + ":target", b)``; ``"least-likely"``: the
    surrogate's least likely class.
    """
    if kind == "none":
        return None
    if kind not in ("random", "least-likely"):
        raise RobustEnsError(f"targeted mode must be none, random or least-likely, got {kind!r}")

    def pick(b: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kind == "random":
            g = torch.Generator().manual_seed(batch_seed(seed, f"{cell}:target", b))
            return ((y.cpu() + 1 + torch.randint(0, num_classes - 1, y.shape, generator=g)) % num_classes).to(y.device)
        return predict(surrogate, x).argmin(-1).to(y.device)

    return pick


def attack_set(
    atk: Attack,
    surrogate: Target,
    ex: Examples,
    *,
    store: AdvSetStore,
    device: torch.device,
    seed: int = 0,
    targeted: str = "none",
    spec: str = "",
    combine: str | None = None,
    precision: str | None = None,
    data_name: str = "",
    split: str = "test",
    data_seed: int = 0,
    progress: bool = True,
) -> tuple[CraftedSet, dict[str, Any]]:
    """Craft a whole adversarial set on ``surrogate`` and its record (what ``robust-ens attack`` writes).

    Args:
        atk: The attack.
        surrogate: The resolved surrogate.
        ex: The examples (:meth:`~.examples.Examples.of`); attacked in their fixed batches.
        store: The adversarial-set store (batches already there are read, not attacked).
        device: Where the surrogate runs.
        seed: The attack seed (batch seeds from :func:`~.examples.batch_seed`).
        targeted: ``"none"``, ``"random"`` or ``"least-likely"``.
        spec, combine, precision: How the surrogate was given (recorded).
        data_name, split, data_seed: The dataset, split and subset seed (recorded).
        progress: A progress bar.

    Returns:
        The set and its record: the attack's canonical configuration, the surrogate and the sha256
        of its weights, the data subset, the budget measured on the uint8 set and the one storage
        enforces, the surrogate's clean accuracy and its accuracy on the float and stored sets (and
        the target hit rate when targeted), the cost and the provenance.

    Raises:
        RobustEnsError: when the stored set breaks the budget (the store guarantees it; never written).
    """
    cell = attack_cell_id(str(atk.config()["name"]), "surrogate", atk.eps)
    t0 = time.perf_counter()
    crafted = craft_set(store, atk, surrogate, ex, seed=seed, cell=cell, device=device, progress=progress,
                        targets=target_picker(targeted, surrogate.module, ex.num_classes, seed, cell))
    wall = time.perf_counter() - t0
    budget = budget_check(ex.x_u8, crafted.x_adv, atk.eps)
    if not budget["within_budget"]:
        raise RobustEnsError(f"budget check failed ({budget}); the set is not written")
    n = len(ex.indices)
    clean = accuracy(surrogate.module, ex.x_u8.to(device), ex.y.to(device))
    acc = crafted.surrogate_accuracy()
    hit = None
    if crafted.target is not None:
        pred = predict(surrogate.module, crafted.x_adv.to(device)).argmax(-1).cpu()
        hit = float((pred == crafted.target).float().mean())
    costs = [r.get("cost", {}) for r in crafted.records]
    ensemble = isinstance(surrogate.module, Ensemble)
    record = {
        "format": "robust-ens adversarial set v2 (uint8)",
        "attack": {"repr": repr(atk), **atk.config()},
        "surrogate": {"spec": spec, "sha256": surrogate.sha256s, "ensemble": ensemble,
                      "combine": combine if ensemble else None, "precision": precision},
        "data": {"name": data_name, "label": ex.label, "split": split, "n": n, "seed": data_seed},
        "eps": atk.eps,
        "norm": atk.norm,
        "targeted": targeted,
        "seed": seed,
        "budget": {**budget, "in_box": True},
        "surrogate_accuracy": {"clean": clean, "adversarial": acc["surrogate_acc_uint8"],
                               "adversarial_before_uint8": acc["surrogate_acc_float"],
                               **({"target_hit_rate": hit} if hit is not None else {})},
        "cost": {"forward_per_example": sum(c.get("forward", 0) * c.get("examples", 0) for c in costs) / max(n, 1),
                 "backward_per_example": sum(c.get("backward", 0) * c.get("examples", 0) for c in costs) / max(n, 1),
                 "attack_seconds": sum(c.get("seconds", 0.0) for c in costs), "wall_seconds": wall,
                 "flops": sum(c.get("flops", 0.0) for c in costs),
                 "gflops_per_s": gflops_per_s(sum(c.get("flops", 0.0) for c in costs),
                                              sum(c.get("seconds", 0.0) for c in costs)),
                 "batches_from_store": crafted.hits, "device": str(device)},
        "provenance": {"robust_ens": __version__, "torch": torch.__version__, "python": platform.python_version(),
                       "command": sys.argv},
    }
    return crafted, record


def write_set(path: str | Path, crafted: CraftedSet, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (``x_adv`` uint8, ``labels``, ``indices``, ``target``) and ``<path>.json``.

    Both are written through temp files and renamed, so an interrupted write leaves nothing half-written.

    Raises:
        RobustEnsError: when the folder cannot be created or written (one line, naming ``--out``).
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors") if out.suffix not in (".json",) else out.with_suffix(".safetensors")
    side = out.with_suffix(".json")
    tensors = {"x_adv": crafted.x_adv.contiguous(), "labels": crafted.labels.contiguous(),
               "indices": crafted.indices.to(torch.int64).contiguous()}
    if crafted.target is not None:
        tensors["target"] = crafted.target.contiguous()
    try:
        atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "robust-ens adversarial set (uint8)"}))
        atomic_write_text(side, json.dumps(record, indent=2, default=str) + "\n")
    except OSError as err:
        raise RobustEnsError(f"--out {path}: cannot write there ({err.strerror or err}); pick a writable path") from None
    return out, side


def check_writable(path: str | Path) -> None:
    """Fail before any work when ``--out``'s folder cannot be created or written."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, suffix=".tmp")
        os.close(fd)
        Path(tmp).unlink()
    except OSError as err:
        raise RobustEnsError(f"--out {path}: cannot write there ({err.strerror or err}); pick a writable path") from None


def budget_check(x_u8: torch.Tensor, x_adv_u8: torch.Tensor, eps: float) -> dict[str, Any]:
    """The budget measured on the stored uint8 tensors (in 1/255 levels and in [0, 1] units)."""
    d = (x_adv_u8.int() - x_u8.int()).abs()
    levels = int(d.max()) if d.numel() else 0
    return {"eps": eps, "enforced_eps": enforced_eps(eps), "max_linf": levels / 255, "max_change_levels": levels,
            "within_budget": levels / 255 <= eps + 1e-12}

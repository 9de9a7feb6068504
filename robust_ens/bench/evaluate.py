"""The evaluate stage: per-example correctness per (target, cell), and the typed results built from it.

A task (:mod:`.transfer_task`, :mod:`.whitebox_task`, :mod:`.corruptions_task`) gets a
:class:`RunContext` from the runner, computes each cell's boolean vector batch by batch through
:meth:`RunContext.cell` (finished cells and batches are read back from the run folder; under
``torchrun`` each process takes its batches and the vectors are gathered) and returns a
:class:`RunResult`. Every number in a result is an aggregation of those vectors (see
:mod:`.aggregate`); :mod:`.report` turns a result into leaderboard entries and the printed table.

A :class:`RunResult` reads like the ``summary.json`` it is written as (``result["targets"]``), and
:meth:`RunResult.from_summary` reads such a file back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from robust_ens import __version__
from robust_ens.bench import aggregate as agg
from robust_ens.bench import distributed as dd
from robust_ens.bench.advsets import AdvSetStore
from robust_ens.bench.examples import Examples
from robust_ens.bench.flops import gflops_per_s as _gflops
from robust_ens.bench.protocol import Protocol, Tier
from robust_ens.bench.runfolder import RunFolder
from robust_ens.bench.targets import Target
from robust_ens.evaluation import correct

# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class AttackCell:
    """An (attack, surrogate, eps) cell; white-box cells name the surrogate ``white-box``."""

    id: str
    attack: str
    surrogate: str
    eps: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"id": self.id, "attack": self.attack, "surrogate": self.surrogate, "eps": self.eps}


@dataclass(frozen=True)
class CorruptionCell:
    """A (corruption, severity) cell."""

    id: str
    corruption: str
    severity: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"id": self.id, "corruption": self.corruption, "severity": self.severity}


AnyCell = AttackCell | CorruptionCell


def cell_from_dict(d: Mapping[str, Any]) -> AnyCell:
    """A cell from its JSON form."""
    if "corruption" in d:
        return CorruptionCell(str(d["id"]), str(d["corruption"]), int(d["severity"]))
    return AttackCell(str(d["id"]), str(d["attack"]), str(d["surrogate"]), float(d["eps"]))


# --------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` examples, their share ``acc`` and its Wilson 95% interval."""

    acc: float
    k: int
    n: int
    ci95: tuple[float, float]

    @classmethod
    def of(cls, ok: torch.Tensor) -> Rate:
        """The rate of a boolean vector."""
        r = agg.rate(ok)
        return cls(r["acc"], r["k"], r["n"], (r["ci95"][0], r["ci95"][1]))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rate:
        """From its JSON form."""
        return cls(d["acc"], d["k"], d["n"], (d["ci95"][0], d["ci95"][1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"acc", "k", "n", "ci95": [lo, hi]}``."""
        return {"acc": self.acc, "k": self.k, "n": self.n, "ci95": list(self.ci95)}


@dataclass(frozen=True)
class Success:
    """Transfer success on one target: the share of its clean-correct examples an attack makes wrong."""

    success: float
    k: int
    n: int
    ci95: tuple[float, float]

    @classmethod
    def of(cls, clean_ok: torch.Tensor, adv_ok: torch.Tensor) -> Success:
        """See :func:`~robust_ens.bench.aggregate.success_rate`."""
        r = agg.success_rate(clean_ok, adv_ok)
        return cls(r["success"], r["k"], r["n"], (r["ci95"][0], r["ci95"][1]))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Success:
        """From its JSON form."""
        return cls(d["success"], d["k"], d["n"], (d["ci95"][0], d["ci95"][1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"success": self.success, "k": self.k, "n": self.n, "ci95": list(self.ci95)}


@dataclass(frozen=True)
class CellResult:
    """One cell of one target: the cell and the rate of its per-example vector."""

    cell: AnyCell
    rate: Rate

    @property
    def id(self) -> str:
        """The cell's id."""
        return self.cell.id

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the cell's fields and the rate's."""
        return {**self.cell.to_dict(), **self.rate.to_dict()}


# --------------------------------------------------------------------------- per target


@dataclass(frozen=True)
class SanityResult:
    """A target's white-box sanity measurements on the first ``n`` examples (see :func:`agg.whitebox_flags`)."""

    n: int
    eps: float
    steps: int
    randomized: bool
    nonfinite_grad: bool
    zero_grad_fraction: float
    whitebox_acc: float
    whitebox_acc_2x: float
    transfer_worst: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``transfer_worst`` only once measured)."""
        out = {"n": self.n, "eps": self.eps, "steps": self.steps, "randomized": self.randomized,
               "nonfinite_grad": self.nonfinite_grad, "zero_grad_fraction": self.zero_grad_fraction,
               "whitebox_acc": self.whitebox_acc, "whitebox_acc_2x": self.whitebox_acc_2x}
        if self.transfer_worst is not None:
            out["transfer_worst"] = self.transfer_worst
        return out


@dataclass
class TargetResult:
    """Everything a run measured on one target.

    Attributes:
        name: The target's name in the run.
        model: What it resolved to (:meth:`~robust_ens.bench.targets.Target.describe`).
        clean: Clean accuracy.
        per_class: Accuracy per class: ``"clean"`` and, per eps, the worst case.
        cells: One result per cell, in the run's cell order.
        worst_case: Per eps (``"0.1"``), the examples that survive clean and every cell of that
            eps; ``None`` for a task without eps (corruptions).
        flags: Sanity flags.
        sanity: White-box sanity measurements (transfer tasks).
        metrics: Task metrics reported beside the cells (``mean_corruption_accuracy``).
    """

    name: str
    model: dict[str, Any]
    clean: Rate
    per_class: dict[str, list[float | None]]
    cells: list[CellResult]
    worst_case: dict[str, Rate] | None = None
    flags: list[str] = field(default_factory=list)
    sanity: SanityResult | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (one row of ``summary.json``'s ``targets``)."""
        out: dict[str, Any] = {"model": self.model, "clean": self.clean.to_dict(), "per_class": self.per_class,
                               "cells": [c.to_dict() for c in self.cells]}
        if self.worst_case is not None:
            out["worst_case"] = {e: r.to_dict() for e, r in self.worst_case.items()}
        out["flags"] = list(self.flags)
        if self.sanity is not None:
            out["sanity"] = self.sanity.to_dict()
        out.update(self.metrics)
        return out

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> TargetResult:
        """From its JSON form."""
        known = {"model", "clean", "per_class", "cells", "worst_case", "flags", "sanity"}
        san = d.get("sanity")
        return cls(
            name, dict(d["model"]), Rate.from_dict(d["clean"]), {k: list(v) for k, v in d.get("per_class", {}).items()},
            [CellResult(cell_from_dict(c), Rate.from_dict(c)) for c in d["cells"]],
            {e: Rate.from_dict(r) for e, r in d["worst_case"].items()} if "worst_case" in d else None,
            list(d.get("flags", [])), SanityResult(**san) if san else None,
            {k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class AttackEpsView:
    """An attack suite's view of one (attack, eps): success per target, their mean and minimum."""

    surrogate: str
    per_target: dict[str, Success]
    mean: float
    min: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"surrogate": self.surrogate, "per_target": {t: s.to_dict() for t, s in self.per_target.items()},
                "mean": self.mean, "min": self.min}


# --------------------------------------------------------------------------- the run


@dataclass
class Cost:
    """What a run spent: attack and evaluation seconds, passes, FLOPs, adversarial batches made and reused.

    ``flops`` counts the crafting this run did (sets read from the store cost nothing), from each
    attack's member-example passes and its surrogate's FLOPs per pass measured on one image
    (:mod:`.flops`: a forward, and a backward as attacks make it, the input gradient, measured,
    about 1x the forward); ``eval_flops`` the targets' forward passes where a task counts them.
    The JSON form adds the achieved rates, ``gflops_per_s`` (``flops / attack_seconds``) and
    ``eval_gflops_per_s``, ``None`` when nothing was counted. None of these enter a leaderboard entry.
    """

    attack_seconds: float = 0.0
    eval_seconds: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    advsets_made: int = 0
    advsets_reused: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    flops: float = 0.0
    eval_flops: float = 0.0

    def add_attack(self, c: Mapping[str, float]) -> None:
        """Add an attack's ``{"seconds", "forward", "backward"}`` (and ``"flops"`` when measured)."""
        self.attack_seconds += c["seconds"]
        self.forward += c["forward"]
        self.backward += c["backward"]
        self.flops += c.get("flops", 0.0)

    def add_eval(self, seconds: float, flops: float = 0.0) -> None:
        """Add an evaluation's seconds and FLOPs (:func:`.flops.ensemble_forward_flops` x images)."""
        self.eval_seconds += seconds
        self.eval_flops += flops

    @property
    def gflops_per_s(self) -> float | None:
        """Achieved crafting GFLOP/s (``None`` when no crafting was counted)."""
        return _gflops(self.flops, self.attack_seconds)

    @property
    def eval_gflops_per_s(self) -> float | None:
        """Achieved evaluation GFLOP/s (``None`` when no evaluation FLOPs were counted)."""
        return _gflops(self.eval_flops, self.eval_seconds)

    def speed_text(self) -> str:
        """``crafting 1.2 TFLOP at 45.6 GFLOP/s`` (and evaluation's), or ``""`` when nothing was counted."""
        parts = [f"{what} {_si(f)}FLOP at {r:.1f} GFLOP/s" for what, f, r in
                 (("crafting", self.flops, self.gflops_per_s), ("evaluation", self.eval_flops, self.eval_gflops_per_s))
                 if r is not None]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"attack_seconds": self.attack_seconds, "eval_seconds": self.eval_seconds, "forward": self.forward,
                "backward": self.backward, "advsets_made": self.advsets_made, "advsets_reused": self.advsets_reused,
                "seconds": self.seconds, "device": self.device, "flops": self.flops,
                "gflops_per_s": self.gflops_per_s, "eval_flops": self.eval_flops,
                "eval_gflops_per_s": self.eval_gflops_per_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cost:
        """From its JSON form; a summary written before a field existed reads it as 0 (rates are derived)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _si(x: float) -> str:
    """``1.23 G`` style: the number with an SI prefix and a space."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return f"{x / factor:.3g} {prefix}"
    return f"{x:.3g} "


_HEADER = ("suite", "version", "kind", "task", "tier", "digest", "dataset", "split", "n", "seed", "norm", "eps",
           "attacks", "surrogates", "reference", "robust_ens")


@dataclass
class RunResult(Mapping[str, Any]):
    """One run of one protocol tier: what ran, on which examples, and every target's results.

    It reads like its JSON form (``summary.json``): ``result["targets"][name]["clean"]["acc"]``.
    The task-specific notes are ``None`` when the task has none: ``enforced_eps`` (transfer: the
    budget uint8 storage enforces per eps), ``autoattack`` (white-box: package and options),
    ``preset`` (corruptions) and ``attack_view`` (attack suites: success per attack and eps).
    """

    suite: str
    version: int
    kind: str
    task: str
    tier: str
    digest: str
    dataset: str
    split: str
    n: int
    seed: int
    norm: str
    eps: list[float]
    attacks: list[str]
    surrogates: list[str]
    reference: str | None
    robust_ens: str
    cells: list[AnyCell] = field(default_factory=list)
    targets: dict[str, TargetResult] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    enforced_eps: dict[str, float] | None = None
    autoattack: dict[str, Any] | None = None
    preset: str | None = None
    attack_view: dict[str, dict[str, AttackEpsView]] | None = None

    def to_summary(self) -> dict[str, Any]:
        """The JSON form written as ``summary.json``."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _HEADER}
        out["eps"], out["attacks"], out["surrogates"] = list(self.eps), list(self.attacks), list(self.surrogates)
        out["targets"] = {name: t.to_dict() for name, t in self.targets.items()}
        out["cells"] = [c.to_dict() for c in self.cells]
        for key in ("enforced_eps", "autoattack", "preset"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.attack_view is not None:
            out["attack_view"] = {a: {e: v.to_dict() for e, v in per.items()} for a, per in self.attack_view.items()}
        out["cost"] = self.cost.to_dict()
        return out

    @classmethod
    def from_summary(cls, s: Mapping[str, Any]) -> RunResult:
        """A result from its JSON form (a ``summary.json`` read back)."""
        view = s.get("attack_view")
        header: dict[str, Any] = {k: s.get(k) for k in _HEADER}
        return cls(
            **header,
            cells=[cell_from_dict(c) for c in s.get("cells", [])],
            targets={name: TargetResult.from_dict(name, row) for name, row in s.get("targets", {}).items()},
            cost=Cost.from_dict(s.get("cost", {})), enforced_eps=s.get("enforced_eps"), autoattack=s.get("autoattack"),
            preset=s.get("preset"),
            attack_view=None if view is None else {
                a: {e: AttackEpsView(v["surrogate"], {t: Success.from_dict(r) for t, r in v["per_target"].items()},
                                     v["mean"], v["min"]) for e, v in per.items()} for a, per in view.items()})

    # ---- read like summary.json
    def __getitem__(self, key: str) -> Any:
        return self.to_summary()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_summary())

    def __len__(self) -> int:
        return len(self.to_summary())


# --------------------------------------------------------------------------- what a task runs in


@dataclass
class RunContext:
    """What a task needs from the runner: the tier, its examples, the run folder, the store and the device.

    Attributes:
        surrogate: Resolves a protocol surrogate by name (resolved once, trained when a recipe).
        cost: Filled by the task as it attacks and evaluates.
        corruption_cache: Whether the corruptions task reads and writes corrupted copies in the
            data cache (they are the same bytes either way).
    """

    protocol: Protocol
    tier: Tier
    ex: Examples
    folder: RunFolder
    store: AdvSetStore
    device: torch.device
    surrogate: Callable[[str], Target]
    progress: bool = True
    cost: Cost = field(default_factory=Cost)
    corruption_cache: bool = True

    def cell(self, target: str, cell: str, compute: Callable[[int, slice], torch.Tensor]) -> torch.Tensor:
        """Per-example correctness of ``target`` in ``cell``: read if finished, else computed per batch."""
        done = self.folder.load(target, cell)
        if done is not None and len(done) == len(self.ex.y):
            return done
        local: dict[int, torch.Tensor] = {}
        for b, sl in enumerate(self.ex.batches):
            if not dd.mine(b):
                continue
            got = self.folder.load_batch(target, cell, b)
            if got is None or len(got) != sl.stop - sl.start:
                got = compute(b, sl).bool().cpu()
                self.folder.save_batch(target, cell, b, got)
            local[b] = got
        merged = dd.gather(local)
        vec = torch.cat([merged[b] for b in range(len(self.ex.batches))])
        self.folder.save(target, cell, vec, self.ex.indices)
        dd.barrier()
        return vec

    def batch(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``sl`` as float images in [0, 1] and labels, on the device."""
        return self.ex.x_u8[sl].to(self.device).float().div_(255), self.ex.y[sl].to(self.device)

    def clean(self, t: Target) -> torch.Tensor:
        """Clean per-example correctness."""
        def compute(b: int, sl: slice) -> torch.Tensor:
            x, y = self.batch(sl)
            return correct(t.module, x, y, batch_size=self.ex.batch_size)
        return self.cell(t.name, "clean", compute)

    def bar(self, total: int) -> Any:
        """A progress bar over ``total`` cells."""
        from robust_ens import progress

        return progress.bar(total=total, desc=f"{self.protocol.suite}/{self.tier.name}", unit="cell",
                            enable=self.progress)

    def per_target(self, targets: Sequence[Target], cells: Sequence[AnyCell],
                   compute: Callable[[Target, Any, int, slice], torch.Tensor],
                   ) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """``{target: (clean vector, {cell id: vector})}``, each target on its own, cell by cell.

        For tasks that attack (or corrupt) per target: ``compute(target, cell, batch, slice)``.
        """
        out: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        bar = self.bar(len(targets) * (len(cells) + 1))
        for t in targets:
            clean = self.clean(t)
            bar.update(1)
            results: dict[str, torch.Tensor] = {}
            for c in cells:
                results[c.id] = self.cell(t.name, c.id, functools.partial(compute, t, c))
                bar.update(1)
            out[t.name] = (clean, results)
        bar.close()
        return out

    def result(self, cells: Sequence[AnyCell], **notes: Any) -> RunResult:
        """An empty result of this run (the protocol's header and its cells); tasks add the targets."""
        p, t = self.protocol, self.tier
        return RunResult(suite=p.suite, version=p.version, kind=p.kind, task=p.task, tier=t.name,
                         digest=p.digest(t.name), dataset=self.ex.label, split=p.split, n=len(self.ex.y), seed=p.seed,
                         norm=p.norm, eps=list(t.eps), attacks=list(t.attacks), surrogates=list(t.all_surrogates),
                         reference=p.reference, robust_ens=__version__, cells=list(cells), cost=self.cost, **notes)

    def target_result(self, t: Target, clean: torch.Tensor, cells: Sequence[AnyCell],
                      results: Mapping[str, torch.Tensor], *, worst_case: bool = True) -> TargetResult:
        """A target's result from its vectors: rates per cell and, per eps, the worst case and per class."""
        k, y = self.ex.num_classes, self.ex.y
        row = TargetResult(t.name, t.describe(), Rate.of(clean), {"clean": agg.per_class(clean, y, k)},
                           [CellResult(c, Rate.of(results[c.id])) for c in cells])
        if not worst_case:
            return row
        row.worst_case = {}
        for e in sorted({c.eps for c in cells if isinstance(c, AttackCell)}):
            w = agg.worst_case([clean, *(results[c.id] for c in cells if isinstance(c, AttackCell) and c.eps == e)])
            row.worst_case[f"{e:.6g}"] = Rate.of(w)
            row.per_class[f"{e:.6g}"] = agg.per_class(w, y, k)
        return row

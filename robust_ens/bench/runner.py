"""Run a protocol: resolve targets, make (or reuse) adversarial sets, evaluate, aggregate.

``run_suite`` is what ``robust-ens bench run`` and the pytest suites call. Per task:

- ``transfer``: for every (attack, surrogate, eps) cell, fixed global batches are attacked once
  on the surrogate (the store caches each batch's uint8 set); every target is then evaluated
  forward-only. Each target also gets white-box sanity cells (PGD with ``steps`` and
  ``2 * steps`` at the largest eps on the first ``sanity.n`` examples) for the flags.
- ``whitebox``: AutoAttack (``pyautoattack``) on each target, per batch.
- ``corruptions``: each (corruption, severity) copy of the examples, seeded per example.
- ``depth``: a KITTI-C tree scored with RoboDepth's metrics (see :func:`run_depth`).

Batches are fixed by the protocol (``tier.batch_size``) and seeded from (protocol seed, cell,
batch index); under ``torchrun`` rank ``r`` takes the batches ``b % world == r``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robust_ens import __version__, data
from robust_ens.attacks import create_attack
from robust_ens.bench import aggregate as agg
from robust_ens.bench import distributed as dd
from robust_ens.bench.advsets import AdvSetStore, dataset_fingerprint, enforced_eps
from robust_ens.bench.craft import attack_batch
from robust_ens.bench.protocol import Protocol, Tier, get_suite
from robust_ens.bench.runfolder import RunFolder
from robust_ens.bench.targets import Target, check_target, resolve_target, resolve_trained
from robust_ens.canonical import sha256_json
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import correct, eval_mode, predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetArg:
    """A target as the user gave it: a spec, optional weights and an optional display name."""

    spec: str
    weights: str | None = None
    name: str | None = None


@dataclass
class Examples:
    """The protocol's examples: uint8 images, labels, their indices into the split, and batches."""

    x_u8: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    label: str
    fingerprint: str
    num_classes: int
    batch_size: int
    batches: list[slice] = field(default_factory=list)


def dataset_label(name: str) -> str:
    """What entries call the data actually found: ``cifar10-jpeg`` for the JPEG copies."""
    if name == "cifar10":
        kind, path = data.find_cifar10(split="test")
        if kind is not None and "jpeg" in str(path).lower():
            return "cifar10-jpeg"
        return "cifar10" if kind is not None else name
    return name


def load_examples(protocol: Protocol, tier: Tier) -> Examples:
    """The tier's examples (the same ``(n, seed)`` always gives the same ones)."""
    xu, y = data.load_uint8(protocol.dataset, protocol.split)
    if tier.n > len(y):
        raise RobustEnsError(
            f"tier {tier.name!r} of {protocol.suite} needs n={tier.n} examples but {protocol.dataset} {protocol.split} "
            f"has {len(y)}; use a smaller tier"
        )
    idx = data.subset_indices(y, tier.n, protocol.seed)
    x, yy = xu[idx].contiguous(), y[idx].contiguous()
    label = dataset_label(protocol.dataset)
    b = tier.batch_size
    return Examples(x, yy, idx, label, dataset_fingerprint(x, yy, label), data.info(protocol.dataset).num_classes, b,
                    [slice(i, min(i + b, len(yy))) for i in range(0, len(yy), b)])


def batch_seed(protocol_seed: int, cell: str, batch: int) -> int:
    """The seed of one batch of one cell, from (protocol seed, cell, batch index) only."""
    return int(sha256_json({"seed": protocol_seed, "cell": cell, "batch": batch})[:15], 16)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from robust_ens import progress

    return progress.bar(total=total, desc=desc, unit="cell", enable=enabled)


# --------------------------------------------------------------------------- the engine


class Engine:
    """One run of one protocol tier.

    Args:
        protocol: The protocol.
        tier: The tier's name.
        out: The run folder.
        device: Where models run.
        store: The adversarial-set store's folder (default ``<out>/advsets``).
        progress: Show progress bars.
    """

    def __init__(self, protocol: Protocol, tier: str, out: str | Path, *, device: str | torch.device = "cpu",
                 store: str | Path | None = None, progress: bool = True, target_option: str = "--target") -> None:
        self.protocol = protocol
        self.target_option = target_option
        self.tier = protocol.tier(tier)
        self.device = torch.device(device)
        dd.init_from_env(self.device)
        self.folder = RunFolder(out, protocol, tier, write=dd.is_main())
        self.store = AdvSetStore(store if store is not None else Path(out) / "advsets")
        self.progress = progress and dd.is_main()
        self.ex = load_examples(protocol, self.tier)
        self._surrogates: dict[str, Target] = {}
        self.cost = {"attack_seconds": 0.0, "eval_seconds": 0.0, "forward": 0.0, "backward": 0.0,
                     "advsets_made": 0, "advsets_reused": 0}

    # ---- targets and surrogates
    def resolve(self, arg: TargetArg) -> Target:
        """Resolve and check a target against the suite's dataset (errors name ``--target``)."""
        try:
            return self._resolve(arg)
        except RobustEnsError as err:
            if self.target_option in str(err) or "--weights" in str(err):
                raise
            raise RobustEnsError(f"{self.target_option} {arg.spec}: {err}") from None

    def _resolve(self, arg: TargetArg) -> Target:
        if arg.spec in self.protocol.surrogates and not arg.weights:
            t = self.surrogate(arg.spec)
        else:
            t = resolve_target(arg.spec, weights=arg.weights, dataset=self.protocol.dataset, device=self.device,
                               name=arg.name)
        if arg.name:
            t.name = arg.name
        check_target(t, self.ex.x_u8[:2].float().div(255), self.ex.num_classes, self.ex.label)
        return t

    def surrogate(self, name: str) -> Target:
        """A protocol surrogate (resolved once; trained and cached when it is a recipe)."""
        if name not in self._surrogates:
            s = self.protocol.surrogates[name]
            if s.train:
                t = resolve_trained(name, s.train, self.protocol.dataset, device=self.device, progress=self.progress)
            else:
                t = resolve_target(",".join(s.members), dataset=self.protocol.dataset, device=self.device, name=name)
                if isinstance(t.module, Ensemble):
                    t.module.precision = "fp32"  # surrogates craft in fp32 on every device, as trained ones do
            t.name = name
            self._surrogates[name] = t
        return self._surrogates[name]

    # ---- the batched cell loop
    def _cell(self, target: str, cell: str, compute: Callable[[int, slice], torch.Tensor]) -> torch.Tensor:
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

    def _xb(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xu = self.ex.x_u8[sl]
        return xu, xu.to(self.device).float().div_(255), self.ex.y[sl].to(self.device)

    def clean(self, t: Target) -> torch.Tensor:
        """Clean per-example correctness."""
        def compute(b: int, sl: slice) -> torch.Tensor:
            _, x, y = self._xb(sl)
            return correct(t.module, x, y, batch_size=self.ex.batch_size)
        return self._cell(t.name, "clean", compute)

    # ---- transfer
    def transfer_cells(self) -> list[dict[str, Any]]:
        """The tier's (attack, surrogate, eps) cells, in a fixed order."""
        return [{"id": f"{a}@{s}@{e:.6g}", "attack": a, "surrogate": s, "eps": e}
                for s in self.tier.all_surrogates for a in self.tier.attacks if s in self.tier.surrogates_for(a)
                for e in self.tier.eps]

    def advset(self, cell: dict[str, Any], b: int, sl: slice) -> torch.Tensor:
        """The uint8 adversarial batch ``b`` of ``cell`` (from the store, or made now)."""
        atk = self.protocol.attacks[cell["attack"]].build(cell["eps"], steps=self.tier.steps)

        def on_cost(c: dict[str, float]) -> None:
            self.cost["attack_seconds"] += c["seconds"]
            self.cost["forward"] += c["forward"]
            self.cost["backward"] += c["backward"]

        got = attack_batch(self.store, atk, self.surrogate(cell["surrogate"]), self.ex.x_u8[sl], self.ex.y[sl],
                           self.ex.indices[sl], batch_seed(self.protocol.seed, cell["id"], b), self.ex.fingerprint,
                           device=self.device, on_cost=on_cost)
        self.cost["advsets_reused" if got.hit else "advsets_made"] += 1
        return got.x_adv

    def transfer(self, t: Target, cell: dict[str, Any]) -> torch.Tensor:
        """Per-example correctness of target ``t`` on the cell's adversarial sets."""
        def compute(b: int, sl: slice) -> torch.Tensor:
            adv = self.advset(cell, b, sl)
            t0 = time.perf_counter()
            ok = correct(t.module, adv.to(self.device), self.ex.y[sl].to(self.device), batch_size=self.ex.batch_size)
            self.cost["eval_seconds"] += time.perf_counter() - t0
            return ok
        return self._cell(t.name, cell["id"], compute)

    # ---- sanity
    def sanity(self, t: Target, eps: float) -> dict[str, Any]:
        """White-box sanity measurements on the first ``sanity.n`` examples (see :mod:`aggregate`)."""
        s = self.tier.sanity
        n = min(s.n, len(self.ex.y))
        if n <= 0:
            return {}
        x = self.ex.x_u8[:n].to(self.device).float().div(255)
        y = self.ex.y[:n].to(self.device)
        out: dict[str, Any] = {"n": n, "eps": eps, "steps": s.steps}
        with torch.no_grad():
            a, b = predict(t.module, x), predict(t.module, x)
        out["randomized"] = not torch.allclose(a, b, rtol=0, atol=1e-6)
        xg = x.clone().requires_grad_(True)
        with eval_mode(t.module):
            loss = F.cross_entropy(t.module(xg), y, reduction="sum")
        g = torch.autograd.grad(loss, xg, allow_unused=True)[0]
        g = torch.zeros_like(x) if g is None else g
        out["nonfinite_grad"] = bool((~torch.isfinite(g)).any())
        out["zero_grad_fraction"] = float((g.flatten(1).abs().amax(1) == 0).float().mean())
        for label, steps in (("whitebox_acc", s.steps), ("whitebox_acc_2x", 2 * s.steps)):
            cell = f"sanity:pgd{steps}@{eps:.6g}"
            vec = self.folder.load(t.name, cell)
            if vec is None or len(vec) != n:
                atk = create_attack("pgd", eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
                res = atk(t.module, x, y, seed=batch_seed(self.protocol.seed, cell, 0))
                vec = correct(t.module, res.x_adv, y).cpu()
                self.folder.save(t.name, cell, vec, self.ex.indices[:n])
            out[label] = float(vec.float().mean())
        return out

    # ---- the whole run
    def run(self, targets: Sequence[TargetArg]) -> dict[str, Any]:
        """Run the tier on ``targets`` (the tier's own panel when empty); return the summary."""
        t0 = time.perf_counter()
        args = list(targets) or [TargetArg(spec=s) for s in self.tier.targets]
        if not args:
            raise RobustEnsError(f"{self.protocol.suite} needs at least one --target SPEC")
        resolved = [self.resolve(a) for a in args]
        names = [t.name for t in resolved]
        if len(set(names)) != len(names):
            raise RobustEnsError(f"two targets share a name ({', '.join(names)}); give them --name")
        # only now, with every target resolved and checked, does the run folder get written
        self.folder.open()
        dd.barrier()
        for t in resolved:
            self.folder.set_target(t.name, t.describe())
        task = self.protocol.task
        if task == "transfer":
            summary = self._run_transfer(resolved)
        elif task == "whitebox":
            summary = self._run_whitebox(resolved)
        elif task == "corruptions":
            summary = self._run_corruptions(resolved)
        else:
            raise RobustEnsError(f"task {task!r} runs through run_depth, not the classifier engine")
        summary["cost"] = {**self.cost, "seconds": time.perf_counter() - t0, "device": _device_name(self.device)}
        return summary

    def _header(self) -> dict[str, Any]:
        p, t = self.protocol, self.tier
        return {"suite": p.suite, "version": p.version, "kind": p.kind, "task": p.task, "tier": t.name,
                "digest": p.digest(t.name), "dataset": self.ex.label, "split": p.split, "n": len(self.ex.y),
                "seed": p.seed, "norm": p.norm, "eps": list(t.eps), "attacks": list(t.attacks),
                "surrogates": list(t.all_surrogates), "reference": p.reference, "robust_ens": __version__,
                "targets": {}}

    def _target_summary(self, t: Target, clean: torch.Tensor, cells: list[dict[str, Any]],
                        results: dict[str, torch.Tensor]) -> dict[str, Any]:
        k = self.ex.num_classes
        row: dict[str, Any] = {"model": t.describe(), "clean": agg.rate(clean),
                               "per_class": {"clean": agg.per_class(clean, self.ex.y, k)},
                               "cells": agg.summarize_cells(cells, results), "worst_case": {}, "flags": []}
        for e in sorted({c["eps"] for c in cells}):
            w = agg.worst_case([clean, *(results[c["id"]] for c in cells if c["eps"] == e)])
            row["worst_case"][f"{e:.6g}"] = agg.rate(w)
            row["per_class"][f"{e:.6g}"] = agg.per_class(w, self.ex.y, k)
        return row

    def _run_transfer(self, targets: list[Target]) -> dict[str, Any]:
        summary = self._header()
        cells = self.transfer_cells()
        summary["cells"] = cells
        summary["enforced_eps"] = {f"{e:.6g}": enforced_eps(e) for e in self.tier.eps}
        bar = _progress(len(targets) * (len(cells) + 1), f"{self.protocol.suite}/{self.tier.name}", self.progress)
        cleans: dict[str, torch.Tensor] = {}
        per_target: dict[str, dict[str, torch.Tensor]] = {t.name: {} for t in targets}
        for t in targets:
            cleans[t.name] = self.clean(t)
            bar.update(1)
        # cell-major: each adversarial batch is made (or read) once and evaluated on every target
        for cell in cells:
            for t in targets:
                per_target[t.name][cell["id"]] = self.transfer(t, cell)
                bar.update(1)
        bar.close()
        e_max = max(self.tier.eps)
        for t in targets:
            row = self._target_summary(t, cleans[t.name], cells, per_target[t.name])
            worst = {float(k): v["acc"] for k, v in row["worst_case"].items()}
            row["flags"] += agg.eps_flags(worst, len(self.ex.y))
            san = self.sanity(t, e_max)
            if san:
                n = san["n"]
                w = agg.worst_case([cleans[t.name][:n], *(per_target[t.name][c["id"]][:n]
                                                          for c in cells if c["eps"] == e_max)])
                row["sanity"] = {**san, "transfer_worst": float(w.float().mean())}
                row["flags"] += agg.whitebox_flags(san, float(w.float().mean()))
            summary["targets"][t.name] = row
        if self.protocol.kind == "attack":
            summary["attack_view"] = self._attack_view(targets, cells, cleans, per_target)
        return summary

    def _attack_view(self, targets: list[Target], cells: list[dict[str, Any]], cleans: dict[str, torch.Tensor],
                     per_target: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Per attack: success rate per target at each eps, with their mean and minimum."""
        view: dict[str, Any] = {}
        for c in cells:
            rates = {t.name: agg.success_rate(cleans[t.name], per_target[t.name][c["id"]]) for t in targets}
            succ = [r["success"] for r in rates.values()]
            view.setdefault(c["attack"], {})[f"{c['eps']:.6g}"] = {
                "surrogate": c["surrogate"], "per_target": rates, "mean": sum(succ) / len(succ), "min": min(succ)}
        return view

    # ---- white-box and corruptions: each target attacked (or corrupted) on its own
    def _per_target(self, targets: list[Target], cells: list[dict[str, Any]],
                    compute: Callable[[Target, dict[str, Any], int, slice], torch.Tensor],
                    ) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """``{target: (clean vector, {cell id: vector})}``, each cell computed per batch by ``compute``."""
        out: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        bar = _progress(len(targets) * (len(cells) + 1), f"{self.protocol.suite}/{self.tier.name}", self.progress)
        for t in targets:
            clean = self.clean(t)
            bar.update(1)
            results: dict[str, torch.Tensor] = {}
            for cell in cells:
                results[cell["id"]] = self._cell(t.name, cell["id"], functools.partial(compute, t, cell))
                bar.update(1)
            out[t.name] = (clean, results)
        bar.close()
        return out

    def _run_whitebox(self, targets: list[Target]) -> dict[str, Any]:
        try:
            from pyautoattack import AutoAttack
        except ImportError:
            raise RobustEnsError(
                "cifar10-whitebox needs the original AutoAttack: pip install 'robust-ens[autoattack]' "
                "(the package pyautoattack)"
            ) from None
        from robust_ens.attacks import enforce_budget

        summary = self._header()
        opts = dict(self.tier.options)
        version = str(opts.get("version", "standard"))
        cells: list[dict[str, Any]] = [{"id": f"autoattack-{version}@{e:.6g}", "attack": f"autoattack-{version}",
                                        "surrogate": "white-box", "eps": e} for e in self.tier.eps]
        summary["cells"] = cells
        summary["autoattack"] = {"package": "pyautoattack", "version": version, **opts}

        def compute(t: Target, cell: dict[str, Any], b: int, sl: slice) -> torch.Tensor:
            _, x, y = self._xb(sl)
            kw: dict[str, Any] = {"attacks": list(opts["attacks"])} if version == "custom" else {}
            aa = AutoAttack(t.module.eval(), norm=self.protocol.norm, eps=cell["eps"], version=version,
                            device=self.device, seed=batch_seed(self.protocol.seed, cell["id"], b), **kw)
            t0 = time.perf_counter()
            with _quiet_logs("pyautoattack"):
                x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
            self.cost["attack_seconds"] += time.perf_counter() - t0
            return correct(t.module, enforce_budget(x, x_adv, cell["eps"], self.protocol.norm), y)

        for name, (clean, results) in self._per_target(targets, cells, compute).items():
            t = next(t for t in targets if t.name == name)
            row = self._target_summary(t, clean, cells, results)
            row["flags"] += agg.eps_flags({float(k): v["acc"] for k, v in row["worst_case"].items()}, len(self.ex.y))
            summary["targets"][name] = row
        return summary

    def _run_corruptions(self, targets: list[Target]) -> dict[str, Any]:
        from robust_ens.corruptions.evaluate import corrupted_set

        summary = self._header()
        preset = str(self.tier.options.get("preset", "cifar10c"))
        cells: list[dict[str, Any]] = [{"id": f"{c}@{s}", "corruption": c, "severity": s}
                                       for c in self.tier.corruptions for s in self.tier.severities]
        summary["cells"] = cells
        summary["preset"] = preset

        def compute(t: Target, cell: dict[str, Any], b: int, sl: slice) -> torch.Tensor:
            xc = corrupted_set(self.ex.x_u8, cell["corruption"], cell["severity"], preset=preset,
                               seed=self.protocol.seed, fingerprint=self.ex.fingerprint)
            return correct(t.module, xc[sl].to(self.device), self.ex.y[sl].to(self.device))

        for name, (clean, results) in self._per_target(targets, cells, compute).items():
            t = next(t for t in targets if t.name == name)
            row: dict[str, Any] = {"model": t.describe(), "clean": agg.rate(clean),
                                   "per_class": {"clean": agg.per_class(clean, self.ex.y, self.ex.num_classes)},
                                   "cells": agg.summarize_cells(cells, results), "flags": []}
            accs = [r["acc"] for r in row["cells"]]
            row["mean_corruption_accuracy"] = sum(accs) / len(accs) if accs else None
            summary["targets"][name] = row
        return summary


class _quiet_logs:
    """Silence a chatty library's INFO logs for a block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def run_suite(
    suite: str | Protocol,
    tier: str,
    targets: Sequence[TargetArg | str],
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    store: str | Path | None = None,
    progress: bool = True,
    target_option: str = "--target",
) -> dict[str, Any]:
    """Run one tier of a suite on some targets and write the summary into the run folder.

    Args:
        suite: A registered suite name, a protocol TOML path, or a :class:`Protocol`.
        tier: ``"smoke"``, ``"small"`` or ``"full"``.
        targets: Target specs (or :class:`TargetArg`); empty: the tier's own panel.
        out: The run folder (resumable; refused when made by another protocol version).
        device: Where models run.
        store: Adversarial-set store folder (default ``<out>/advsets``); share it between runs.
        progress: Progress bars.
        target_option: The command-line option the targets came from, named in errors about them.

    Returns:
        The summary (also written to ``<out>/summary.json``).
    """
    from robust_ens.atomic import atomic_write_json

    proto = suite if isinstance(suite, Protocol) else get_suite(suite)
    if proto.task == "depth":
        raise RobustEnsError(f"{proto.suite} evaluates depth models: use run_depth (robust-ens bench run {proto.suite} --data KITTI_C)")
    args = [a if isinstance(a, TargetArg) else TargetArg(spec=a) for a in targets]
    engine = Engine(proto, tier, out, device=device, store=store, progress=progress, target_option=target_option)
    summary = engine.run(args)
    if dd.is_main():
        atomic_write_json(Path(out) / "summary.json", summary)
    return summary

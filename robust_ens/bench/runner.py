"""Run a protocol: resolve targets, hand the tier's examples to its task, write the summary.

``run_suite`` is what ``robust-ens bench run``, ``submit``, ``regress`` and the pytest suites call.
The runner only orchestrates: it resolves and checks the targets (and the protocol's surrogates),
opens the run folder and calls the task's module, which evaluates through :mod:`.evaluate` and
returns a typed :class:`~.evaluate.RunResult`:

- ``transfer``: :mod:`.transfer_task` (sets crafted once on the surrogates, targets forward-only);
- ``whitebox``: :mod:`.whitebox_task` (AutoAttack, ``pyautoattack``, on each target);
- ``corruptions``: :mod:`.corruptions_task` (each (corruption, severity) copy, seeded per example);
- ``depth``: :mod:`.depth_task` (a KITTI-C tree scored with RoboDepth's metrics; not through here).

Batches are fixed by the protocol (``tier.batch_size``) and seeded from (protocol seed, cell,
batch index) (:func:`~.examples.batch_seed`); under ``torchrun`` rank ``r`` takes the batches
``b % world == r``.

Adversarial sets go to the machine-wide store (:func:`~.advsets.default_store`) unless ``store``
names another. Runs started together share work: a set or a trained surrogate another process is
making is waited for (the progress line says what for) and then read, never made twice. The
progress line and the summary (``cost.advsets_made`` / ``advsets_reused``) count the sets made here
and those reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robust_ens.bench import distributed as dd
from robust_ens.bench.advsets import AdvSetStore
from robust_ens.bench.corruptions_task import run_corruptions
from robust_ens.bench.craft import device_name
from robust_ens.bench.evaluate import RunContext, RunResult
from robust_ens.bench.examples import Examples, batch_seed, dataset_label, load_examples
from robust_ens.bench.protocol import Protocol, get_suite
from robust_ens.bench.runfolder import RunFolder
from robust_ens.bench.targets import Target, check_target, resolve_target, resolve_trained
from robust_ens.bench.transfer_task import run_transfer
from robust_ens.bench.whitebox_task import run_whitebox
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.precision import REFERENCE_PRECISION

log = logging.getLogger(__name__)

__all__ = ["TASKS", "Engine", "Examples", "TargetArg", "batch_seed", "dataset_label", "load_examples", "run_suite"]

#: The classifier tasks: ``task name -> run(context, resolved targets) -> RunResult``.
TASKS: dict[str, Callable[[RunContext, list[Target]], RunResult]] = {
    "transfer": run_transfer,
    "whitebox": run_whitebox,
    "corruptions": run_corruptions,
}


class _CountingBar:
    """A progress bar whose line says how many adversarial sets were made and reused so far."""

    def __init__(self, bar: Any, ctx: RunContext) -> None:
        self._bar = bar
        self._ctx = ctx

    def text(self) -> str:
        """``adversarial sets: N made, M reused`` and, once crafting was counted, its FLOPs and GFLOP/s."""
        c = self._ctx.cost
        sets = f"adversarial sets: {c.advsets_made} made, {c.advsets_reused} reused" if c.advsets_made + c.advsets_reused else ""
        return "; ".join(t for t in (sets, c.speed_text()) if t)

    def update(self, n: int = 1) -> None:
        self._bar.set_postfix_str(self.text(), refresh=False)
        self._bar.update(n)

    def waiting(self, what: str) -> None:
        self._bar.set_postfix_str(f"waiting for {what}: another run is making it")

    def close(self) -> None:
        self._bar.set_postfix_str(self.text(), refresh=False)
        self._bar.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def __enter__(self) -> _CountingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _EngineContext(RunContext):
    """The runner's :class:`RunContext`: its bars count the sets made and reused and name what the run waits for."""

    current_bar: _CountingBar | None = None

    def bar(self, total: int) -> Any:
        self.current_bar = _CountingBar(super().bar(total), self)
        return self.current_bar

    def waiting(self, what: str) -> None:
        """Put "waiting for WHAT" on the progress line (the store and the training lock log it too)."""
        if self.current_bar is not None:
            self.current_bar.waiting(what)


@dataclass(frozen=True)
class TargetArg:
    """A target as the user gave it: a spec, optional weights and an optional display name.

    ``combine`` and ``precision`` apply to a comma-separated spec (its parts joined into one Ensemble).
    """

    spec: str
    weights: str | None = None
    name: str | None = None
    combine: str = "logits"
    precision: str = REFERENCE_PRECISION


class Engine:
    """One run of one protocol tier: resolves targets and surrogates, then runs the task.

    Args:
        protocol: The protocol.
        tier: The tier's name.
        out: The run folder.
        device: Where models run.
        store: The adversarial-set store's folder (default: the machine-wide :func:`~.advsets.default_store`).
        progress: Show progress bars.
        target_option: The command-line option the targets came from, named in errors about them.
        corruption_cache: Read and write corrupted copies in the data cache (corruptions task).
        data_root: A folder searched first for the protocol's dataset (``bench run --data``).
    """

    def __init__(self, protocol: Protocol, tier: str, out: str | Path, *, device: str | torch.device = "cpu",
                 store: str | Path | None = None, progress: bool = True, target_option: str = "--target",
                 corruption_cache: bool = True, data_root: str | Path | None = None) -> None:
        self.protocol = protocol
        self.target_option = target_option
        self.tier = protocol.tier(tier)
        self.device = torch.device(device)
        dd.init_from_env(self.device)
        self.folder = RunFolder(out, protocol, tier, write=dd.is_main())
        self.progress = progress and dd.is_main()
        self.ex = load_examples(protocol, self.tier, root=data_root)
        self.folder.check_examples(self.ex.fingerprint)
        self._surrogates: dict[str, Target] = {}
        self.ctx = _EngineContext(protocol, self.tier, self.ex, self.folder, AdvSetStore(store), self.device,
                                  self.surrogate, self.progress, corruption_cache=corruption_cache)
        self.ctx.store.on_wait = self.ctx.waiting

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
                               name=arg.name, combine=arg.combine, precision=arg.precision)
        if arg.name:
            t.name = arg.name
        check_target(t, self.ex.x_u8[:2].float().div(255), self.ex.num_classes, self.ex.label)
        return t

    def surrogate(self, name: str) -> Target:
        """A protocol surrogate (resolved once; trained and cached when it is a recipe)."""
        if name not in self._surrogates:
            s = self.protocol.surrogates[name]
            if s.train:
                from robust_ens.train import waiting_for_run_locks

                # another run training the same surrogate into the cache: wait for it, then load its result
                with waiting_for_run_locks(self.ctx.waiting):
                    t = resolve_trained(name, s.train, self.protocol.dataset, device=self.device,
                                        progress=self.progress)
            else:
                t = resolve_target(",".join(s.members), dataset=self.protocol.dataset, device=self.device, name=name)
                if isinstance(t.module, Ensemble):  # surrogates craft in fp32 on every device, as trained ones do
                    t.module = t.module.with_precision(REFERENCE_PRECISION)
            t.name = name
            self._surrogates[name] = t
        return self._surrogates[name]

    # ---- the whole run
    def run(self, targets: Sequence[TargetArg]) -> RunResult:
        """Run the tier on ``targets`` (the tier's own panel when empty); return the result."""
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
        task = TASKS.get(self.protocol.task)
        if task is None:
            raise RobustEnsError(f"task {self.protocol.task!r} runs through run_depth, not the classifier engine")
        result = task(self.ctx, resolved)
        result.cost.seconds = time.perf_counter() - t0
        result.cost.device = _device_name(self.device)
        return result


_device_name = device_name  # the name regress compares entries' cost.device with


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
    corruption_cache: bool = True,
    filter: str | None = None,
    data_root: str | Path | None = None,
) -> RunResult:
    """Run one tier of a suite on some targets and write the summary into the run folder.

    Args:
        suite: A registered suite name, a protocol TOML path, or a :class:`Protocol`.
        tier: ``"smoke"``, ``"small"`` or ``"full"``.
        targets: Target specs (or :class:`TargetArg`); empty: the tier's own panel.
        out: The run folder (resumable; refused when made by another protocol version).
        device: Where models run.
        store: Adversarial-set store folder (default: the machine-wide :func:`~.advsets.default_store`,
            shared by every run on the machine; concurrent runs make each set once between them).
        progress: Progress bars.
        target_option: The command-line option the targets came from, named in errors about them.
        corruption_cache: Read and write corrupted copies in the data cache (corruptions task).
        filter: Set the tier's example filter (``"all-targets-correct"``: keep the examples every
            target classifies correctly); ``None`` keeps the tier's own.
        data_root: A folder searched first for the protocol's dataset (``bench run --data``); the
            images' fingerprint, not the folder, enters the sets' keys and the run folder's record.

    Returns:
        The typed result; it reads like the summary it writes to ``<out>/summary.json``
        (``result["targets"][name]["clean"]["acc"]``).
    """
    from robust_ens.atomic import atomic_write_json

    proto = suite if isinstance(suite, Protocol) else get_suite(suite)
    if filter is not None:
        proto = proto.with_filter(tier, filter)
    if proto.task == "depth":
        raise RobustEnsError(f"{proto.suite} evaluates depth models: use run_depth (robust-ens bench run {proto.suite} --data KITTI_C)")
    args = [a if isinstance(a, TargetArg) else TargetArg(spec=a) for a in targets]
    engine = Engine(proto, tier, out, device=device, store=store, progress=progress, target_option=target_option,
                    corruption_cache=corruption_cache, data_root=data_root)
    result = engine.run(args)
    if dd.is_main():
        atomic_write_json(Path(out) / "summary.json", result.to_summary())
    return result

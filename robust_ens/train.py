"""The one training loop: data resident on the device as uint8, batched on-device augmentation,
SGD/Adam with cosine or multistep schedules, bf16 where available, progress, deterministic seeding,
per-epoch resumable state and a safetensors checkpoint per member.

Two levels:

* :func:`fit` runs any ``step_fn(x, y, ctx) -> loss`` over a set of modules: resumable state,
  per-epoch seeding, history. Each epoch is one :func:`train_epoch` (batches, augmentation,
  learning-rate schedule, :func:`optimizer_step`), which LGV's weight collection
  (:func:`robust_ens.attacks.lgv.lgv_collect`) runs directly. Defenses
  (``robust_ens.defenses``) plug their joint losses in here.
* :func:`train_classifier` trains one ordinary classifier with cross-entropy. Ensembles (defenses,
  and plain members with :func:`robust_ens.defenses.train.train_ensemble`) are organised by
  :mod:`robust_ens.defenses.train`; named recipes live in :mod:`robust_ens.defenses.recipe_registry`.

Determinism: the batch order, crop offsets and flips of epoch ``e`` come from a generator seeded
by ``(seed, e)``, and the global torch RNG is reseeded the same way at the start of every epoch, so
a run resumed after an interruption retraces the uninterrupted run exactly (on the same device).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import precision as _precision
from robust_ens.atomic import atomic_write
from robust_ens.device import resolve_device
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy
from robust_ens.overrides import Count, LearningRate, Positive, Range, Seed, check_fields

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
_T = TypeVar("_T")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (recorded in checkpoints).

    Attributes:
        epochs: Number of epochs.
        batch_size: Mini-batch size.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 weight decay (decoupled for AdamW).
        schedule: ``"cosine"`` (per iteration, to 0), ``"multistep"`` or ``"constant"``.
        milestones: Epochs at which ``multistep`` multiplies the rate by ``gamma``.
        gamma: Multistep decay factor.
        warmup_epochs: Linear warm-up length in epochs (fractions allowed).
        label_smoothing: Cross-entropy label smoothing.
        crop_padding: Random-crop padding in pixels (0 disables cropping).
        flip: Random horizontal flips.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :mod:`robust_ens.precision`).
        seed: Seed of initialization, batch order and augmentation.
        grad_clip: Clip the global gradient norm to this value (``None``: off).
    """

    epochs: Count = 10
    batch_size: Count = 128
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: LearningRate = 0.1
    momentum: Annotated[float, Range(0, 1, high_open=True, what="an SGD momentum")] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Range(0, None, what="a weight decay")] = 5e-4
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: tuple[Annotated[int, Range(0, None, what="an epoch")], ...] = (100, 150)
    gamma: Annotated[float, Range(0, None, low_open=True, what="a rate factor")] = 0.1
    warmup_epochs: Annotated[float, Range(0, None, what="a number of epochs")] = 0.0
    label_smoothing: Annotated[float, Range(0, 1, high_open=True, what="a label smoothing")] = 0.0
    crop_padding: Annotated[int, Range(0, None, what="a padding in pixels")] = 4
    flip: bool = True
    precision: str = "auto"
    seed: Seed = 0
    grad_clip: Positive | None = None

    def __post_init__(self) -> None:
        check_fields(self, "training option")
        if self.precision not in _precision.PRECISIONS:
            raise RobustEnsError(f"precision must be one of {_precision.PRECISIONS}, got {self.precision!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names are an error)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise RobustEnsError(
                f"unknown training option(s) {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def lr_factor(self, progress: float) -> float:
        """Learning-rate multiplier at ``progress`` epochs (fractional)."""
        if self.warmup_epochs and progress < self.warmup_epochs:
            return (progress + 1e-3) / self.warmup_epochs
        if self.schedule == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1e-8)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - self.warmup_epochs) / span)))
        if self.schedule == "multistep":
            return float(self.gamma ** sum(progress >= m for m in self.milestones))
        return 1.0


# --------------------------------------------------------------------------- augmentation


def augment_batch(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch on its device.

    Offsets and flips are drawn on the CPU from ``generator`` so the result does not depend on
    the device (copied to CUDA without blocking: a step does not wait for the previous one's kernels).
    """
    n, c, h, w = x.shape
    nb = x.device.type == "cuda"
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device, non_blocking=nb)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device, non_blocking=nb)
        xp = F.pad(x, (padding, padding, padding, padding))
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        b = torch.arange(n, device=x.device)[:, None, None, None]
        ch = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[b, ch, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device, non_blocking=nb)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# --------------------------------------------------------------------------- the loop


@dataclass
class StepContext:
    """What a step function may use besides the batch.

    Attributes:
        epoch: Current epoch (0-based).
        step: Global iteration count.
        generator: CPU generator seeded by (seed, epoch); draw per-step randomness from it.
        device: Training device.
        state: A dict a step function may fill per epoch (e.g. DVERGE's layer choice).
    """

    epoch: int
    step: int
    generator: torch.Generator
    device: torch.device
    state: dict[str, Any] = field(default_factory=dict)


StepFn = Callable[
    [torch.Tensor, torch.Tensor, StepContext], "torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]"
]


@dataclass
class TrainResult:
    """History of a :func:`fit` run (one row per epoch) and whether it resumed."""

    history: list[dict[str, float]]
    resumed_from: int | None
    seconds: float
    images_per_second: float


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7919 + 17)


LOCK_FILE = ".robust-ens.lock"

#: Set by :func:`waiting_for_run_locks`: what :func:`run_lock` calls before it waits (``None``: refuse).
_WAIT_FOR_LOCK: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "robust_ens_wait_for_run_lock", default=None)


@contextlib.contextmanager
def waiting_for_run_locks(on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Within the block, :func:`run_lock` waits for a folder another process is writing, instead of refusing.

    For folders whose content their name determines (a surrogate trained into the cache from its
    recipe): the waiter then loads the finished run. ``on_wait(what)`` is called before waiting.
    """
    token = _WAIT_FOR_LOCK.set(on_wait or (lambda _what: None))
    try:
        yield
    finally:
        _WAIT_FOR_LOCK.reset(token)


def _lock_folder(path: Path, lock: Path) -> int:
    """An open descriptor of ``lock`` holding its ``flock`` (refused, or waited for; see :func:`run_lock`)."""
    import fcntl

    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)  # a holder that wrote nothing removes the folder it made
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RobustEnsError(f"cannot write into the run folder {path} (--out): {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            wait = _WAIT_FOR_LOCK.get()
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            if wait is None:
                os.close(fd)
                raise RobustEnsError(
                    f"another run (pid {owner}) is writing to {path}; wait for it to finish or pass another --out"
                ) from None
            what = f"another run (pid {owner}) writing to {path}"
            log.info("waiting for %s", what)
            wait(what)
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the OS when its holder ends, even killed
        with contextlib.suppress(OSError):  # the holder removes the file on exit: a lock on it guards nothing
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on a run folder while writing into it.

    A second run (another process, or another call in this one) that tries to write into the
    same folder fails at once with a one-line error, instead of both finishing and mixing their
    checkpoints; inside :func:`waiting_for_run_locks` it waits for the first to finish instead.
    The lock is an ``flock`` on ``<folder>/.robust-ens.lock`` (released by the OS if the process
    dies, so a lock file left by a killed run blocks nothing); the lock file is removed on exit, and
    so is the folder when this call created it and nothing was written.

    Raises:
        RobustEnsError: the folder is locked by another run, or cannot be created.
    """
    path = Path(folder)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RobustEnsError(f"cannot create the run folder {path} (--out): {err.strerror or err}") from err
    if not path.is_dir():
        raise RobustEnsError(f"the run folder {path} (--out) is not a folder")
    lock = path / LOCK_FILE
    try:
        fd = _lock_folder(path, lock)
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when nothing was written


def locks_out_dir(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Decorator: hold :func:`run_lock` on the ``out_dir`` keyword argument while ``fn`` runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        out = kwargs.get("out_dir")
        if out is None:
            return fn(*args, **kwargs)
        with run_lock(out):
            return fn(*args, **kwargs)

    return wrapper


def make_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names (SGD with optional Nesterov momentum, Adam or AdamW) over ``params``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Sequence[nn.Parameter], grad_clip: float | None
) -> None:
    """One update: clear the gradients, backpropagate ``loss``, clip the global norm (when set), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def train_epoch(
    modules: Mapping[str, nn.Module],
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    epoch: int,
    step: int,
    generator: torch.Generator,
    device: torch.device,
    channels_last: bool = False,
    bar: Any = None,
    on_step: Callable[[StepContext, int], None] | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over ``(x, y)``: the batch loop that :func:`fit` runs once per epoch.

    The batch order, crop offsets and flips are drawn from ``generator`` (nothing else is drawn
    from it here; a step function may draw from ``ctx.generator``). The learning rate follows
    ``config``'s schedule per iteration. The global torch RNG is neither seeded nor used here.

    Args:
        modules: The modules being trained (set to train mode).
        step_fn: ``step_fn(x, y, ctx)`` -> loss or ``(loss, metrics)``.
        optimizer: The optimizer over ``params`` (see :func:`make_optimizer`).
        params: The optimized parameters (for gradient clipping).
        x: Images on ``device``: uint8 (converted to [0, 1] per batch) or float in [0, 1].
        y: int64 labels on ``device``.
        config: Hyperparameters (batch size, schedule, augmentation, precision, clipping).
        epoch: The epoch's index (0-based; the schedule's position).
        step: Global iteration count at the start of the epoch.
        generator: CPU generator of the batch order and augmentation.
        device: Training device.
        channels_last: Lay batches out channels-last (bf16 training).
        bar: A progress bar to advance per batch, or ``None``.
        on_step: Called as ``on_step(ctx, batch_index)`` after every optimizer step.

    Returns:
        ``(means, step)``: the epoch's example-weighted mean loss and metrics, and the global
        iteration count after the epoch.
    """
    n = len(x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    ctx = StepContext(epoch=epoch, step=step, generator=generator, device=device)
    for m in modules.values():
        m.train()
    perm = torch.randperm(n, generator=generator).to(device)
    sums: dict[str, Any] = {}
    count = 0
    for b in range(steps_per_epoch):
        idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
        xb = x[idx]
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb
        xb = augment_batch(xb, config.crop_padding, config.flip, generator)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        for g in optimizer.param_groups:
            g["lr"] = config.lr * config.lr_factor(epoch + b / steps_per_epoch)
        ctx.step = step
        with _precision.autocast(config.precision, device):
            out = step_fn(xb, y[idx], ctx)
        loss, metrics = out if isinstance(out, tuple) else (out, {})
        optimizer_step(optimizer, loss, params, config.grad_clip)
        step += 1
        count += len(idx)
        # Sums stay on the device (no per-step synchronization); read once per epoch.
        for k, v in {"loss": loss.detach(), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + (v.detach().float() if isinstance(v, torch.Tensor) else float(v)) * len(idx)
        if on_step is not None:
            on_step(ctx, b)
        if bar is not None:
            bar.update(1)
            if b % 25 == 0 and not getattr(bar, "disable", False):  # .item() waits for the device
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    return {k: float(v) / count for k, v in sums.items()}, step


@dataclass
class _Setup:
    """What :func:`fit` prepares before its first epoch."""

    device: torch.device
    bf16: bool
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor


def _setup(
    modules: Mapping[str, nn.Module], x_train: torch.Tensor, y_train: torch.Tensor, config: TrainConfig,
    device: str | torch.device | None, params: Sequence[nn.Parameter] | None,
) -> _Setup:
    """Check the data, seed, move the modules to the device and build the optimizer."""
    if x_train.dtype != torch.uint8:
        raise RobustEnsError(f"x_train must be uint8 images (data resident as uint8), got {x_train.dtype}")
    if len(x_train) != len(y_train):
        raise RobustEnsError(f"x_train has {len(x_train)} images but y_train has {len(y_train)} labels")
    dev = resolve_device(device)
    bf16 = _precision.resolve(config.precision, dev) == "bf16"
    fmt = torch.channels_last if bf16 and x_train.dim() == 4 else torch.contiguous_format
    torch.manual_seed(config.seed)
    for m in modules.values():
        m.to(dev).to(memory_format=fmt).train()
    plist = list(params) if params is not None else [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    if not plist:
        raise RobustEnsError("nothing to train: the modules have no trainable parameters")
    opt = make_optimizer(plist, config)
    return _Setup(dev, bf16, plist, opt, x_train.to(dev), y_train.to(dev))


def _resume(
    state_path: Path | None, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
    config: TrainConfig, device: torch.device, desc: str,
) -> tuple[int, int | None, list[dict[str, float]]]:
    """``(start_epoch, resumed_from, history)`` from the state file, when there is one."""
    if state_path is None or not state_path.is_file():
        return 0, None, []
    payload = torch.load(state_path, map_location=device, weights_only=True)
    if payload.get("config_digest") != config.digest():
        raise RobustEnsError(
            f"{state_path} was written by a run with different settings; delete it or pick another "
            "output folder to start afresh"
        )
    for name, m in modules.items():
        m.load_state_dict(payload["modules"][name])
    optimizer.load_state_dict(payload["optimizer"])
    start = int(payload["epoch"]) + 1
    log.info("resuming %s from epoch %d (%s)", desc, start, state_path)
    return start, start, json.loads(payload["history"])


def _save_state(
    path: Path, epoch: int, config: TrainConfig, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
) -> None:
    """Write the resumable state after ``epoch`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "epoch": epoch,
        "config_digest": config.digest(),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "history": json.dumps(history),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def fit(
    modules: Mapping[str, nn.Module],
    step_fn: StepFn,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    state_dir: str | Path | None = None,
    progress: bool = True,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    stop_after_epoch: int | None = None,
    desc: str = "train",
    params: Sequence[nn.Parameter] | None = None,
) -> TrainResult:
    """Train ``modules`` jointly by minimizing ``step_fn``'s loss; resumable.

    Args:
        modules: Named modules to train (their parameters form one optimizer unless ``params``
            is given). They are moved to ``device`` and set to train mode.
        step_fn: ``step_fn(x, y, ctx)`` returns a scalar loss, or ``(loss, metrics)``. ``x`` is a
            float batch in [0, 1] after augmentation; ``ctx`` is a :class:`StepContext`.
        x_train: Training images as uint8 ``[N, C, H, W]`` (kept resident on ``device``).
        y_train: int64 labels ``[N]``.
        config: Hyperparameters.
        device: Training device (default: CUDA if available, else CPU).
        state_dir: Folder for the per-epoch resumable state; ``None`` disables resuming.
        progress: Show a tqdm bar (also off when ``ROBUST_ENS_QUIET`` is set).
        eval_fn: Called after each epoch; its metrics join the history.
        stop_after_epoch: Stop after this many epochs in total (simulates an interruption).
        desc: Progress-bar label.
        params: Parameters to optimize (default: all parameters of ``modules``).

    Returns:
        A :class:`TrainResult`.
    """
    from robust_ens import progress as _progress

    run = _setup(modules, x_train, y_train, config, device, params)
    n = len(run.x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    start_epoch, resumed, history = _resume(state_path, modules, run.optimizer, config, run.device, desc)
    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)

    bar = _progress.bar(
        total=(last_epoch - start_epoch) * steps_per_epoch, desc=desc, enable=progress, unit="batch", leave=False,
    )
    t0, seen = time.perf_counter(), 0
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, last_epoch):
        gen = _epoch_generator(config.seed, epoch)
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        means, step = train_epoch(
            modules, step_fn, run.optimizer, run.params, run.x, run.y, config, epoch=epoch, step=step,
            generator=gen, device=run.device, channels_last=run.bf16, bar=bar,
        )
        seen += n
        row = {"epoch": float(epoch), "lr": run.optimizer.param_groups[0]["lr"], **means}
        if not math.isfinite(row["loss"]):
            raise RobustEnsError(
                f"training diverged in epoch {epoch}: mean loss is {row['loss']}; lower the learning rate"
            )
        if eval_fn is not None:
            for m in modules.values():
                m.eval()
            row.update(eval_fn())
        history.append(row)
        log.debug("%s epoch %d: %s", desc, epoch, {k: round(v, 4) for k, v in row.items()})
        if state_path is not None:
            _save_state(state_path, epoch, config, modules, run.optimizer, history)
    bar.close()
    for m in modules.values():
        # back to the layout a checkpoint loads in: a model used right after training must compute
        # what its reload computes (channels_last convolutions round differently, and an
        # adversarial set crafted on either is stored under the same weights' sha256)
        m.to(memory_format=torch.contiguous_format).eval()
    secs = time.perf_counter() - t0
    return TrainResult(history, resumed, secs, seen / secs if secs > 0 else 0.0)


# --------------------------------------------------------------------------- plain members


def cross_entropy_step(model: nn.Module, label_smoothing: float = 0.0) -> StepFn:
    """The step function of ordinary training: cross-entropy of one model."""

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        return loss, {"train_acc": (logits.argmax(-1) == y).float().mean()}

    return step


def train_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    state_dir: str | Path | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train one classifier with cross-entropy (uint8 ``x_train``); evaluate on ``x_test`` per epoch."""
    eval_fn = None
    if x_test is not None and y_test is not None:
        xt, yt = x_test, y_test

        def eval_fn() -> dict[str, float]:
            return {"test_acc": accuracy(model, xt, yt)}

    return fit(
        {"model": model}, cross_entropy_step(model, config.label_smoothing), x_train, y_train, config,
        device=device, state_dir=state_dir, progress=progress, eval_fn=eval_fn,
        stop_after_epoch=stop_after_epoch, desc=desc,
    )

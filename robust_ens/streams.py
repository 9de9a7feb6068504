"""Ensemble members on parallel single-threaded CPU streams (``Ensemble(..., streams=True)``).

Why: on the CPU torch splits each operation over ``torch.get_num_threads()`` OpenMP threads, and
every operation ends at a barrier. When another process holds a core, the descheduled thread
makes each of the thousands of barriers in an attack step wait for it. The members of an ensemble
are independent until their logits are combined. So with ``streams`` their forwards and input
gradients run as ``S`` groups, one per worker thread, each on one OpenMP thread. No barriers are
shared, and a descheduled stream delays only its own group. The members' input gradients are summed
in group order.

Measured on a 2-core AMD EPYC (avx512_bf16), PGD-10 on 4 ResNet-20 members in bf16 at batch 128:
- quiet, it is 0.97x the default path: 72% of the bf16 peak against 73% (``pytest
  suites/speed/bench_attacks.py --benchmark -s -k "pgd10 and resnet20"``);
- beside a busy 2-thread process it is 2.15x faster: a median of 6.1 s against 13.1 s, in 6 interleaved runs. The
  default path swung between 10.8 and 23.5 s there, while the streams stayed between 5.8 and 6.3 s.

Scope:
- It applies to input gradients only: members with parameters that require gradients run as
  usual, since parameter gradients are not carried across the streams. Attacks in bf16 use the
  folded view (:meth:`robust_ens.Ensemble.folded`), whose copies have none.
- It also needs ``x.requires_grad`` with gradients enabled, a CPU input, two or more members, two or
  more torch threads in the calling thread, and no ``compile=True`` (compiled graphs are not entered
  from several threads).
- Otherwise ``member_logits`` runs as it always has.

Numbers: each member's logits are computed on one thread, and its input gradient is summed in a
fixed order. A run is therefore deterministic, but its float rounding may differ from the
unstreamed path. That is why this is opt-in, like ``compile=True``. Committed benchmark numbers are
fp32 and never use it.

The worker threads persist for the process, one pool per stream count (a forked child starts its own). Each worker sets its own
OpenMP count to 1 once. torch also records that count for threads started later, so the calling
thread's count is put back right after the pool starts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from robust_ens.errors import RobustEnsError

ENV_STREAMS = "ROBUST_ENS_STREAMS"
_ON, _OFF = ("1", "on", "true", "yes"), ("", "0", "off", "false", "no")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
# A forked child has none of the parent's worker threads: it starts its own pools when it needs them.
os.register_at_fork(after_in_child=_POOLS.clear)

Runner = Callable[[int, torch.Tensor], torch.Tensor]


def default_streams() -> bool:
    """``Ensemble(streams=None)``'s choice: ``ROBUST_ENS_STREAMS=1`` turns streams on; unset or ``0`` leaves them off.

    Raises:
        RobustEnsError: the variable holds anything else.
    """
    value = os.environ.get(ENV_STREAMS, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise RobustEnsError(f"{ENV_STREAMS} must be 1 (streams on) or 0 (off), got {value!r}")


def _one_thread() -> None:
    """A worker's initializer: one OpenMP thread for this thread, for good.

    torch initializes a thread's count lazily, on its first query, from the process-wide count.
    Querying here, while that count is 1, fixes it before the pool's starter sets the count back.
    """
    torch.set_num_threads(1)
    torch.get_num_threads()


def _pool(n: int) -> ThreadPoolExecutor:
    """The process's pool of ``n`` single-threaded workers, started on first use."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            before = torch.get_num_threads()
            pool = ThreadPoolExecutor(n, thread_name_prefix="robust-ens-stream", initializer=_one_thread)
            started = threading.Barrier(n)
            # n tasks that wait for each other: every worker is created (and initialized) now
            list(pool.map(lambda _: started.wait(), range(n)))
            torch.set_num_threads(before)  # the count new threads start with, and this thread's
            _POOLS[n] = pool
        return pool


def stack_logits(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' logits stacked ``[M, N, K]``, or one clear error when their shapes differ."""
    shapes = {tuple(o.shape) for o in outs}
    if len(shapes) != 1:
        raise RobustEnsError(f"ensemble members returned different output shapes: {sorted(shapes)}")
    return torch.stack(list(outs))


def stream_groups(n_members: int, n_streams: int) -> list[list[int]]:
    """Members split into ``min(n_streams, n_members)`` contiguous groups of near-equal size, in order."""
    s = max(1, min(n_streams, n_members))
    base, extra = divmod(n_members, s)
    groups, start = [], 0
    for i in range(s):
        size = base + (i < extra)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def applies(members: Sequence[nn.Module], x: torch.Tensor, compiled: bool) -> bool:
    """Whether :func:`streamed_logits` may run these members on ``x`` (the module docstring's scope)."""
    return (x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled() and len(members) > 1
            and not compiled and torch.get_num_threads() > 1
            and not any(p.requires_grad for m in members for p in m.parameters()))


class _Streamed(torch.autograd.Function):
    """Forward: each group's members on a worker of its own, with an autograd graph from a detached
    copy of ``x``. Backward: each group's input gradient on a worker (one group each), summed in group order."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, run: Runner, groups: list[list[int]],
                pool: ThreadPoolExecutor) -> torch.Tensor:
        def part(group: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
            with torch.enable_grad():
                xi = x.detach().requires_grad_()
                return xi, [run(k, xi) for k in group]

        parts = list(pool.map(part, groups))
        ctx.parts, ctx.groups, ctx.pool = parts, groups, pool
        return stack_logits([out.detach() for _, group_outs in parts for out in group_outs])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        def part(i: int) -> torch.Tensor:
            xi, outs = ctx.parts[i]
            return torch.autograd.grad(outs, xi, [grad[k] for k in ctx.groups[i]])[0]

        grads = list(ctx.pool.map(part, range(len(ctx.groups))))
        ctx.parts = None  # free the graphs
        total = grads[0]
        for g in grads[1:]:
            total = total + g
        return total, None, None, None


def streamed_logits(run: Runner, n_members: int, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[M, N, K]`` of ``run(k, x)`` for every member ``k``, computed on parallel single-threaded
    streams (one per torch thread of the calling thread), with their input gradient flowing back to ``x``."""
    groups = stream_groups(n_members, torch.get_num_threads())
    out: torch.Tensor = _Streamed.apply(x, run, groups, _pool(len(groups)))
    return out


__all__ = ["ENV_STREAMS", "applies", "default_streams", "stack_logits", "stream_groups", "streamed_logits"]

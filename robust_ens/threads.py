"""Thread policy for small CPU work: run it on one torch thread unless the user chose a count.

Why: torch's CPU operations are parallelised with OpenMP over ``torch.get_num_threads()`` threads
(by default one per physical core). On a busy machine (another CPU-bound process, a second test
run) one of those threads is often descheduled, and every parallel operation waits for it at its
closing barrier: about 10 ms per operation on a loaded 2-core machine. Work made of many small
operations (corrupting a few images, per-batch bookkeeping) then slows down by 10-50x, while the
same work on one thread is barely affected. Large work (matrix products, convolutions over big
batches) gains from the threads and is left alone.

The rule, applied by :func:`small_work_threads` (``robust_ens.corruptions.corrupt`` runs inside it):

1. ``ROBUST_ENS_THREADS=n`` (n >= 1): small work runs on ``n`` threads. ``ROBUST_ENS_THREADS=0``
   (or ``torch``/``off``) turns the policy off: torch's count is used as it is.
2. Otherwise, if ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, the user chose: torch's count
   (which torch took from that variable, or whatever was set since) is used as it is.
3. Otherwise, if the calling thread's ``torch.get_num_threads()`` differs from torch's own default
   (``torch.get_num_interop_threads()`` reports that default while nobody set the inter-op count),
   the user called ``torch.set_num_threads``: that count is used as it is.
4. Otherwise small work runs on one thread.

What can and cannot be detected: a ``torch.set_num_threads(k)`` call is seen whenever ``k`` differs
from torch's default, whether it came before or after importing robust_ens; a call that sets the
default count itself cannot be told apart from no call (set ``ROBUST_ENS_THREADS`` to be explicit),
and a ``torch.set_num_interop_threads`` call to another value than the default makes every count
look user-chosen (the policy then stays out of the way).

The previous count is restored on exit (also after an exception); nesting is free (only the
outermost block changes the count); on CUDA tensors or devices the policy does nothing. torch keeps
the OpenMP thread count per calling thread once that thread has run a parallel operation, so the
state here is per Python thread too; a thread that starts its first torch operation while another
thread is inside a block inherits that block's count.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch

__all__ = ["ENV_THREADS", "ThreadBlock", "policy_threads", "small_work_threads", "use_threads"]

#: Environment variable: the thread count of small CPU work (``0``/``torch``/``off``: leave torch's count).
ENV_THREADS = "ROBUST_ENS_THREADS"

_OFF = ("0", "torch", "off", "none")
_USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class _State(threading.local):
    """Per Python thread: one entry per open block, the count to restore on its exit (None: none)."""

    def __init__(self) -> None:
        self.stack: list[int | None] = []


_state = _State()
_warned: set[str] = set()


def policy_threads() -> int | None:
    """The thread count small CPU work should use now, or None to keep torch's current count.

    See the module docstring for the rule. Cheap (a few environment lookups and two torch calls).
    """
    env = os.environ.get(ENV_THREADS, "").strip().lower()
    if env:
        if env in _OFF:
            return None
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return n
        if env not in _warned:
            _warned.add(env)
            warnings.warn(f"{ENV_THREADS}={env!r} is not a positive integer or one of {', '.join(_OFF)}; "
                          "ignored", RuntimeWarning, stacklevel=3)
    if any(os.environ.get(v, "").strip() for v in _USER_ENV):
        return None
    if torch.get_num_threads() != torch.get_num_interop_threads():
        return None  # the user called torch.set_num_threads (see the module docstring)
    return 1


def _is_cpu(device: torch.device | str | torch.Tensor | None) -> bool:
    if device is None:
        return True
    if isinstance(device, torch.Tensor):
        return device.device.type == "cpu"
    return torch.device(device).type == "cpu"


class ThreadBlock(contextlib.ContextDecorator):
    """A block of CPU work on a given torch thread count, restored on exit (a context manager and a
    decorator; reentrant, its state lives per Python thread). Made by :func:`small_work_threads`
    and :func:`use_threads`."""

    def __init__(self, n: int | None, device: torch.device | str | torch.Tensor | None = None,
                 policy: bool = False) -> None:
        self.n, self.device, self.policy = n, device, policy

    def __enter__(self) -> None:
        n = self.n
        if self.policy:  # decided on every entry, so a decorator follows the environment of each call
            n = None if _state.stack or not _is_cpu(self.device) else policy_threads()
        before = torch.get_num_threads()
        if n is not None and n != before:
            torch.set_num_threads(n)
            _state.stack.append(before)
        else:
            _state.stack.append(None)

    def __exit__(self, *exc: object) -> None:
        before = _state.stack.pop()
        if before is not None:
            torch.set_num_threads(before)


def small_work_threads(device: torch.device | str | torch.Tensor | None = None) -> ThreadBlock:
    """Run the enclosed small CPU work on the policy's thread count (one unless the user chose).

    Usable as a context manager or a decorator (the rule is applied on every entry). Restores the
    previous count on exit, also after an exception. Nested blocks (and blocks inside
    :func:`use_threads`) leave the count alone.

    Args:
        device: The device the work runs on (a device, its name, or a tensor on it). Anything but the
            CPU makes the block a no-op; None means the CPU.

    Example:
        >>> import torch
        >>> from robust_ens.threads import small_work_threads
        >>> with small_work_threads(torch.zeros(1)):
        ...     y = torch.rand(4, 3, 32, 32).mul_(2)
    """
    return ThreadBlock(None, device, policy=True)


def use_threads(n: int) -> ThreadBlock:
    """Run the enclosed CPU work on exactly ``n`` torch threads (an explicit choice, e.g. a
    ``--threads`` option): :func:`small_work_threads` blocks inside it keep ``n``.

    Raises:
        ValueError: if ``n < 1``.
    """
    if int(n) < 1:
        raise ValueError(f"thread count must be at least 1, got {n!r}")
    return ThreadBlock(int(n))

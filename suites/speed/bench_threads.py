"""Corruption generation beside a busy sibling process, with and without the small-work thread policy.

Issue 22: with torch's default thread count (one per core) on a machine where another CPU-bound
process runs, every small parallel operation waits for a descheduled OpenMP thread (about 10 ms per
operation on 2 cores), and corrupting 4 KITTI images took seconds instead of milliseconds. The
policy (:mod:`robust_ens.threads`) runs corruptions on one thread unless the user chose a count.

For each workload, at torch's default thread count and with no user choice in the environment:

* *policy*: the default rule (one thread inside ``corrupt``);
* *no policy*: ``ROBUST_ENS_THREADS=0`` (torch's default count inside ``corrupt``, as before);

each timed quiet and beside a sibling process that spins one core in a Python loop (started and
killed here, paused with SIGSTOP for the quiet runs, ending by itself after at most three minutes).
Quiet and loaded runs alternate over several rounds, so load from outside the benchmark (a shared
machine) falls on both alike. Printed and stored in ``extra_info``: the medians, the best quiet
time, and the loaded/quiet ratio of the medians. Target: the policy's ratio at most 2.

Workloads: glass blur (KITTI-C severity 2, 4 images of 192x640), the same on its torch path
(``ROBUST_ENS_NUMBA=0``: many small operations, the case of the issue) and the 18 KITTI-C
corruptions at severity 3 (2 images of 96x320); smoke size (``make test``): 1 image of 96x320 and
1 image of 48x96. On a shared machine the quiet runs carry the outside load too; the best quiet
time (and the ratio to it) shows what an idle machine gives.
``pytest suites/speed/bench_threads.py --benchmark -s`` runs the full size (one to two minutes on 2
cores, most of it the no-policy runs). Nothing is asserted about time.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from robust_ens.corruptions import corrupt, list_corruptions
from robust_ens.corruptions._compiled import ENV_NUMBA
from robust_ens.threads import ENV_THREADS
from suites.speed.bench_corruptions import _natural_batch

#: The sibling's hard limit (it also dies when the benchmark kills it).
SIBLING_MAX_S = 180

_SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


class BusySibling:
    """A child process spinning one core in a Python loop; ``pause()``/``resume()`` stop and continue
    it (SIGSTOP/SIGCONT), so quiet and loaded runs can alternate and share the machine's drift. Where
    those signals do not exist (Windows) the process is killed and restarted instead."""

    def __init__(self, seconds: float = SIBLING_MAX_S) -> None:
        self.seconds = seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SPIN.format(s=float(self.seconds))],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let the interpreter start and spin

    def resume(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        elif hasattr(signal, "SIGCONT"):
            os.kill(self.proc.pid, signal.SIGCONT)
            time.sleep(0.05)

    def pause(self) -> None:
        if self.proc is None:
            return
        if hasattr(signal, "SIGSTOP"):
            os.kill(self.proc.pid, signal.SIGSTOP)
        else:  # pragma: no cover (Windows)
            self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextmanager
def busy_sibling(seconds: float = SIBLING_MAX_S) -> Iterator[BusySibling]:
    """A paused :class:`BusySibling`, killed when the block ends."""
    sib = BusySibling(seconds)
    try:
        sib.resume()
        sib.pause()
        yield sib
    finally:
        sib.close()


def test_corruptions_beside_busy_sibling(benchmark, full_benchmark: bool, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    default = torch.get_num_interop_threads()  # torch's default intra-op count (see robust_ens.threads)
    if default < 2:
        pytest.skip("torch's default is one thread here: no OpenMP pool to starve")
    for var in (ENV_THREADS, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(default)
    if full_benchmark:
        glass_x, list_x, rounds = _natural_batch(4, 192, 640), _natural_batch(2, 96, 320), 7
    else:
        glass_x, list_x, rounds = _natural_batch(1, 96, 320), _natural_batch(1, 48, 96), 1
    names = list_corruptions("kittic")
    def glass_torch_path() -> object:
        with monkeypatch.context() as m:
            m.setenv(ENV_NUMBA, "0")
            return corrupt(glass_x, "glass_blur", 2, preset="kittic")

    work: dict[str, Callable[[], object]] = {
        "glass_blur": lambda: corrupt(glass_x, "glass_blur", 2, preset="kittic"),
        "glass_torch": glass_torch_path,
        "kittic_all": lambda: [corrupt(list_x, nm, 3, preset="kittic") for nm in names],
    }
    modes = {"policy": None, "no_policy": "0"}
    times: dict[tuple[str, str, str], list[float]] = {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        for fn in work.values():  # warm-up: numba compilation, caches
            fn()
        with busy_sibling() as sib:
            for _ in range(rounds):  # quiet and loaded alternate, so both see the same outside load
                for mode, env in modes.items():
                    with monkeypatch.context() as m:
                        if env is not None:
                            m.setenv(ENV_THREADS, env)
                        for state in ("quiet", "loaded"):
                            if state == "loaded":
                                sib.resume()
                            else:
                                sib.pause()
                            for key, fn in work.items():
                                t = time.perf_counter()
                                fn()
                                times.setdefault((key, mode, state), []).append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    lines = [f"beside one busy sibling process: torch default {default} threads, load before {load:.2f}, "
             f"{rounds} alternating rounds; glass_blur {tuple(glass_x.shape)} s2, kittic_all "
             f"{tuple(list_x.shape)} s3 (medians; best quiet in brackets)",
             f"{'workload':12s} {'mode':10s} {'quiet ms':>17s} {'loaded ms':>10s} {'loaded/quiet':>13s} "
             f"{'loaded/best quiet':>18s}"]
    ratios, ratios_best = {}, {}
    for key in work:
        for mode in modes:
            q = statistics.median(times[(key, mode, "quiet")])
            best = min(times[(key, mode, "quiet")])
            ld = statistics.median(times[(key, mode, "loaded")])
            ratios[f"{key}/{mode}"], ratios_best[f"{key}/{mode}"] = ld / q, ld / best
            lines.append(f"{key:12s} {mode:10s} {q * 1e3:8.1f} [{best * 1e3:6.1f}] {ld * 1e3:10.1f} {ld / q:13.2f} "
                         f"{ld / best:18.2f}")
    print("\n" + "\n".join(lines))
    benchmark.extra_info.update({"seconds": {"/".join(k): v for k, v in times.items()}, "loaded_over_quiet": ratios,
                                 "loaded_over_best_quiet": ratios_best,
                                 "default_threads": default, "load_1min_before": load})
    benchmark.pedantic(work["glass_blur"], rounds=1, iterations=1)

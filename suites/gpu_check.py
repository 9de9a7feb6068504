"""The prepared GPU check (issue 27, goal 4): ``make gpu-check`` or ``python -m suites.gpu_check``.

On a machine with CUDA it runs, within about 10 minutes on one H100/H200, and writes ONE JSON report
(default ``$OUT/gpu-check.json`` when ``$OUT`` is set, else ``runs/gpu-check.json``; ``--out``):

1. ``peak``: a bf16 and an fp32 8192x8192 matmul, the ceiling the other figures are shares of;
2. ``crafting``: PGD-10 on 8x ResNet-20 at batch 1024 (``suites/speed/crafting.py``'s CUDA size), fp32
   and bf16, against torchattacks' PGD (fp32) on the same members; images/s, achieved GFLOP/s from
   the measured FLOPs per member-image-step, share of the peak, speed-up and its target;
3. ``vit``: PGD-10 on 4x ViT-B/16 (timm, random weights) at 224 px in bf16, and ``vit_compile`` the
   same with ``torch.compile`` (``Ensemble(compile=True)``; its compile seconds reported apart);
4. ``engine``: one small-tier engine run on the GPU with a fresh adversarial-set store:
   cifar10-attacks' small tier when CIFAR-10 is found (``$ROBUST_ENS_DATA``), else digits-transfer's
   small tier, and the report says why (``fallback``); its summary's FLOPs and GFLOP/s;
5. ``regress``: ``robust-ens regress --tier smoke`` of the committed (CPU-made) entries on the GPU,
   within the binomial tolerance across devices;
6. ``imagenet_smoke`` and ``imagenet_slice`` (``suites/gpu_check_imagenet.py``, issue 24): the
   imagenet-transfer smoke tier end to end through the engine on a generated ImageNet-compatible
   folder, and a slice of its full tier on random weights (MI-FGSM from ResNet-50 and Ens from the
   4 CNNs, ViT-B/16 the target, 32 images at 224 px) crafted in fp32 and in bf16, whose success
   rates must agree within a binomial bound; the pixels' agreement, times and GFLOP/s reported.
   ``vit_compile`` runs last (a slow compile cannot starve the rest).

Report layout: ``{"format", "ok", "reason", "mode", "report", "environment": {"device", "card",
"torch", "cuda", "cudnn", "tf32_matmul", "tf32_cudnn", "robust_ens", "git_commit", "timm",
"torchattacks", "python", "threads", "data"}, "started", "seconds", "budget_s", "checks": {name:
{"status": "pass" | "fail" | "skipped", "seconds", "reason"?, "max_memory_gib"?, ...figures}}}``.
The report is rewritten after every check, so a killed run still leaves what it measured.

It fails loudly: no CUDA, a CUDA error (the check stops at once: the context is gone) or any failed
check gives a non-zero exit and ONE line on stderr, ``gpu-check: FAIL: <reason>``. It never falls
back to the CPU. ``--dry-run`` (``--device cpu --tiny``) runs the same code on the CPU at tiny sizes
(2 small members, a 2-block ViT, digits-transfer's smoke tier, one entry regressed, imagenet-transfer's
smoke tier, the slice on timm's tiny test models with 4 images and 2 steps) in seconds; that is
what ``tests/test_gpu_check.py`` runs.

It runs from a checkout that is not installed too (``make gpu-check GPU_PYTHON=python3`` on a lent
GPU machine, whose python has torch and timm but no index): ``robust_ens.attacks`` and
``robust_ens.defenses`` are mapped to the checkout's folders as pyproject's package-dir would, and a
missing package (pydantic, for the engine) is one failing line before any work. torchattacks is
optional (the peer is then reported as not installed).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python suites/gpu_check.py): the checkout's root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from suites.gpu_check_imagenet import check_imagenet_slice, check_imagenet_smoke

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "robust-ens gpu-check 1"
BUDGET_S = 570.0  # the whole check, under the 10 minutes it promises (start-up and imports included)
DIGITS_TARGET = "zoo:digits_small_cnn_s2"
TINY_REGRESS = ROOT / "leaderboards" / "digits" / "digits-transfer" / "cnn-s0.json"


class CheckError(Exception):
    """A check that ran and found something wrong (its one-line reason)."""


class CudaFailure(Exception):
    """A CUDA error: the check stops there (the context may be unusable)."""


@dataclass
class Check:
    """One run of the check: where, at which sizes, what was measured so far, and where it is written."""

    device: torch.device
    tiny: bool
    out: Path
    work: Path
    budget_s: float = BUDGET_S
    t0: float = field(default_factory=time.perf_counter)
    peaks: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def write(self) -> None:
        """Write the report as it stands (atomically)."""
        from robust_ens.atomic import atomic_write_json

        self.report["seconds"] = round(self.elapsed(), 3)
        atomic_write_json(self.out, _finite(self.report))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as ``None`` (JSON has no NaN; a report must still be written)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def is_cuda_error(err: BaseException) -> bool:
    """Whether ``err`` came from the CUDA runtime or its libraries (the context may be unusable after it)."""
    if isinstance(err, torch.cuda.OutOfMemoryError) or type(err).__name__ in ("AcceleratorError", "CudaError"):
        return True
    text = str(err)
    return any(k in text for k in ("CUDA error", "CUDA driver", "CUBLAS_STATUS", "cuDNN error", "CUDNN_STATUS",
                                   "device-side assert", "illegal memory access"))


def project_imports() -> None:
    """Import what every check needs; on a bare checkout (the project not installed: a lent GPU machine's
    own python) map ``robust_ens.attacks`` / ``robust_ens.defenses`` to the checkout's folders, as
    pyproject's package-dir does for an install.

    Raises:
        ImportError: naming the missing package (pydantic, timm, ...).
    """
    import importlib
    import importlib.util

    import robust_ens

    for name in ("attacks", "defenses"):
        full = f"robust_ens.{name}"
        if full in sys.modules or importlib.util.find_spec(full) is not None:
            continue
        spec = importlib.util.spec_from_file_location(full, ROOT / name / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / name)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        setattr(robust_ens, name, module)
        spec.loader.exec_module(module)
    for name in ("robust_ens.attacks", "robust_ens.leaderboard", "robust_ens.bench.runner", "timm"):
        importlib.import_module(name)


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line, shortened."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------- the checks


def check_peak(c: Check) -> dict[str, Any]:
    """bf16 and fp32 matmul GFLOP/s on this device, in this run."""
    from suites.speed.crafting import PEAK_N, matmul_peak

    n = 256 if c.tiny else PEAK_N[c.device.type]
    c.peaks = {"bf16": matmul_peak(c.device, torch.bfloat16, n), "fp32": matmul_peak(c.device, torch.float32, n)}
    return {"n": n, "tf32": torch.backends.cuda.matmul.allow_tf32, "bf16_gflops_per_s": c.peaks["bf16"],
            "fp32_gflops_per_s": c.peaks["fp32"]}


def _sizes(arch: str, tiny: bool) -> dict[str, Any]:
    from suites.speed.crafting import SIZES

    full, smoke = SIZES[("cuda", arch)]
    return dict(smoke if tiny else full)


def _members(arch: str, n: int, c: Check) -> list[torch.nn.Module]:
    from suites.speed.crafting import member

    torch.manual_seed(0)
    return [member(arch, tiny=c.tiny).eval().to(c.device) for _ in range(n)]


def _inputs(cfg: dict[str, Any], side: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(cfg["batch"], 3, side, side, generator=g, device=device)
    return x, torch.randint(0, 10, (cfg["batch"],), generator=g, device=device)


def _time_pgd(ens: torch.nn.Module, members: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
              cfg: dict[str, Any], c: Check) -> dict[str, Any]:
    """Warm up (counted apart: compiles land here), then the median of ``rounds`` PGD runs, and their figures."""
    from robust_ens import Ensemble
    from robust_ens.attacks import PGD
    from robust_ens.bench.flops import pass_flops
    from suites.speed.crafting import ALPHA, EPS, median_seconds, timed

    warm, _ = timed(lambda: PGD(eps=EPS, alpha=ALPHA, steps=2)(ens, x, y, seed=0), c.device)
    atk = PGD(eps=EPS, alpha=ALPHA, steps=cfg["steps"], random_start=True)
    last: list[Any] = []
    sec = median_seconds(lambda: last.append(atk(ens, x, y, seed=0)), c.device, cfg["rounds"])
    res = last[-1]
    linf = float((res.x_adv.double() - x.double()).abs().max())
    if not bool(torch.isfinite(res.x_adv).all()) or linf > EPS + 1e-6:
        raise CheckError(f"PGD broke its budget or gave non-finite images (max |delta| {linf:.6f} > {EPS:.6f})")
    n = x.shape[0]
    # the attack's own pass counts x each member's measured FLOPs (the engine's cost model, robust_ens.bench.flops)
    flops = pass_flops(Ensemble(members), tuple(x.shape[1:]), res.cost.forward * n, res.cost.backward * n, c.device)
    return {"warmup_seconds": warm, "seconds_per_round": sec, "img_per_s": n / sec, "flops_per_round": flops,
            "gflops_per_s": flops / sec / 1e9, "forward_passes_per_image": res.cost.forward}


def _share(run: dict[str, Any], peak: str, c: Check) -> dict[str, Any]:
    if c.peaks.get(peak):
        run[f"share_of_{peak}_peak"] = run["gflops_per_s"] / c.peaks[peak]
    return run


def _torchattacks_peer(members: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any],
                       flops: float, c: Check) -> dict[str, Any]:
    """torchattacks' PGD (fp32) on a plain loop over the same members: the peer of the crafting figures."""
    try:
        import torchattacks
    except ImportError as err:
        return {"status": "not installed", "reason": one_line(str(err))}
    from suites.speed.crafting import ALPHA, EPS, LoopEnsemble, median_seconds

    loop = LoopEnsemble(copy.deepcopy(members)).eval()
    torchattacks.PGD(loop, eps=EPS, alpha=ALPHA, steps=2)(x, y)  # warm-up
    ta = torchattacks.PGD(loop, eps=EPS, alpha=ALPHA, steps=cfg["steps"], random_start=True)
    sec = median_seconds(lambda: ta(x, y), c.device, cfg["rounds"])
    return _share({"seconds_per_round": sec, "img_per_s": x.shape[0] / sec, "gflops_per_s": flops / sec / 1e9},
                  "fp32", c)


def check_crafting(c: Check) -> dict[str, Any]:
    """PGD-10 on 8x ResNet-20 at batch 1024: fp32 and bf16 robust-ens against torchattacks (fp32)."""
    from robust_ens import Ensemble
    from suites.speed.crafting import CostModel

    cfg = _sizes("resnet20", c.tiny)
    members = _members("resnet20", cfg["members"], c)
    x, y = _inputs(cfg, 32, c.device)
    model = CostModel.of(members, (3, 32, 32), cfg["batch"], cfg["steps"], c.device)
    runs = {}
    for precision in ("fp32", "bf16"):
        ens = Ensemble(copy.deepcopy(members), combine="logits", precision=precision).eval()
        runs[precision] = _share(_time_pgd(ens, members, x, y, cfg, c), precision, c)
        del ens
    peer = _torchattacks_peer(members, x, y, cfg, runs["fp32"]["flops_per_round"], c)
    out: dict[str, Any] = {"attack": f"PGD-{cfg['steps']}", "ensemble": f"{cfg['members']}x resnet20",
                           "batch": cfg["batch"], "image": [3, 32, 32],
                           "flops_per_member_image_step": model.flops_per_member_image_step,
                           "runs": {**runs, "torchattacks_fp32": peer}}
    if "seconds_per_round" in peer:
        out["speedup_vs_torchattacks"] = {p: peer["seconds_per_round"] / r["seconds_per_round"] for p, r in runs.items()}
        if "target" in cfg:
            out["target"] = f"bf16 >= {cfg['target']}x torchattacks"
            out["meets_target"] = out["speedup_vs_torchattacks"]["bf16"] >= cfg["target"]
    return out


def _vit(c: Check, compiled: bool) -> dict[str, Any]:
    from robust_ens import Ensemble
    from suites.speed.crafting import CostModel, image_side

    cfg = _sizes("vit_b16", c.tiny)
    side = image_side("vit_b16", tiny=c.tiny)
    members = _members("vit_b16", cfg["members"], c)
    x, y = _inputs(cfg, side, c.device)
    model = CostModel.of(members, (3, side, side), cfg["batch"], cfg["steps"], c.device)
    if compiled and c.tiny:  # the same wrapping without inductor's C++ build (minutes on a small CPU)
        wrapped: list[torch.nn.Module] = [torch.compile(m, backend="eager") for m in members]  # type: ignore[misc]
        ens = Ensemble(wrapped, precision="bf16").eval()
        how = "torch.compile(backend='eager') per member (tiny CPU dry run)"
    else:
        ens = Ensemble(members, precision="bf16", compile=compiled).eval()
        how = "Ensemble(compile=True): torch.compile per member (inductor)" if compiled else "eager"
    run = _share(_time_pgd(ens, members, x, y, cfg, c), "bf16", c)
    out: dict[str, Any] = {"attack": f"PGD-{cfg['steps']}", "ensemble": f"{cfg['members']}x ViT-B/16 (timm, random)",
                           "batch": cfg["batch"], "image": [3, side, side], "precision": "bf16", "compile": how,
                           "flops_per_member_image_step": model.flops_per_member_image_step, **run}
    if compiled:
        out["compile_seconds"] = run["warmup_seconds"]
    return out


def check_vit(c: Check) -> dict[str, Any]:
    """4x ViT-B/16 at 224 px, bf16, eager."""
    return _vit(c, compiled=False)


def check_vit_compile(c: Check) -> dict[str, Any]:
    """4x ViT-B/16 at 224 px, bf16, torch.compile; the speed-up over the eager check when it ran."""
    out = _vit(c, compiled=True)
    eager = c.report["checks"].get("vit", {})
    if eager.get("status") == "pass":
        out["speedup_vs_eager"] = eager["seconds_per_round"] / out["seconds_per_round"]
    return out


def _engine_plan(c: Check) -> tuple[str, str, list[str], str | None]:
    """(suite, tier, targets, why it is not the CIFAR-10 run or None)."""
    if c.tiny:
        return "digits-transfer", "smoke", [DIGITS_TARGET], "tiny dry run: digits-transfer's smoke tier"
    from robust_ens.data import find_cifar10

    kind, where = find_cifar10(None, "test")
    if kind is not None:
        return "cifar10-attacks", "small", [], None
    return "digits-transfer", "small", [DIGITS_TARGET], (
        f"no CIFAR-10 found (ROBUST_ENS_DATA={os.environ.get('ROBUST_ENS_DATA', '(unset)')}; looked in "
        f"{len(where) if isinstance(where, list) else 1} places): ran digits-transfer's small tier instead of cifar10-attacks'")


def check_engine(c: Check) -> dict[str, Any]:
    """One small-tier engine run on this device with a fresh store: its summary's cost, FLOPs and GFLOP/s."""
    from robust_ens.bench.craft import device_name
    from robust_ens.bench.runner import run_suite

    suite, tier, targets, fallback = _engine_plan(c)
    out = c.work / f"engine-{suite}-{tier}"
    result = run_suite(suite, tier, targets, out, device=c.device, store=c.work / "advsets-engine", progress=False)
    cost = result.cost.to_dict()
    if cost["device"] != device_name(c.device):
        raise CheckError(f"the engine ran on {cost['device']!r}, not on {device_name(c.device)!r}")
    if cost["advsets_made"] <= 0 or not cost["flops"] > 0:
        raise CheckError(f"the engine made {cost['advsets_made']} sets and counted {cost['flops']} FLOPs on a fresh store")
    rate = cost.get("gflops_per_s")
    return {"suite": suite, "tier": tier, "fallback": fallback, "n": result.n, "dataset": result.dataset,
            "targets": {name: t.clean.acc for name, t in result.targets.items()}, "cells": len(result.cells),
            "cost": cost, "share_of_fp32_peak": rate / c.peaks["fp32"] if rate and c.peaks.get("fp32") else None}


def check_regress(c: Check) -> dict[str, Any]:
    """The committed smoke-tier entries re-run here: exact on their device, a binomial bound across devices."""
    from robust_ens.bench.regress import regress

    paths = [TINY_REGRESS] if c.tiny else []
    rep = regress(paths, root=ROOT / "leaderboards", tier="smoke", device=c.device, out=c.work / "regress",
                  store=c.work / "advsets-regress")
    out = {"tier": "smoke", "summary": rep.summary(), "entries": list(rep.checked), "numbers": rep.numbers,
           "exact_same_device": rep.exact, "across_devices": len(rep.checked) - rep.exact,
           "moved": [asdict(m) for m in rep.moved], "skipped": len(rep.skipped)}
    if not rep.checked:
        raise CheckError("regress re-ran no entry")
    if not rep.ok:
        raise CheckError(f"{len(rep.moved)} numbers moved: " + "; ".join(
            f"{m.entry} {m.cell} {m.recorded} -> {m.now} ({m.tolerance})" for m in rep.moved[:3]))
    return out


# Order: the cheap and certain first, the one that compiles last (a slow compile cannot starve the rest).
# (name, function, seconds it needs at CUDA size, at most; the budget skips a check that cannot fit)
CHECKS: list[tuple[str, Callable[[Check], dict[str, Any]], float]] = [
    ("peak", check_peak, 15), ("crafting", check_crafting, 60), ("vit", check_vit, 60),
    ("engine", check_engine, 150), ("regress", check_regress, 90), ("imagenet_smoke", check_imagenet_smoke, 60),
    ("imagenet_slice", check_imagenet_slice, 90), ("vit_compile", check_vit_compile, 200),
]


# --------------------------------------------------------------------------- running them


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on and with."""
    from robust_ens import __version__
    from robust_ens.bench.craft import device_name

    def version(mod: str) -> str | None:
        try:
            return str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as missing
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"device": str(device), "card": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "robust_ens": __version__, "git_commit": commit, "timm": version("timm"),
            "torchattacks": version("torchattacks"), "python": platform.python_version(),
            "threads": torch.get_num_threads(), "data": os.environ.get("ROBUST_ENS_DATA")}


def _free(c: Check) -> None:
    gc.collect()
    if c.cuda:
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - after a CUDA error: the error itself is what gets reported
            pass


def run_one(c: Check, name: str, fn: Callable[[Check], dict[str, Any]], need_s: float) -> str | None:
    """Run one check into the report; the one-line reason when it failed (``None`` when it passed or was skipped).

    Raises:
        CudaFailure: on a CUDA error (nothing after it can be trusted).
    """
    checks = c.report["checks"]
    if not c.tiny and c.elapsed() + need_s > c.budget_s:
        checks[name] = {"status": "skipped", "seconds": 0.0,
                        "reason": f"time budget: {c.elapsed():.0f} s spent, it needs up to {need_s:.0f} s of {c.budget_s:.0f}"}
        return None
    if c.cuda:
        torch.cuda.reset_peak_memory_stats(c.device)
    t0 = time.perf_counter()
    try:
        figures = fn(c)
        if c.cuda:
            torch.cuda.synchronize(c.device)
    except Exception as err:  # noqa: BLE001 - every failure is reported, then the exit code says so
        reason = one_line(f"{type(err).__name__}: {err}")
        checks[name] = {"status": "fail", "seconds": time.perf_counter() - t0, "reason": reason}
        if is_cuda_error(err) and not isinstance(err, torch.cuda.OutOfMemoryError):  # out of memory: the context lives
            raise CudaFailure(f"{name}: CUDA error: {reason}") from err
        return f"{name}: {reason}"
    finally:
        _free(c)
    row: dict[str, Any] = {"status": "pass", "seconds": time.perf_counter() - t0, **figures}
    if c.cuda:
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(c.device) / 2**30
    checks[name] = row
    return None


def _headline(name: str, row: dict[str, Any]) -> str:
    """One progress line per check (stdout)."""
    if row["status"] != "pass":
        return f"  [{name}] {row['status']}: {row.get('reason', '')}"
    keys = ("bf16_gflops_per_s", "fp32_gflops_per_s", "img_per_s", "gflops_per_s", "compile_seconds", "summary")
    bits = [f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys if k in row]
    for p, r in row.get("runs", {}).items():
        if "gflops_per_s" in r:
            bits.append(f"{p}: {r['img_per_s']:.4g} img/s, {r['gflops_per_s']:.4g} GFLOP/s")
    if "cost" in row:
        bits.append(f"{row['suite']} {row['tier']}: {row['cost']['advsets_made']} sets, "
                    f"{row['cost']['gflops_per_s'] or 0:.4g} GFLOP/s")
    return f"  [{name}] pass in {row['seconds']:.1f} s: " + "; ".join(bits)


def run_checks(c: Check, only: list[str] | None = None) -> tuple[bool, str | None]:
    """Every check in :data:`CHECKS` (or ``only``); ``(ok, first reason)``. The report is rewritten after each."""
    c.report["checks"] = {}
    failures: list[str] = []
    for name, fn, need in CHECKS:
        if only and name not in only:
            continue
        try:
            failed = run_one(c, name, fn, need)
        except CudaFailure as err:
            c.report.update(ok=False, reason=str(err))
            c.write()
            return False, str(err)
        if failed:
            failures.append(failed)
        print(_headline(name, c.report["checks"][name]), flush=True)
        c.write()
    skipped = [f"{n}: skipped ({r['reason']})" for n, r in c.report["checks"].items() if r["status"] == "skipped"]
    reason = (failures + skipped)[0] if failures or skipped else None
    c.report.update(ok=reason is None, reason=reason)
    c.write()
    return reason is None, reason


def default_out() -> Path:
    """``$OUT/gpu-check.json`` when ``$OUT`` is set, else ``runs/gpu-check.json``."""
    return Path(os.environ["OUT"]) / "gpu-check.json" if os.environ.get("OUT") else ROOT / "runs" / "gpu-check.json"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda); cpu only with --tiny")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the same code path in seconds (a dry run)")
    p.add_argument("--dry-run", action="store_true", help="--device cpu --tiny")
    p.add_argument("--out", default=None, help="the JSON report (default $OUT/gpu-check.json, else runs/gpu-check.json)")
    p.add_argument("--only", default=None, help="comma-separated checks to run (default all: "
                   + ",".join(n for n, _, _ in CHECKS) + ")")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds the whole check may take (default 570)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    return args


def fail(message: str) -> int:
    """The one line a failure prints (stderr); exit status 1."""
    print(f"gpu-check: FAIL: {one_line(message, 1000)}", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every check passed, 1 (one line on stderr) otherwise."""
    args = parse(argv)
    out = Path(args.out) if args.out else default_out()
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if only and (unknown := sorted(set(only) - {n for n, _, _ in CHECKS})):
        return fail(f"--only: unknown checks {unknown}; known: {[n for n, _, _ in CHECKS]}")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        return fail(f"--device {args.device}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}, "
                    f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); "
                    "the GPU check never falls back to the CPU (--dry-run runs its CPU rehearsal)")
    if device.type != "cuda" and not args.tiny:
        return fail(f"--device {device} runs only as the tiny dry run (--tiny or --dry-run); the check needs CUDA")
    try:
        project_imports()
    except ImportError as err:
        return fail(f"the project does not import here ({type(err).__name__}: {err}); install it (make gpu-check does) "
                    "or, on a machine without an index, carry the missing wheels")
    with tempfile.TemporaryDirectory(prefix="robust-ens-gpu-check-") as work:
        c = Check(device, args.tiny, out, Path(work), budget_s=args.budget_s)
        try:
            if c.cuda:
                if device.index is not None:  # plain "cuda" is the current device (set_device wants an index)
                    torch.cuda.set_device(device)
                torch.zeros(1, device=device).add_(1).cpu()  # the context, now: a broken driver fails here
            c.report = {"format": FORMAT, "ok": False, "reason": "running", "mode": device.type + ("-tiny" if c.tiny else ""), "report": str(out), "environment": environment(device),
                        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "budget_s": c.budget_s, "checks": {}}
        except Exception as err:  # noqa: BLE001 - no CUDA context: nothing to measure
            return fail(f"CUDA could not start on {device}: {type(err).__name__}: {err}")
        print(f"gpu-check on {c.report['environment']['card']} (torch {torch.__version__}); report {out}", flush=True)
        try:
            c.write()  # an unwritable --out fails here, before any work
            ok, reason = run_checks(c, only)
        except Exception as err:  # noqa: BLE001 - outside a check (the report itself): still one line
            return fail(f"{type(err).__name__}: {err}")
    if not ok:
        return fail(f"{reason} (report {out})")
    print(f"gpu-check: PASS on {c.report['environment']['card']} in {c.elapsed():.0f} s; report {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

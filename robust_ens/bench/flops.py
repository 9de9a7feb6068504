"""FLOPs of a model's passes, measured once per (architecture, input shape) and cached in-process.

The engine's cost model (``cost.flops`` and ``cost.gflops_per_s`` in every ``summary.json``) and the
speed benchmarks (``suites/speed/bench_attacks.py``, ``suites/gpu_check.py``) count FLOPs the same
way: :class:`torch.utils.flop_counter.FlopCounterMode` on ONE image of the data's input size,

- a **forward** pass of each member, and
- a **backward** pass as an attack makes it: the gradient with respect to the input only (no weight
  gradients). It is measured, not assumed: for convolutional nets it is about 1x the forward (a
  training backward, weights included, is about 2x). ResNet-20 at 3x32x32: 81.6 MFLOP forward,
  81.6 MFLOP input gradient, so one member-image-step of PGD is about 163 MFLOP.

FLOPs follow the counter's convention (one multiply-add = 2 FLOPs; convolutions, matmuls and
attention; element-wise work such as BatchNorm and ReLU is not counted). An attack reports its passes
as member-example passes (an ensemble of M counts M per call), so its FLOPs are
``forward passes x mean member forward + backward passes x mean member backward``: exact when every
call visits every member (PGD, MI-FGSM, DI, ...), the mean when an attack visits members one at a
time (SVRE's inner loop, CWA's per-member steps) on an ensemble of mixed architectures.

Measuring never touches what it measures: each member runs in eval mode (restored after), the
global random state is forked, and nothing is cached on the module; crafting stays bit-identical.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from robust_ens.ensemble import Ensemble
from robust_ens.evaluation import eval_mode, model_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one image through one model: its forward and its input-gradient backward."""

    forward: float
    backward: float

    @property
    def step(self) -> float:
        """One attack step of one member on one image: a forward and an input gradient."""
        return self.forward + self.backward


_CACHE: dict[tuple[str, tuple[int, ...], str], PassFlops] = {}
_FAILED: set[str] = set()


def _arch_key(module: nn.Module) -> str:
    """What fixes a module's FLOPs: its class and its printed structure (layer shapes and options)."""
    text = f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}"
    return hashlib.sha256(text.encode()).hexdigest()


def _input_dtype(module: nn.Module) -> torch.dtype:
    p = next((t for t in module.parameters() if t.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def members(module: nn.Module) -> list[nn.Module]:
    """The members of an :class:`~robust_ens.Ensemble` (packed ones too), or ``[module]``."""
    return list(module.members) if isinstance(module, Ensemble) else [module]


def model_flops(module: nn.Module, input_shape: tuple[int, ...], device: torch.device | str | None = None) -> PassFlops:
    """FLOPs of one image ``input_shape`` (``(C, H, W)``) through ``module``, cached per architecture and shape.

    Args:
        module: A single model (call :func:`member_flops` for an ensemble's mean member).
        input_shape: One image's shape, without the batch dimension.
        device: Where to run the measuring pass (default: the module's own device).

    Returns:
        The forward and input-gradient FLOPs; zeros (with one warning per architecture) when the
        module cannot be measured, so a cost model never stops a run.
    """
    from torch.utils.flop_counter import FlopCounterMode

    module = getattr(module, "_orig_mod", module)  # a torch.compile'd module: measure what it compiles
    dev = torch.device(device) if device is not None else model_device(module)
    arch = _arch_key(module)
    key = (arch, tuple(int(s) for s in input_shape), dev.type)
    if key in _CACHE:
        return _CACHE[key]
    x = torch.full((1, *key[1]), 0.5, device=dev, dtype=_input_dtype(module), requires_grad=True)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), eval_mode(module):
            with FlopCounterMode(display=False) as fwd:
                out = module(x)
            with FlopCounterMode(display=False) as bwd:
                torch.autograd.grad(out.float().sum(), x)
        got = PassFlops(float(fwd.get_total_flops()), float(bwd.get_total_flops()))
    except Exception as err:  # noqa: BLE001 - a model the counter cannot follow costs its FLOPs, not the run
        if arch not in _FAILED:
            log.warning("FLOPs of %s not measured (%s); counted as 0", type(module).__name__, err)
            _FAILED.add(arch)
        got = PassFlops(0.0, 0.0)
    _CACHE[key] = got
    return got


def member_flops(module: nn.Module, input_shape: tuple[int, ...], device: torch.device | str | None = None) -> PassFlops:
    """The mean over an ensemble's members (or the model itself) of :func:`model_flops`.

    This is what one member-example pass costs, the unit attacks count their passes in.
    """
    per = [model_flops(m, input_shape, device) for m in members(module)]
    return PassFlops(sum(p.forward for p in per) / len(per), sum(p.backward for p in per) / len(per))


def pass_flops(module: nn.Module, input_shape: tuple[int, ...], forward: float, backward: float,
               device: torch.device | str | None = None) -> float:
    """FLOPs of ``forward`` and ``backward`` member-example passes through ``module`` (an attack's count)."""
    if not forward and not backward:
        return 0.0
    f = member_flops(module, input_shape, device)
    return forward * f.forward + backward * f.backward


def ensemble_forward_flops(module: nn.Module, input_shape: tuple[int, ...],
                           device: torch.device | str | None = None) -> float:
    """FLOPs of one image through the whole model: every member's forward (what evaluation costs)."""
    return sum(model_flops(m, input_shape, device).forward for m in members(module))


def gflops_per_s(flops: float, seconds: float) -> float | None:
    """Achieved GFLOP/s, ``None`` when nothing was measured."""
    return flops / seconds / 1e9 if flops > 0 and seconds > 0 else None


__all__ = ["PassFlops", "ensemble_forward_flops", "gflops_per_s", "member_flops", "members", "model_flops",
           "pass_flops"]

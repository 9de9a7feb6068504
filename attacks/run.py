"""What one attack call sees and returns: :class:`AttackRun` (the call's context) and
:class:`AttackResult` with its :class:`Cost`.

:meth:`robust_ens.attacks.base.Attack.__call__` creates one :class:`AttackRun` per call and hands
it to the loop's hooks: it wraps the surrogate's forward passes (counted, for :class:`Cost`), the
objective and the call's random generator. Nothing here holds an attack's hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.ensemble import Ensemble
from robust_ens.evaluation import model_dtype


@dataclass
class Cost:
    """What an attack call spent.

    Attributes:
        forward: Model forward passes per example (an ensemble of M members counts M per call;
            k transformed copies count k).
        backward: Model backward passes per example, counted the same way.
        seconds: Wall time of the call (device synchronized).
        examples: Batch size ``N``.
    """

    forward: float
    backward: float
    seconds: float
    examples: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: Adversarial images: same shape, dtype and device as ``x``; within the budget and [0, 1].
        cost: Passes and time actually spent.
        seed: The seed of the generator used (``None`` when a generator was passed in).
    """

    x_adv: torch.Tensor
    cost: Cost
    seed: int | None = None


class AttackRun:
    """State of one attack call: the surrogate, labels, generator and pass counters.

    Subclass hooks receive this object; it is created by :meth:`Attack.__call__` and never kept.

    Attributes:
        surrogate: The model or :class:`~robust_ens.Ensemble` under attack.
        labels: What the objective is measured against: ``y`` (untargeted) or ``target``.
        targeted: Whether the attack moves towards ``labels`` (targeted) or away from them.
        generator: The ``torch.Generator`` all randomness is drawn from.
        num_classes: Number of classes ``K``.
    """

    def __init__(
        self,
        surrogate: nn.Module,
        labels: torch.Tensor,
        targeted: bool,
        generator: torch.Generator,
        num_classes: int,
        n: int,
    ) -> None:
        self.surrogate = surrogate
        self.is_ensemble = isinstance(surrogate, Ensemble)
        self.labels = labels
        self.targeted = targeted
        self.generator = generator
        self.num_classes = num_classes
        self.n = n
        self._fwd = 0  # example-passes
        self._bwd = 0
        self.model_dtype = model_dtype(surrogate)

    # ---- members
    @property
    def members(self) -> list[nn.Module]:
        """The ensemble's members (a single model counts as one member)."""
        if isinstance(self.surrogate, Ensemble):
            return list(self.surrogate.members)
        return [self.surrogate]

    @property
    def n_members(self) -> int:
        return len(self.surrogate) if isinstance(self.surrogate, Ensemble) else 1

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == self.model_dtype else x.to(self.model_dtype)

    # ---- forwards (counted)
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Surrogate scores ``[n, K]``: an Ensemble combines its members its own way (``"vote"``,
        which has no useful gradient, is attacked through the mean probability)."""
        if isinstance(self.surrogate, Ensemble):
            ens = self.surrogate
            logits = self.member_logits(x)
            if ens.combine == "vote":  # votes have no useful gradient: attack the mean probability
                w = ens.weights.to(logits.device).view(-1, 1, 1)
                return (w * F.softmax(logits, dim=-1)).sum(0).clamp_min(1e-12).log()
            return ens.combine_logits(logits)
        self._fwd += x.shape[0]
        return self.surrogate(self._to_model(x)).float()

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits ``[M, n, K]`` (float32)."""
        if isinstance(self.surrogate, Ensemble):
            self._fwd += x.shape[0] * len(self.surrogate)
            return self.surrogate.member_logits(self._to_model(x))
        return self.logits(x).unsqueeze(0)

    def member_logit(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, K]`` of member ``k`` alone, under the ensemble's precision policy."""
        ens = self.surrogate
        if not isinstance(ens, Ensemble):
            if k != 0:
                raise IndexError(k)
            return self.logits(x)
        self._fwd += x.shape[0]
        return ens.member_forward(k, self._to_model(x))

    # ---- objective (what the attack ascends)
    def objective(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example objective ``[n]`` to maximize: CE to ``y``, or minus CE to the target."""
        lab = self.labels if labels is None else labels
        if logits.shape[0] != lab.shape[0]:  # transformed copies stacked along the batch
            lab = lab.repeat(logits.shape[0] // lab.shape[0])
        ce = F.cross_entropy(logits, lab, reduction="none")
        return -ce if self.targeted else ce

    def objective_from_log_probs(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Like :meth:`objective` for log-probabilities (probability-averaged ensembles)."""
        lab = self.labels
        if log_probs.shape[0] != lab.shape[0]:
            lab = lab.repeat(log_probs.shape[0] // lab.shape[0])
        nll = F.nll_loss(log_probs, lab, reduction="none")
        return -nll if self.targeted else nll

    def grad(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Gradient of ``fn(x).sum()`` with respect to ``x`` (one backward per counted forward)."""
        before = self._fwd
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = fn(xg).sum()
            (g,) = torch.autograd.grad(loss, xg)
        self._bwd += self._fwd - before
        return g

    def count_forward(self, example_passes: int) -> None:
        """Record forward passes made outside the surrogate's own forward (``example_passes`` = examples
        x models), e.g. through ``torch.func.functional_call`` with sampled weights (MBA)."""
        self._fwd += example_passes

    def count_backward(self, example_passes: int) -> None:
        """Record backward passes made outside :meth:`grad` (``example_passes`` = examples x models)."""
        self._bwd += example_passes

    # ---- randomness
    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) noise shaped like ``x`` from the run's generator."""
        return torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x`` from the run's generator."""
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def randint(self, low: int, high: int) -> int:
        """One integer in ``[low, high)`` from the run's generator."""
        if high <= low:
            return low
        dev = self.generator.device
        return int(torch.randint(low, high, (1,), generator=self.generator, device=dev).item())

    def cost(self, seconds: float) -> Cost:
        n = max(self.n, 1)
        return Cost(forward=self._fwd / n, backward=self._bwd / n, seconds=seconds, examples=self.n)


__all__ = ["AttackResult", "AttackRun", "Cost"]

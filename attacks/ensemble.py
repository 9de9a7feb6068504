"""Ensemble strategies over an Ensemble's members: Ens (logit/probability/loss averaging), SVRE, CWA.

Every other attack also accepts an :class:`~robust_ens.Ensemble` as surrogate and then attacks the
ensemble's own combined output (``combine="logits"`` or ``"probs"``); the strategies here look at
the members individually and refuse a single model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError

from .base import _TINY, AttackRun, Part, _l1_mean, _l2, register_attack
from .gradient import MIFGSM

FUSIONS = ("logits", "probs", "loss")


def _member_objective(run: AttackRun, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: run.objective(run.member_logit(k, z))


@register_attack("ens", family="ensemble", ensemble_only=True)
class Ens(MIFGSM):
    r"""Ens: MI-FGSM on a fused ensemble loss (average of logits, of probabilities, or of losses).

    Papers: Liu et al., "Delving into Transferable Adversarial Examples and Black-box Attacks",
    ICLR 2017 (probability averaging, https://arxiv.org/abs/1611.02770); Dong et al., "Boosting
    Adversarial Attacks with Momentum", CVPR 2018 (logit averaging, Sec. 3.2, which found it best).

    The ensemble's member weights are used; its own ``combine`` setting is ignored in favour of
    ``fusion``.

    Distance measure: Linf (L2 accepted).

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        decay: Momentum factor (default 1.0; 0 gives I-FGSM on the ensemble).
        fusion: ``"logits"`` (default), ``"probs"`` or ``"loss"``.
        random_start: Random start (default False).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from robust_ens import models, Ensemble
        >>> from robust_ens.attacks import Ens
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(3)])
        >>> res = Ens(eps=8/255, fusion="loss", steps=5)(ens, torch.rand(2, 1, 8, 8), torch.tensor([1, 2]))
        >>> res.cost.forward, res.cost.backward
        (15.0, 15.0)
    """

    ensemble_only = True
    fusion: str

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
        fusion: str = "logits",
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if fusion not in FUSIONS:
            raise RobustEnsError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start,
                         norm=norm, transforms=transforms, fusion=fusion)

    def objective(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        logits = run.member_logits(x)  # [M, n, K]
        ens = run.surrogate
        assert isinstance(ens, Ensemble)
        w = ens.weights.to(logits.device).view(-1, 1, 1)
        if self.fusion == "logits":
            return run.objective((w * logits).sum(0))
        if self.fusion == "probs":
            probs = (w * F.softmax(logits, dim=-1)).sum(0)
            return run.objective_from_log_probs(probs.clamp_min(1e-12).log())
        per_member = torch.stack([run.objective(lg) for lg in logits])  # [M, n]
        return (w.view(-1, 1) * per_member).sum(0)


@register_attack("svre", family="ensemble", ensemble_only=True)
class SVRE(MIFGSM):
    r"""SVRE: stochastic variance-reduced ensemble attack (MI-FGSM outer loop, SVRG inner loop).

    Paper: Xiong et al., "Stochastic Variance Reduced Ensemble Adversarial Attack for Boosting
    the Adversarial Transferability", CVPR 2022 (https://arxiv.org/abs/2111.10752).

    Each outer step takes the ensemble gradient ``g_ens`` (the surrogate's combined output) and
    every member's gradient ``g_k`` at ``x_adv``; then ``m`` inner steps each pick a random member
    ``k``, use the variance-reduced gradient ``grad_k(x_inner) - (g_k - g_ens)``, accumulate it
    (L1-normalized) with momentum ``inner_decay`` and take a sign step ``beta`` in the ball. The
    outer momentum update uses the accumulated inner gradient.

    Departure: the member gradients at ``x_adv`` are computed once per outer step and reused
    (the reference ports recompute them at every inner step; the result is the same).

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 16/255, the paper).
        alpha: Outer step size (default 1.6/255).
        steps: Outer iterations (default 10).
        decay: Outer momentum (default 1.0).
        m: Inner iterations (default ``None``: 4 x the number of members, the paper's choice).
        beta: Inner step size (default ``None``: ``alpha``).
        inner_decay: Inner momentum (default 1.0).
        random_start: Random start (default False).
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from robust_ens import models, Ensemble
        >>> from robust_ens.attacks import SVRE
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
        >>> res = SVRE(steps=2)(ens, torch.rand(2, 1, 8, 8), torch.tensor([1, 2]), seed=0)
        >>> res.cost.backward  # per step: 2 (ensemble) + 2 (members) + 8 inner
        24.0
    """

    ensemble_only = True
    norms = ("Linf",)
    m: int | None
    beta: float | None
    inner_decay: float

    def __init__(
        self,
        *,
        eps: float = 16 / 255,
        alpha: float = 1.6 / 255,
        steps: int = 10,
        decay: float = 1.0,
        m: int | None = None,
        beta: float | None = None,
        inner_decay: float = 1.0,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise RobustEnsError(f"m (inner iterations) must be an integer >= 1 or None, got {m!r}")
        if beta is not None and not beta > 0:
            raise RobustEnsError(f"beta (inner step size) must be positive or None, got {beta!r}")
        if not inner_decay >= 0:
            raise RobustEnsError(f"inner_decay must be >= 0, got {inner_decay!r}")
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, m=m, beta=None if beta is None else float(beta),
                         inner_decay=float(inner_decay))

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        n_members = run.n_members
        g_ens = self.input_gradient(run, x_adv)
        g_members = [self.input_gradient(run, x_adv, _member_objective(run, k)) for k in range(n_members)]
        beta = self.step_size if self.beta is None else self.beta
        z = x_adv
        acc = torch.zeros_like(x_adv)
        for _ in range(self.m or 4 * n_members):
            k = run.randint(0, n_members)
            gi = self.input_gradient(run, z, _member_objective(run, k)) - (g_members[k] - g_ens)
            acc = self.inner_decay * acc + gi / (_l1_mean(gi) + _TINY)
            z = x + self.project(x, z - x + beta * acc.sign())
        return self.transform_gradient(run, acc)


@register_attack("cwa", family="ensemble", ensemble_only=True)
class CWA(MIFGSM):
    r"""CWA (MI-CWA): common-weakness attack: flatness (reverse step) + cosine-similarity encourager.

    Paper: Chen et al., "Rethinking Model Ensemble in Transfer-based Adversarial Attacks",
    ICLR 2024 (https://arxiv.org/abs/2303.09105).

    Each outer step, from ``x_adv``:

    1. flatness (sharpness-aware reverse step): ``z = x_adv - r * sign(grad L_ens(x_adv))``, going
       *down* the ensemble loss, ``r = eps / 15``;
    2. CSE: members one at a time, each adding its L2-normalized gradient at the current ``z``
       to an inner momentum (``inner_decay`` mu = 1) and stepping ``z += beta * inner`` (projected);
    3. outer: ``g = decay * g + (z - x_adv) / mean|z - x_adv|``, ``x_adv += alpha * sign(g)``,
       ``alpha = eps / 5``.

    Switches: ``flatness=False`` skips step 1; ``cse=False`` replaces step 2 by the plain ensemble
    gradient at ``z``. With both off the attack is MI-FGSM on the ensemble (tested).

    Choices where the paper and the authors' code disagree (documented departures):

    * ``beta``: the paper states 50, the authors' code uses 250. Default 50 (the paper). For
      images of 32 px and more both values make most inner steps hit the eps ball, so the choice
      matters little there; it is a parameter.
    * The authors' code normalizes the outer change by its L1 norm over the *whole batch*; here
      it is per example (as MI-FGSM), so an example's update does not depend on its batch.
    * Every normalization adds a small constant (1e-12): the authors' code divides by zero when
      a member's gradient or the net change vanishes.

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 16/255, the paper).
        alpha: Outer step (default ``None``: eps / 5).
        steps: Outer iterations (default 10).
        decay: Outer momentum (default 1.0).
        reverse_step: Flatness step r (default ``None``: eps / 15).
        beta: CSE inner step (default 50, see above).
        inner_decay: CSE inner momentum mu (default 1.0).
        flatness: Do the reverse step (default True).
        cse: Do the CSE inner loop (default True).
        random_start: Random start (default False).
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from robust_ens import models, Ensemble
        >>> from robust_ens.attacks import CWA
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
        >>> res = CWA(eps=16/255, steps=2)(ens, torch.rand(2, 1, 8, 8), torch.tensor([1, 2]))
        >>> res.cost.backward  # per step: 2 (flatness) + 2 (CSE)
        8.0
    """

    ensemble_only = True
    norms = ("Linf",)
    reverse_step: float | None
    beta: float
    inner_decay: float
    flatness: bool
    cse: bool

    def __init__(
        self,
        *,
        eps: float = 16 / 255,
        alpha: float | None = None,
        steps: int = 10,
        decay: float = 1.0,
        reverse_step: float | None = None,
        beta: float = 50.0,
        inner_decay: float = 1.0,
        flatness: bool = True,
        cse: bool = True,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if reverse_step is not None and not reverse_step > 0:
            raise RobustEnsError(f"reverse_step must be positive or None (eps / 15), got {reverse_step!r}")
        if not beta > 0:
            raise RobustEnsError(f"beta (the CSE inner step) must be positive, got {beta!r}")
        if not inner_decay >= 0:
            raise RobustEnsError(f"inner_decay must be >= 0, got {inner_decay!r}")
        super().__init__(
            eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
            transforms=transforms, reverse_step=None if reverse_step is None else float(reverse_step),
            beta=float(beta), inner_decay=float(inner_decay), flatness=bool(flatness), cse=bool(cse),
        )

    @property
    def step_size(self) -> float:
        return self.eps / 5 if self.alpha is None else self.alpha

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        z = x_adv
        if self.flatness:
            r = self.eps / 15 if self.reverse_step is None else self.reverse_step
            g = self.input_gradient(run, z)
            z = x + self.project(x, z - x - r * g.sign())
        if not self.cse:
            return self.transform_gradient(run, self.input_gradient(run, z))
        inner = torch.zeros_like(z)
        for k in range(run.n_members):
            gk = self.input_gradient(run, z, _member_objective(run, k))
            inner = self.inner_decay * inner + gk / (_l2(gk) + _TINY)
            z = x + self.project(x, z - x + self.beta * inner)
        return self.transform_gradient(run, z - x_adv)


@register_attack("adaea", family="ensemble", ensemble_only=True)
class AdaEA(MIFGSM):
    r"""AdaEA: adaptive ensemble weights (AGM) and a disparity-reduced gradient filter (DRF).

    Paper: Chen et al., "An Adaptive Model Ensemble Adversarial Attack for Boosting Adversarial
    Transferability", ICCV 2023 (https://arxiv.org/abs/2308.02897).

    Each step, from every member's gradient ``g_k`` at ``x_adv``:

    * AGM: member ``k``'s one-step example ``x_k = x_adv + alpha * sign(g_k)`` (projected) is
      scored by its adversarial ratio ``rho_k = mean_{j != k} L_j(x_k) / L_k(x_k)`` (how well it
      transfers to the other members); the logits are fused with weights ``softmax(beta * rho)``;
    * DRF: the fused gradient is zeroed at pixels where the members' gradients disagree: the mean
      pairwise cosine similarity across channels is below ``threshold``;
    * then an MI-FGSM update.

    Departures: weights are computed per example (the reference code uses batch-mean losses, so
    an example's weights depend on its batch); for targeted attacks the ratio is inverted
    (``L_k(x_k) / L_j(x_k)``, losses to the target) so that a larger ratio still means better
    transfer; the DRF similarity is the mean over all member pairs.

    Cost per step: M forwards and 2M backwards, plus M x M forwards (no gradient) for AGM.

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 16/255, the paper).
        alpha: Step size (default 1.6/255).
        steps: Iterations (default 10).
        decay: Momentum (default 1.0).
        beta: AGM temperature (default 10).
        threshold: DRF cosine-similarity threshold (default 0).
        random_start: Random start (default False).
        transforms: Extra parts (SGM; input transforms are not applied by AdaEA).

    Example:
        >>> import torch
        >>> from robust_ens import models, Ensemble
        >>> from robust_ens.attacks import AdaEA
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(3)])
        >>> res = AdaEA(steps=2)(ens, torch.rand(2, 1, 8, 8), torch.tensor([1, 2]))
        >>> res.cost.forward, res.cost.backward  # per step: 3 + 3 x 3 forwards, 2 x 3 backwards
        (24.0, 12.0)
    """

    ensemble_only = True
    norms = ("Linf",)
    beta: float
    threshold: float

    def __init__(
        self,
        *,
        eps: float = 16 / 255,
        alpha: float = 1.6 / 255,
        steps: int = 10,
        decay: float = 1.0,
        beta: float = 10.0,
        threshold: float = 0.0,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if not beta >= 0:
            raise RobustEnsError(f"beta (the AGM temperature) must be >= 0, got {beta!r}")
        if not -1 <= threshold <= 1:
            raise RobustEnsError(f"threshold (a cosine similarity) must be in [-1, 1], got {threshold!r}")
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, beta=float(beta), threshold=float(threshold))

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        n_m, n = run.n_members, x_adv.shape[0]
        xg = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = run.member_logits(xg)  # [M, n, K]
            ce = torch.stack([F.cross_entropy(lg, run.labels, reduction="none") for lg in logits])  # [M, n]
            obj = -ce if run.targeted else ce
            grads = [torch.autograd.grad(obj[k].sum(), xg, retain_graph=True)[0] for k in range(n_m)]
            run.count_backward(n * n_m)
            # AGM: how well each member's one-step example transfers to the others
            with torch.no_grad():
                cross = torch.empty(n_m, n_m, n, device=x.device)  # cross[k, j] = L_j(x_k)
                for k in range(n_m):
                    xk = x + self.project(x, x_adv - x + self.step_size * grads[k].sign())
                    for j in range(n_m):
                        cross[k, j] = F.cross_entropy(run.member_logit(j, xk), run.labels, reduction="none")
                own = cross.diagonal(dim1=0, dim2=1).T.clamp_min(1e-12)  # [M, n]: L_k(x_k)
                off = ~torch.eye(n_m, dtype=torch.bool, device=x.device)
                if run.targeted:
                    ratio = own.unsqueeze(1) / cross.clamp_min(1e-12)
                else:
                    ratio = cross / own.unsqueeze(1)
                rho = (ratio * off.unsqueeze(-1)).sum(1) / (n_m - 1)  # [M, n]
                w = torch.softmax(self.beta * rho, dim=0)  # per example
            fused = (w.unsqueeze(-1) * logits).sum(0)
            g = torch.autograd.grad(run.objective(fused).sum(), xg)[0]
            run.count_backward(n * n_m)
        # DRF: keep pixels where the members' gradient directions agree
        unit = [F.normalize(gk, dim=1, eps=1e-12) for gk in grads]
        sims = [(unit[i] * unit[j]).sum(1, keepdim=True) for i in range(n_m) for j in range(i + 1, n_m)]
        sim = torch.stack(sims).mean(0)
        return self.transform_gradient(run, g * (sim >= self.threshold).to(g.dtype))


__all__ = ["CWA", "FUSIONS", "SVRE", "AdaEA", "Ens"]

"""Ensemble strategies over an Ensemble's members: Ens (logit/probability/loss averaging), SVRE, CWA.

Every other attack also accepts an :class:`~robust_ens.Ensemble` as surrogate and then attacks the
ensemble's own combined output (``combine="logits"`` or ``"probs"``); the strategies here look at
the members individually and refuse a single model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F

from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.overrides import Count, Decay, Range, Step

from .base import AttackRun, Part, register_attack
from .budget import _TINY, _l1_mean, _l2
from .gradient import MIFGSM

FUSIONS = ("logits", "probs", "loss")
REVERSE_LOGITS = ("sum", "ensemble")
OUTER_NORMS = ("example", "batch")
TRANSFORM_PLACEMENTS = ("authors", "update")
AGM_RATIOS = ("code", "own")
DRF_MODES = ("code", "pairs")
AGM_REDUCTIONS = ("example", "batch")


def _member_objective(run: AttackRun, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: run.objective(run.member_logit(k, z))


@register_attack("ens", family="ensemble", ensemble_only=True)
class Ens(MIFGSM):
    r"""Ens: MI-FGSM on a fused ensemble loss (average of logits, of probabilities, or of losses).

    Papers: Liu et al., "Delving into Transferable Adversarial Examples and Black-box Attacks",
    ICLR 2017 (probability averaging, https://arxiv.org/abs/1611.02770); Dong et al., "Boosting
    Adversarial Attacks with Momentum", CVPR 2018 (logit averaging, Sec. 3.2, which found it best).

    The ensemble's member weights are used; its own ``combine`` setting is ignored in favour of
    ``fusion``. TransferAttack's ``ENS`` (eps 16/255, alpha 1.6/255) is ``fusion="logits"``; its
    fixture agrees to rounding (tests/test_transferattack_agreement.py).

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
        alpha: Step = 2 / 255,
        steps: Count = 10,
        decay: Decay = 1.0,
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

    Authors' code: JHL-HUST/SVRE, ``SVRE-MI-FGSM.py`` (``main``; TensorFlow). Checked against it:
    the ensemble gradient is that of the loss of the *mean* logits (as the surrogate's own
    ``combine="logits"`` output here); each inner step draws one member uniformly with
    replacement for the whole batch; the variance-reduced gradient is normalized by its mean
    absolute value per example and accumulated with the outer ``momentum`` flag (1.0), which is
    ``inner_decay`` here; the inner momentum starts at zero at every outer step; the outer update
    normalizes the *last* accumulated inner gradient per example; ``alpha = beta = eps / 10``
    and ``m_svrg = 16`` for their 4 models (4 x M here). No switch is needed. Their Inception
    members add a 0.4-weighted auxiliary-logit loss, which only applies to Inception models.

    Departure: the member gradients at ``x_adv`` are computed once per outer step and reused
    (the authors recompute them at every inner step; the values are the same). TransferAttack:
    ``random_start=True``, numpy draws the members (here :meth:`pick_member`, the call's generator),
    and ``K = len(model_name)`` (a single name string counts its characters); with its draws
    injected its fixture agrees to rounding (tests/test_transferattack_agreement.py).

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
        alpha: Step = 1.6 / 255,
        steps: Count = 10,
        decay: Decay = 1.0,
        m: Count | None = None,
        beta: Step | None = None,
        inner_decay: Decay = 1.0,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, m=m, beta=None if beta is None else float(beta),
                         inner_decay=float(inner_decay))

    def pick_member(self, run: AttackRun) -> int:
        """The member of one inner step: uniform with replacement, from the call's generator."""
        return run.randint(0, run.n_members)

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        n_members = run.n_members
        g_ens = self.input_gradient(run, x_adv)
        g_members = [self.input_gradient(run, x_adv, _member_objective(run, k)) for k in range(n_members)]
        beta = self.step_size if self.beta is None else self.beta
        z = x_adv
        acc = torch.zeros_like(x_adv)
        for _ in range(self.m or 4 * n_members):
            k = self.pick_member(run)
            gi = self.input_gradient(run, z, _member_objective(run, k)) - (g_members[k] - g_ens)
            acc = self.inner_decay * acc + gi / (_l1_mean(gi) + _TINY)
            z = x + self.project(x, z - x + beta * acc.sign())
        return self.transform_gradient(run, acc)


@register_attack("cwa", family="ensemble", ensemble_only=True)
class CWA(MIFGSM):
    r"""CWA (MI-CWA): common-weakness attack: flatness (reverse step) + cosine-similarity encourager.

    Paper: Chen et al., "Rethinking Model Ensemble in Transfer-based Adversarial Attacks",
    ICLR 2024 (https://arxiv.org/abs/2303.09105). Authors' code: huanranchen/AdversarialAttacks,
    ``attacks/AdversarialInput/CommonWeakness.py``, ``MI_CommonWeakness.attack`` and ``end_attack``.

    Each outer step, from ``x_adv``:

    1. flatness (sharpness-aware reverse step): ``z = x_adv - r * sign(grad L(x_adv))``, going
       *down* the loss ``L`` of the summed member logits (see ``reverse_logits``), ``r = eps / 15``;
    2. CSE: members one at a time, each adding its L2-normalized gradient at the current ``z``
       to an inner momentum ``m_in`` (``inner_decay`` mu = 1) and stepping ``z += beta * m_in``
       (projected). ``m_in`` starts at zero once, before the first outer step, and is carried
       from one outer step to the next (see ``carry_inner_momentum``);
    3. outer: ``g = decay * g + (z - x_adv) / mean|z - x_adv|``, ``x_adv += alpha * sign(g)``,
       ``alpha = eps / 5``.

    Switches: ``flatness=False`` skips step 1; ``cse=False`` replaces step 2 by the plain ensemble
    gradient at ``z``. With both off the attack is MI-FGSM on the ensemble (tested).

    Fidelity switches. The rule: a default reproduces the authors' code (what produced the
    published numbers) unless the paper's text says otherwise or it would make one example's
    result depend on the other examples of its batch. The paper's full text was not available
    when these were checked, so the defaults below follow the authors' code except where noted.

    * ``carry_inner_momentum`` (default True, the authors' code: ``inner_momentum`` is created
      once before the outer loop of ``MI_CommonWeakness.attack`` and never reset). False resets
      it to zero at every outer step (this package's behaviour before issue 15). Issue 15
      measured the difference: 87% of the pixels differ after 10 steps at eps 16/255 on 8
      CIFAR images with three ResNet-20 members.
    * ``reverse_logits`` (default ``"sum"``, the authors' code: ``logit += model(x)`` over the
      members, then cross-entropy of that sum). ``"ensemble"`` uses the surrogate's own combined
      output instead (the weighted *mean* of the logits for ``combine="logits"``; this package's
      behaviour before issue 15). Cross-entropy of a sum is cross-entropy at a lower softmax
      temperature, so the two give different signs. With non-uniform ensemble weights ``w``,
      ``"sum"`` uses ``M * sum_k w_k logits_k`` (the plain sum for equal weights).
    * ``outer_norm`` (default ``"example"``, our choice for batch independence): the outer change
      ``z - x_adv`` is L1-normalized per example, as in MI-FGSM. ``"batch"`` normalizes by the
      L1 norm of the whole batch, as ``end_attack`` does (``torch.norm(fake_grad, p=1)``), which
      makes an example's update depend on the rest of its batch.
    * ``beta`` (default 50): the paper states 50, the authors' code uses 250
      (``inner_step_size=250``). Default 50, the paper's text, per the rule; both values are
      large enough that most inner steps hit the eps ball at 32 px and more.
    * ``alpha`` (default ``None``: eps / 5): ``end_attack`` always steps ``ksi = 16/255/5``,
      whatever the attack's ``step_size``; that is eps / 5 at the paper's eps 16/255, so the
      default scales it with eps. Pass ``alpha=16/255/5`` for the code's constant.
    * Every normalization adds a small constant (1e-12): the authors' code divides by zero when
      a member's gradient or the net change vanishes.
    * TransferAttack (``ensemble/cwa.py``) is ``alpha=3.2/255, beta=250, reverse_logits="ensemble",
      outer_norm="batch", random_start=True`` (its ``beta=50`` is never used; it divides by the
      batch's L1 sum, a positive multiple of the mean); its fixture then agrees to rounding.

    * ``transform_placement`` (default ``"authors"``): where the parts act. ``"authors"``, as
      ``MI_CommonWeakness.attack`` with ``DI``/``TI``: gradient transforms (TI) smooth the
      reverse-step gradient and every inner gradient (before its L2 normalization), input
      transforms (DI, SI) apply in the inner loop only, and the outer change is not smoothed.
      ``"update"``: input transforms in both the reverse step and the inner loop, gradient
      transforms on the outer change ``z - x_adv`` only (this package before issue 15). Without
      parts the two are identical. (The authors' DI is a random crop with padding; :class:`DI`
      here is the usual resize-and-pad.)

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
        carry_inner_momentum: Keep the CSE inner momentum across outer steps (default True).
        reverse_logits: Loss of the reverse step: ``"sum"`` of member logits (default) or the
            surrogate's own combined output, ``"ensemble"``.
        outer_norm: L1 normalization of the outer change per ``"example"`` (default) or over
            the whole ``"batch"``.
        transform_placement: ``"authors"`` (default) or ``"update"``, see above.
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
    code_version = 2  # issue 15: carried inner momentum and summed reverse-step logits by default
    reverse_step: float | None
    beta: float
    inner_decay: float
    flatness: bool
    cse: bool
    carry_inner_momentum: bool
    reverse_logits: str
    outer_norm: str
    transform_placement: str

    def __init__(
        self,
        *,
        eps: float = 16 / 255,
        alpha: Step | None = None,
        steps: Count = 10,
        decay: Decay = 1.0,
        reverse_step: Step | None = None,
        beta: Step = 50.0,
        inner_decay: Decay = 1.0,
        flatness: bool = True,
        cse: bool = True,
        carry_inner_momentum: bool = True,
        reverse_logits: str = "sum",
        outer_norm: str = "example",
        transform_placement: str = "authors",
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if transform_placement not in TRANSFORM_PLACEMENTS:
            raise RobustEnsError(
                f"transform_placement must be one of {TRANSFORM_PLACEMENTS}, got {transform_placement!r}")
        if reverse_logits not in REVERSE_LOGITS:
            raise RobustEnsError(f"reverse_logits must be one of {REVERSE_LOGITS}, got {reverse_logits!r}")
        if outer_norm not in OUTER_NORMS:
            raise RobustEnsError(f"outer_norm must be one of {OUTER_NORMS}, got {outer_norm!r}")
        super().__init__(
            eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
            transforms=transforms, reverse_step=None if reverse_step is None else float(reverse_step),
            beta=float(beta), inner_decay=float(inner_decay), flatness=bool(flatness), cse=bool(cse),
            carry_inner_momentum=bool(carry_inner_momentum), reverse_logits=str(reverse_logits),
            outer_norm=str(outer_norm), transform_placement=str(transform_placement),
        )

    @property
    def step_size(self) -> float:
        return self.eps / 5 if self.alpha is None else self.alpha

    def reverse_objective(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        """Per-example objective ``[n]`` whose gradient sign the reverse (flatness) step descends."""
        if self.reverse_logits == "ensemble":
            return self.objective(run, x)
        logits = run.member_logits(x)  # [M, n, K]
        ens = run.surrogate
        assert isinstance(ens, Ensemble)
        w = ens.weights.to(logits.device)
        if bool((w == w[0]).all()):
            return run.objective(logits.sum(0))
        return run.objective((len(w) * w.view(-1, 1, 1) * logits).sum(0))

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        authors = self.transform_placement == "authors"
        z = x_adv
        if self.flatness:
            r = self.eps / 15 if self.reverse_step is None else self.reverse_step
            reverse = lambda u: self.reverse_objective(run, u)  # noqa: E731
            if authors:  # no input transforms in the reverse step; its gradient is smoothed
                g = self.transform_gradient(run, run.grad(reverse, z))
            else:
                g = self.input_gradient(run, z, reverse)
            z = x + self.project(x, z - x - r * g.sign())
        if not self.cse:
            return self.transform_gradient(run, self.input_gradient(run, z))
        inner = state.get("inner_momentum") if self.carry_inner_momentum else None
        if inner is None:
            inner = torch.zeros_like(z)
        for k in range(run.n_members):
            gk = self.input_gradient(run, z, _member_objective(run, k))
            if authors:
                gk = self.transform_gradient(run, gk)
            inner = self.inner_decay * inner + gk / (_l2(gk) + _TINY)
            z = x + self.project(x, z - x + self.beta * inner)
        state["inner_momentum"] = inner
        return z - x_adv if authors else self.transform_gradient(run, z - x_adv)

    def direction(self, g: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if self.outer_norm == "example":
            return super().direction(g, state)
        g = g / (g.abs().mean() + _TINY)  # one scale for the whole batch (the authors' end_attack)
        prev = state.get("momentum")
        m = g if prev is None else g + self.decay * prev
        state["momentum"] = m
        return m


def agm_ratio(cross: torch.Tensor, mode: str = "code", targeted: bool = False) -> torch.Tensor:
    """AdaEA's adversarial ratio ``rho`` per member from the cross losses ``cross[k, j] = L_j(x_k)``.

    ``x_k`` is member ``k``'s one-step example and ``L_j`` member ``j``'s loss. ``cross`` is
    ``[M, M, n]`` (per example) or ``[M, M]`` (batch-mean losses).

    * ``"code"`` (the authors' ``AdaEA_Base.agm``): ``rho_k = sum_{i != k} L_i(x_k) / L_i(x_i)``;
      each other member's loss is measured relative to that member's loss on its *own* example.
    * ``"own"``: ``rho_k = mean_{j != k} L_j(x_k) / L_k(x_k)`` (relative to the crafting member's
      own loss; this package's rule before issue 15).

    Targeted attacks invert each ratio (losses are to the target, so smaller is better).

    Returns:
        ``rho`` of shape ``[M, n]`` (or ``[M]``).
    """
    n_m = cross.shape[0]
    c = cross.clamp_min(1e-12)
    own = c.diagonal(dim1=0, dim2=1)  # [n, M] or [M]: L_k(x_k)
    own = own.T if own.dim() == 2 else own  # [M, n] or [M]
    off = ~torch.eye(n_m, dtype=torch.bool, device=cross.device)
    off = off.view(n_m, n_m, *([1] * (cross.dim() - 2))).to(c.dtype)
    if mode == "code":
        ratio = c / own.unsqueeze(0)  # [k, i]: L_i(x_k) / L_i(x_i)
        if targeted:
            ratio = 1.0 / ratio
        return (ratio * off).sum(1)
    if mode == "own":
        ratio = c / own.unsqueeze(1)  # [k, j]: L_j(x_k) / L_k(x_k)
        if targeted:
            ratio = 1.0 / ratio
        return (ratio * off).sum(1) / (n_m - 1)
    raise RobustEnsError(f"agm_ratio mode must be one of {AGM_RATIOS}, got {mode!r}")


def drf_similarity(grads: Sequence[torch.Tensor], mode: str = "code") -> torch.Tensor:
    """AdaEA's disparity map ``[n, 1, H, W]``: how much the members' gradients agree per pixel.

    ``s_ij`` is the cosine similarity across channels of members ``i`` and ``j``'s gradients and
    ``m_i = mean_{j != i} s_ij`` member ``i``'s mean agreement.

    * ``"code"`` (the authors' ``AdaEA_Base.drf``): ``sum_{i < M-1} m_i / M``: the loop there
      fills the map of every member but the last, then averages over all ``M`` entries;
    * ``"pairs"``: the mean of ``s_ij`` over all pairs (``sum_i m_i / M``; this package's rule
      before issue 15).
    """
    n_m = len(grads)
    unit = [F.normalize(g, dim=1, eps=1e-12) for g in grads]
    sim = {(i, j): (unit[i] * unit[j]).sum(1, keepdim=True) for i in range(n_m) for j in range(i + 1, n_m)}
    if mode == "pairs":
        return torch.stack(list(sim.values())).mean(0)
    if mode != "code":
        raise RobustEnsError(f"drf mode must be one of {DRF_MODES}, got {mode!r}")
    per_member = [torch.stack([sim[min(i, j), max(i, j)] for j in range(n_m) if j != i]).mean(0)
                  for i in range(n_m - 1)]
    return torch.stack(per_member).sum(0) / n_m


@register_attack("adaea", family="ensemble", ensemble_only=True)
class AdaEA(MIFGSM):
    r"""AdaEA: adaptive ensemble weights (AGM) and a disparity-reduced gradient filter (DRF).

    Paper: Chen et al., "An Adaptive Model Ensemble Adversarial Attack for Boosting Adversarial
    Transferability", ICCV 2023 (https://arxiv.org/abs/2308.02897). Authors' code: CHENBIN99/AdaEA,
    ``attack/AdaEA_Base.py`` (``agm``, ``drf``), ``attack/AdaEA_MIFGSM.py`` (``attack``) and the
    command-line defaults in ``utils/args.py``.

    Each step, from every member's gradient ``g_k`` at ``x_adv``:

    * AGM: member ``k``'s one-step example ``x_k = x_adv + alpha * sign(g_k)`` (projected) is
      scored by its adversarial ratio ``rho_k`` (how well it transfers to the other members, see
      :func:`agm_ratio`); the logits are fused with weights ``softmax(beta * rho)``;
    * DRF: the fused gradient is zeroed at pixels where the members' gradients disagree: the
      similarity map of :func:`drf_similarity` is below ``threshold``;
    * then an MI-FGSM update.

    Fidelity switches (defaults follow the authors' code unless batch independence says
    otherwise; the paper's full text was not available when these were checked):

    * ``decay`` (default 0.9) and ``threshold`` (default -0.3): the defaults of ``utils/args.py``
      (``--momentum 0.9``, ``--threshold -0.3``), which ``utils/get_attack.py`` passes to
      ``AdaEA_MIFGSM``. Before issue 15 this package used 1.0 and 0.
    * ``init_noise`` (default 0.001): ``AdaEA_MIFGSM.attack`` starts from
      ``x + 0.001 * N(0, 1)`` (drawn here from the attack's generator); 0 starts at ``x``.
    * ``agm_ratio`` (default ``"code"``) and ``drf`` (default ``"code"``): the ratio and the
      disparity map exactly as the authors compute them; ``"own"`` and ``"pairs"`` are this
      package's earlier readings (see :func:`agm_ratio`, :func:`drf_similarity`).
    * ``agm_reduction`` (default ``"example"``, our choice for batch independence): AGM weights
      per example. ``"batch"`` uses batch-mean losses as the authors do, so the weights (and an
      example's result) depend on the rest of the batch.
    * Targeted attacks (not in the authors' code) invert the ratio so larger still means better.
    * TransferAttack (``ensemble/adaea.py``) is ``decay=1.0, agm_reduction="batch"`` with the rest
      as here (its DRF also leaves out the last model); its fixture then agrees to rounding.

    Cost per step: M forwards and 2M backwards, plus M x M forwards (no gradient) for AGM.

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 16/255, the paper).
        alpha: Step size (default 1.6/255).
        steps: Iterations (default 10).
        decay: Momentum (default 0.9, the authors' code).
        beta: AGM temperature (default 10).
        threshold: DRF similarity threshold (default -0.3, the authors' code).
        init_noise: Standard deviation of the Gaussian start (default 0.001).
        agm_ratio: ``"code"`` (default) or ``"own"``.
        drf: ``"code"`` (default) or ``"pairs"``.
        agm_reduction: ``"example"`` (default) or ``"batch"``.
        random_start: Random start (default False).
        transforms: Extra parts (SGM; input transforms are not applied by AdaEA).

    Example:
        >>> import torch
        >>> from robust_ens import models, Ensemble
        >>> from robust_ens.attacks import AdaEA
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(3)])
        >>> res = AdaEA(steps=2)(ens, torch.rand(2, 1, 8, 8), torch.tensor([1, 2]), seed=0)
        >>> res.cost.forward, res.cost.backward  # per step: 3 + 3 x 3 forwards, 2 x 3 backwards
        (24.0, 12.0)
    """

    ensemble_only = True
    norms = ("Linf",)
    code_version = 2  # issue 15: the authors' ratio, map, momentum, threshold and start by default
    beta: float
    threshold: float
    init_noise: float
    agm_ratio: str
    drf: str
    agm_reduction: str

    def __init__(
        self,
        *,
        eps: float = 16 / 255,
        alpha: Step = 1.6 / 255,
        steps: Count = 10,
        decay: Decay = 0.9,
        beta: Annotated[float, Range(0, None, what="a temperature")] = 10.0,
        threshold: Annotated[float, Range(-1, 1, what="a cosine similarity")] = -0.3,
        init_noise: Annotated[float, Range(0, None, what="a noise std")] = 0.001,
        agm_ratio: str = "code",
        drf: str = "code",
        agm_reduction: str = "example",
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if agm_ratio not in AGM_RATIOS:
            raise RobustEnsError(f"agm_ratio must be one of {AGM_RATIOS}, got {agm_ratio!r}")
        if drf not in DRF_MODES:
            raise RobustEnsError(f"drf must be one of {DRF_MODES}, got {drf!r}")
        if agm_reduction not in AGM_REDUCTIONS:
            raise RobustEnsError(f"agm_reduction must be one of {AGM_REDUCTIONS}, got {agm_reduction!r}")
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, beta=float(beta), threshold=float(threshold),
                         init_noise=float(init_noise), agm_ratio=str(agm_ratio), drf=str(drf),
                         agm_reduction=str(agm_reduction))

    def init_delta(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        if self.random_start or self.init_noise == 0:
            return super().init_delta(run, x)
        # the authors' start: small Gaussian noise, not clipped to the box for the first gradient
        return (self.init_noise * run.randn_like(x)).clamp(-self.eps, self.eps)

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
                if self.agm_reduction == "batch":
                    rho = agm_ratio(cross.mean(-1), self.agm_ratio, run.targeted).unsqueeze(-1).expand(n_m, n)
                else:
                    rho = agm_ratio(cross, self.agm_ratio, run.targeted)  # [M, n]
                w = torch.softmax(self.beta * rho, dim=0)
            fused = (w.unsqueeze(-1) * logits).sum(0)
            g = torch.autograd.grad(run.objective(fused).sum(), xg)[0]
            run.count_backward(n * n_m)
        # DRF: keep pixels where the members' gradient directions agree
        sim = drf_similarity(grads, self.drf)
        return self.transform_gradient(run, g * (sim >= self.threshold).to(g.dtype))


__all__ = ["CWA", "FUSIONS", "SVRE", "AdaEA", "Ens", "agm_ratio", "drf_similarity"]

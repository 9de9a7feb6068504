"""MBA: attack samples of a Bayesian (SWAG-diagonal) posterior over the surrogate's weights.

Paper: Li, Guo, Zuo and Chen, "Making Substitute Models More Bayesian Can Enhance Transferability
of Adversarial Examples", ICLR 2023 (https://arxiv.org/abs/2302.05086). Authors' code:
qizhangli/MoreBayesian-attack (``attack.py`` ``get_model_list``, ``attacks/morebayesian.py``).
TransferAttack ("TA"): ``ensemble/mba.py`` ``MBA``.

:class:`SWAGPosterior` holds the posterior (the mean model and the second moment of every
parameter, the authors' checkpoint layout ``{"mean_state_dict", "sqmean_state_dict"}``);
:class:`MBA` (registered ``"mba"``) attacks ``n_samples`` weight samples of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from torch import nn
from torch.func import functional_call

from robust_ens.errors import RobustEnsError
from robust_ens.overrides import Count, Decay, NonNegative, Range, Step

from .base import AttackRun, Part, register_attack
from .gradient import MIFGSM

RESAMPLE = ("iteration", "once")
FUSIONS = ("loss", "logits")
VAR_FLOOR = 1e-30  # the authors' clamp of sqmean - mean**2
SampleScale = Annotated[float, Range(0, None, what="a posterior noise scale")]


class SWAGPosterior(nn.Module):
    """A diagonal Gaussian over the parameters of ``mean`` (SWAG-diagonal), for :class:`MBA`.

    Calling it runs the mean model. ``sqmean`` maps parameter names to the running mean of the
    squared parameter (the authors' ``sqmean_state_dict``); its keys may be the names in ``mean``
    or the same names below a wrapper (``conv1.weight`` for ``1.conv1.weight`` when ``mean`` is
    ``Sequential(normalize, net)``); entries that are not parameters (BatchNorm statistics) are
    ignored, as the authors ignore them. ``sqmean=None`` is a posterior of zero variance.

    Args:
        mean: The mean model (its buffers, e.g. BatchNorm statistics, serve every sample).
        sqmean: Second moments per parameter, or ``None``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> post = SWAGPosterior(net, {k: v**2 + 0.01 for k, v in net.state_dict().items()})
        >>> [tuple(t.shape) for t in post.variances()]
        [(2, 3), (2,)]
    """

    def __init__(self, mean: nn.Module, sqmean: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.mean = mean
        self.names = [n for n, _ in mean.named_parameters()]
        for i, (name, p) in enumerate(mean.named_parameters()):
            sq = p.detach() ** 2 if sqmean is None else _lookup(sqmean, name)
            if tuple(sq.shape) != tuple(p.shape):
                raise RobustEnsError(f"sqmean of {name} has shape {tuple(sq.shape)}, the parameter {tuple(p.shape)}")
            self.register_buffer(f"sqmean_{i}", sq.detach().to(p.dtype).clone())
        num_classes = getattr(mean, "num_classes", None)
        if num_classes is not None:
            self.num_classes = num_classes

    @classmethod
    def from_checkpoint(cls, model: nn.Module, state: Mapping[str, Any], prefix: str = "") -> SWAGPosterior:
        """From the authors' checkpoint dict ``{"mean_state_dict", "sqmean_state_dict"}``.

        ``model`` gets the mean weights (loaded into ``model`` itself, or into its submodule
        ``prefix``, e.g. ``"1"`` for ``Sequential(normalize, net)``).
        """
        target = model.get_submodule(prefix) if prefix else model
        strip = lambda d: {k.removeprefix("module."): v for k, v in d.items()}  # noqa: E731  (DataParallel)
        target.load_state_dict(strip(state["mean_state_dict"]))
        return cls(model, strip(state["sqmean_state_dict"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x)

    def variances(self, beta: float = 0.0) -> list[torch.Tensor]:
        """``clamp(sqmean - mean**2, 1e-30) + beta`` per parameter, in ``named_parameters`` order."""
        out = []
        for i, p in enumerate(self.mean.parameters()):
            var = torch.clamp(getattr(self, f"sqmean_{i}") - p.detach() ** 2, VAR_FLOOR)
            out.append(var + beta)
        return out

    def sample(self, generator: torch.Generator, scale: float = 1.5, beta: float = 0.0) -> dict[str, torch.Tensor]:
        """One weight sample ``mean + scale * sqrt(var) * N(0, 1)``: one normal draw per parameter,
        in ``named_parameters`` order (the authors' and TA's order)."""
        out = {}
        for name, p, var in zip(self.names, self.mean.parameters(), self.variances(beta), strict=True):
            noise = var.sqrt() * torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
            out[name] = p.detach().add(noise, alpha=scale)
        return out


def _lookup(sqmean: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name in sqmean:
        return sqmean[name]
    hits = sorted((k for k in sqmean if name.endswith("." + k)), key=len)
    if not hits:
        raise RobustEnsError(f"sqmean has no entry for parameter {name!r}")
    return sqmean[hits[-1]]


@register_attack("mba", family="ensemble")
class MBA(MIFGSM):
    r"""MBA: the attack gradient averaged over ``n_samples`` weight samples of a SWAG posterior.

    Paper: Li et al., "Making Substitute Models More Bayesian Can Enhance Transferability of
    Adversarial Examples", ICLR 2023 (https://arxiv.org/abs/2302.05086). The surrogate is a
    :class:`SWAGPosterior` (the authors fine-tune a ResNet-50 with SWAG and publish the mean and
    second moment); each sample is ``theta = mean + scale * sqrt(clamp(sqmean - mean^2, 1e-30) +
    beta) * N(0, 1)`` on every parameter (BatchNorm affines included; BatchNorm statistics are the
    mean model's). Draws come from the call's generator, sample after sample, one per parameter
    in ``named_parameters`` order. Any other surrogate (a plain module, an Ensemble) is a
    posterior of zero variance: every sample is the surrogate itself, so MBA is then its update
    rule on the surrogate's own output, one forward per iteration (``n_samples``, ``scale``,
    ``beta``, ``resample`` and ``fusion`` have no effect; wrap a module in
    ``SWAGPosterior(module, sqmean)`` for noise).

    Defaults follow the authors' code (``attack.py`` and ``attacks/morebayesian.py``): eps
    8/255, step 1/255, 50 iterations of I-FGSM (``decay=0``), no random start, 20 samples with
    scale 1.5 and beta 0, new samples at every iteration (``resample="iteration"``), and the
    gradient is the mean of the samples' cross-entropy gradients (``fusion="loss"``).

    TransferAttack (``MBA``) differs, each difference a switch here; the preset
    ``create_attack("mba_ta")`` sets all of them:

    * ``resample="once"``: TA draws the 20 samples once, when the attack object is built, and
      keeps them for every iteration and batch. Here "once" draws them once per call, before
      the random start, from the call's generator (TA's global stream order);
    * ``fusion="logits"``: TA attacks the cross-entropy of the mean of the samples' logits
      (its ``EnsembleModel``);
    * MI-FGSM with ``decay=1.0``, eps 16/255, alpha 1.6/255, 10 iterations, ``random_start=True``.

    With these, on TA's own fixture (tests/fixtures/transferattack/mba.*) the samples and the
    result agree to rounding (tests/test_transferattack_agreement.py).

    Cost per iteration: ``n_samples`` forward and backward passes.

    Distance measure: Linf (L2 accepted).

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 1/255).
        steps: Iterations (default 50).
        decay: Momentum (default 0.0: I-FGSM).
        n_samples: Weight samples per gradient (default 20).
        scale: Noise scale (default 1.5).
        beta: Variance added to every parameter's (default 0).
        resample: ``"iteration"`` (default) or ``"once"``.
        fusion: ``"loss"`` (default) or ``"logits"``.
        random_start: Random start (default False).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from robust_ens.attacks import MBA
        >>> from robust_ens.attacks.mba import SWAGPosterior
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> post = SWAGPosterior(net, {k: v**2 + 1e-4 for k, v in net.state_dict().items()})
        >>> res = MBA(steps=2, n_samples=3)(post, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]), seed=0)
        >>> res.cost.forward, res.cost.backward
        (6.0, 6.0)
    """

    folds_batchnorm = False  # its surrogate samples weights at every forward

    code_version = 1
    n_samples: int
    scale: float
    beta: float
    resample: str
    fusion: str

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 1 / 255,
        steps: Count = 50,
        decay: Decay = 0.0,
        n_samples: Count = 20,
        scale: SampleScale = 1.5,
        beta: NonNegative = 0.0,
        resample: str = "iteration",
        fusion: str = "loss",
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        if resample not in RESAMPLE:
            raise RobustEnsError(f"resample must be one of {RESAMPLE}, got {resample!r}")
        if fusion not in FUSIONS:
            raise RobustEnsError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, n_samples=int(n_samples), scale=float(scale), beta=float(beta),
                         resample=str(resample), fusion=str(fusion))

    def direction(self, g: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return g if self.decay == 0 else super().direction(g, state)

    def draw(self, run: AttackRun, post: SWAGPosterior) -> list[dict[str, torch.Tensor]]:
        """``n_samples`` weight samples from the call's generator."""
        return [post.sample(run.generator, self.scale, self.beta) for _ in range(self.n_samples)]

    def sample_objective(self, run: AttackRun, post: SWAGPosterior, samples: list[dict[str, torch.Tensor]],
                         z: torch.Tensor) -> torch.Tensor:
        """Per-example objective at ``z`` over the samples (mean loss, or loss of the mean logits)."""
        zm = z if z.dtype == run.model_dtype else z.to(run.model_dtype)
        run.count_forward(z.shape[0] * len(samples))
        logits = [functional_call(post.mean, s, (zm,)).float() for s in samples]
        if self.fusion == "logits":
            return run.objective(torch.stack(logits).mean(0))  # TA's EnsembleModel: mean of the stack
        return torch.stack([run.objective(lg) for lg in logits]).mean(0)

    def perturb(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        post = run.surrogate
        if not isinstance(post, SWAGPosterior):  # zero variance: every sample is the surrogate itself
            return super().perturb(run, x)
        fixed = self.draw(run, post) if self.resample == "once" else None  # before the random start, as TA
        delta = self.init_delta(run, x)
        state: dict[str, Any] = {}
        for t in range(self.steps):
            state["t"] = t
            samples = fixed if fixed is not None else self.draw(run, post)
            objective = lambda z, s=samples: self.sample_objective(run, post, s, z)  # noqa: E731
            g = self.transform_gradient(run, self.input_gradient(run, x + delta, objective))
            d = self.direction(g, state)
            delta = self.project(x, delta + self.step(d))
        return x + delta


@register_attack("mba_ta", family="ensemble")
def mba_ta(
    *, eps: float = 16 / 255, alpha: Step = 1.6 / 255, steps: Count = 10, decay: Decay = 1.0,
    n_samples: Count = 20, scale: SampleScale = 1.5, random_start: bool = True, transforms: Sequence[Part] = (),
) -> MBA:
    """MBA with TransferAttack's settings: samples drawn once, CE of the mean logits, MI-FGSM 16/255, 10 steps."""
    return MBA(eps=eps, alpha=alpha, steps=steps, decay=decay, n_samples=n_samples, scale=scale, resample="once",
               fusion="logits", random_start=random_start, transforms=transforms)


__all__ = ["MBA", "SWAGPosterior", "mba_ta"]

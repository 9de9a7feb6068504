"""The attack base class: one iterative loop with hooks, budget enforcement, cost accounting.

Every attack in :mod:`robust_ens.attacks` is a subclass of :class:`Attack`. An attack object holds
hyperparameters only (no model, no device, no mode); it is called as::

    res = atk(surrogate, x, y, target=None, seed=None)   # -> AttackResult(x_adv, cost, seed)

The loop (:meth:`Attack.perturb`) is::

    delta = init_delta()                                  # zeros, or uniform in the ball (random_start)
    for t in range(steps):
        g = gradient(x + delta)                           # input transforms, loss, gradient transforms
        d = direction(g)                                  # momentum / update rule (identity for PGD)
        delta = project(delta + step(d))                  # sign step (Linf) or L2-normalized step; ball + box

and :meth:`Attack.__call__` enforces the eps ball and the [0, 1] box on whatever ``perturb``
returns (foolbox's rule), in float64 arithmetic and after the cast back to ``x.dtype``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.canonical import canonical_json, to_jsonable
from robust_ens.ensemble import Ensemble, check_images
from robust_ens.errors import RobustEnsError
from robust_ens.registry import Registry

log = logging.getLogger(__name__)

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")
PARTS: Registry[type[Part]] = Registry("attack part")
NORMS = ("Linf", "L2")
_TINY = 1e-12  # added to every normalization so a zero gradient never divides by zero


def register_attack(name: str, **meta: Any) -> Callable[[Any], Any]:
    """Register an attack class (or factory) under ``name`` in :data:`ATTACKS`."""
    return ATTACKS.register(name, **meta)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack by name: ``create_attack("mifgsm", eps=8/255, steps=10)``.

    ``create_attack(**atk.config())`` rebuilds an attack equal to ``atk``: parts given as their
    config dicts (``{"part": "DI", "resize_rate": 0.9, ...}``) are rebuilt too.
    """
    factory = ATTACKS.get(name)
    if "transforms" in kwargs:
        kwargs["transforms"] = [create_part(p) if isinstance(p, dict) else p for p in kwargs["transforms"]]
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        params = {}  # type: ignore[assignment]
    # A class's **extra only passes its subclasses' hyperparameters through: for the class
    # itself an unknown name is a typo, never a hyperparameter.
    if params and (isinstance(factory, type) or not any(p.kind is p.VAR_KEYWORD for p in params.values())):
        unknown = sorted(set(kwargs) - {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD})
        if unknown:
            raise RobustEnsError(
                f"unknown hyperparameter(s) {', '.join(unknown)} for attack {name!r}; "
                f"it accepts: {', '.join(params)}"
            )
    try:
        atk = factory(**kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise RobustEnsError(f"attack {name!r}: {err}") from None
        raise
    if not isinstance(atk, Attack):
        raise RobustEnsError(f"attack {name!r} is registered with a factory that did not return an Attack")
    return atk


def list_attacks(pattern: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> list[str]:
    """Names of the registered attacks matching ``pattern`` (fnmatch), sorted."""
    return ATTACKS.list(pattern, exclude)


def parse_eps(value: str | float | int) -> float:
    """Parse an epsilon written as ``8/255``, ``0.03`` or a number.

    Raises:
        RobustEnsError: naming ``eps`` when the text is not a number or fraction.
    """
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise RobustEnsError(f"eps must be a number or a fraction like 8/255, got {value!r}") from None


def _fmt(v: Any) -> str:
    """Hyperparameter values for ``repr``: ``8/255`` rather than ``0.03137254901960784``."""
    if isinstance(v, float) and 0 < v < 1 and len(repr(v)) > 7:
        k = v * 255
        if abs(k - round(k, 1)) < 1e-9:
            return f"{round(k, 1):g}/255"
        return f"{v:.6g}"
    return repr(v)


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- one run's context


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
        param = next(surrogate.parameters(), None)
        self.model_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

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


# --------------------------------------------------------------------------- parts


class Part:
    """A composable piece of an attack (input transform, gradient transform or model hook).

    Parts hold hyperparameters only; ``repr`` shows them and :meth:`config` gives them as JSON.
    Every subclass is registered in :data:`PARTS` under its class name, so a config rebuilds it.
    """

    kind: ClassVar[str] = "part"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PARTS.add(cls.__name__, cls)

    def _params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def config(self) -> dict[str, Any]:
        """``{"part": class name, **hyperparameters}``; :func:`create_part` rebuilds an equal part."""
        return {"part": type(self).__name__, **to_jsonable(self._params(), type(self).__name__)}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in self._params().items())
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(map(str, self._params().items())))))


class InputTransform(Part):
    """Transforms the attacked input before the forward pass; gradients average over its copies."""

    kind = "input"
    copies: int = 1

    def apply(self, x: torch.Tensor, index: int, run: AttackRun) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class GradientTransform(Part):
    """Transforms the input gradient before the update rule (e.g. TI's smoothing)."""

    kind = "gradient"

    def apply(self, g: torch.Tensor, run: AttackRun) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ModelHook(Part):
    """Changes how gradients flow through the surrogate during an attack (e.g. SGM)."""

    kind = "model"

    def attach(self, model: nn.Module) -> list[Any]:  # pragma: no cover
        """Install hooks on ``model``; return handles with ``.remove()``."""
        raise NotImplementedError


def create_part(config: dict[str, Any]) -> Part:
    """Rebuild a part from :meth:`Part.config` (``{"part": "DI", "resize_rate": 0.9}``).

    Raises:
        RobustEnsError: for a missing or unknown part name or a wrong hyperparameter.
    """
    if not isinstance(config, dict) or not isinstance(config.get("part"), str):
        raise RobustEnsError(f"an attack part config needs a 'part' name, got {config!r}")
    params = {k: v for k, v in config.items() if k != "part"}
    cls = PARTS.get(config["part"])
    try:
        return cls(**params)
    except TypeError as err:
        raise RobustEnsError(f"attack part {config['part']!r}: {err}") from None


def attack_name(cls: type) -> str:
    """The registry name of an attack class (the first, sorted, if it has several)."""
    for name in ATTACKS.list():
        if ATTACKS.get(name) is cls:
            return name
    raise RobustEnsError(f"attack class {cls.__name__} is not registered, so it has no config; register it")


# --------------------------------------------------------------------------- budget


def enforce_budget(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Return ``x_adv`` projected onto the eps ball around ``x`` and the [0, 1] box, in ``x.dtype``.

    The budget holds in exact (float64) arithmetic after the cast to ``x.dtype``: elements (Linf)
    that rounding pushes past ``eps`` move one ulp towards ``x`` at a time; examples (L2) are
    shrunk towards ``x`` until they fit (``x`` itself always fits). NaNs fall back to ``x``.
    """
    x = x.detach()
    xd = x.double()
    d = x_adv.detach().to(device=x.device, dtype=torch.float64) - xd
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    n = x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))
    if norm == "Linf":
        d = d.clamp(-eps, eps)
    else:
        nrm = d.reshape(n, -1).norm(dim=1).clamp_min(1e-300)
        d = d * (eps / nrm).clamp(max=1.0).view(shape)
    target = (xd + d).clamp(0.0, 1.0)
    out = target.to(x.dtype)
    if norm == "Linf":
        for _ in range(16):
            bad = (out.double() - xd).abs() > eps
            if not bool(bad.any()):
                return out
            try:
                out = torch.where(bad, torch.nextafter(out, x), out)
            except (RuntimeError, NotImplementedError):  # no nextafter for this dtype/device
                out = torch.where(bad, ((out.double() + xd) / 2).to(x.dtype), out)
        return torch.where((out.double() - xd).abs() > eps, x, out)
    for p in (40, 30, 23, 20, 16, 12, 10, 8, 6, 4, 2, 1):
        bad = (out.double() - xd).reshape(n, -1).norm(dim=1) > eps
        if not bool(bad.any()):
            return out
        out = torch.where(bad.view(shape), (xd + (target - xd) * (1 - 2.0**-p)).to(x.dtype), out)
        target = torch.where(bad.view(shape), xd + (target - xd) * (1 - 2.0**-p), target)
    bad = (out.double() - xd).reshape(n, -1).norm(dim=1) > eps
    return torch.where(bad.view(shape), x, out)


# --------------------------------------------------------------------------- the base class


class Attack:
    r"""Base class of every attack: hyperparameters, validation, the one loop and its hooks.

    Subclasses pass their hyperparameters to ``super().__init__`` (keyword-only) and override
    hooks: :meth:`objective` (loss), :meth:`gradient` (input transforms + gradient transforms),
    :meth:`direction` (momentum / update rule), :meth:`step`, :meth:`project`, or
    :meth:`perturb` as a whole. Whatever a subclass returns, :meth:`__call__` enforces the budget
    and the [0, 1] box.

    Args:
        eps: Maximum perturbation (Linf: in (0, 1]; L2: positive).
        alpha: Step size.
        steps: Number of iterations (>= 1).
        random_start: Start from a uniformly random point of the eps ball.
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Parts: input transforms (:class:`DI`, :class:`SI`), gradient transforms
            (:class:`TI`) and model hooks (:class:`SGM`), in any combination.
        **extra: Further hyperparameters of a subclass (validated by it; shown by ``repr``).
    """

    ensemble_only: ClassVar[bool] = False
    norms: ClassVar[tuple[str, ...]] = NORMS
    #: Bump when a change to the attack's code moves its output; part of every adversarial-set key.
    code_version: ClassVar[int] = 1
    _init_kwargs: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Attack:
        # The keywords the caller gave, before any subclass turns them into parts or derived
        # values: what :meth:`config` needs to rebuild an equal attack.
        obj = super().__new__(cls)
        obj._init_kwargs = dict(kwargs)
        return obj
    eps: float
    alpha: float | None
    steps: int
    random_start: bool
    norm: str
    transforms: tuple[Part, ...]

    def __init__(
        self,
        *,
        eps: float,
        alpha: float | None,
        steps: int,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
        **extra: Any,
    ) -> None:
        eps = self._check_common(eps, alpha, steps, norm)
        transforms = tuple(transforms)
        for i, p in enumerate(transforms):
            if not isinstance(p, Part):
                raise RobustEnsError(
                    f"transforms[{i}] must be an attack part (DI, SI, TI, SGM, ...), got {type(p).__name__}"
                )
        self._names: list[str] = []
        self._set(eps=float(eps), alpha=None if alpha is None else float(alpha), steps=int(steps),
                  random_start=bool(random_start), norm=norm)
        self._set(**extra)
        self._set(transforms=transforms)

    def _check_common(self, eps: Any, alpha: Any, steps: Any, norm: Any) -> float:
        """Validate the shared hyperparameters; return eps as a float."""
        if norm not in self.norms:
            raise RobustEnsError(f"norm must be one of {self.norms} for {type(self).__name__}, got {norm!r}")
        eps = parse_eps(eps) if isinstance(eps, str) else eps
        if not isinstance(eps, int | float) or isinstance(eps, bool) or not math.isfinite(eps):
            raise RobustEnsError(f"eps must be a finite number, got {eps!r}")
        if norm == "Linf" and not 0 < eps <= 1:
            raise RobustEnsError(f"eps must be in (0, 1] for the Linf norm (images live in [0, 1]), got {eps!r}")
        if norm == "L2" and not eps > 0:
            raise RobustEnsError(f"eps must be positive for the L2 norm, got {eps!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise RobustEnsError(f"steps must be an integer >= 1, got {steps!r}")
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0
        ):
            raise RobustEnsError(f"alpha must be a positive number, got {alpha!r}")
        return float(eps)

    def replace(self, **changes: Any) -> Attack:
        """A copy with some hyperparameters changed (``atk.replace(eps=4/255)``); validated like ``__init__``.

        Raises:
            RobustEnsError: for an unknown name or an invalid value.
        """
        unknown = sorted(set(changes) - set(self._names))
        if unknown:
            raise RobustEnsError(f"unknown hyperparameter(s) {', '.join(unknown)} for {type(self).__name__}")
        new = copy.copy(self)
        new._names = list(self._names)
        new._init_kwargs = {**self._init_kwargs, **changes}
        merged = {**self.hparams, **changes}
        eps = new._check_common(merged["eps"], merged.get("alpha"), merged.get("steps", 1), merged["norm"])
        new._set(**changes)
        new._set(eps=eps)
        return new

    def _set(self, **params: Any) -> None:
        for k, v in params.items():
            if k not in self._names:
                self._names.append(k)
            setattr(self, k, v)

    # ---- introspection
    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters, in declaration order (JSON-friendly except ``transforms``)."""
        return {k: getattr(self, k) for k in self._names}

    def config(self) -> dict[str, Any]:
        """Canonical JSON description: ``create_attack(**atk.config())`` rebuilds an equal attack.

        Holds the registry ``name`` and every keyword of the class's ``__init__`` (defaults
        included, validated values where the attack stores them); ``transforms`` lists the parts
        the caller added, as :meth:`Part.config` dicts (parts a class adds itself, such as
        DIFGSM's DI, come back from its own keywords).
        """
        hp = self.hparams
        out: dict[str, Any] = {"name": attack_name(type(self))}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name == "transforms":
                value: Any = list(self._init_kwargs.get("transforms", ()))
            elif p.name in hp:
                value = hp[p.name]
            elif p.name in self._init_kwargs:
                value = self._init_kwargs[p.name]
            else:
                value = p.default
            out[p.name] = to_jsonable(value, f"{type(self).__name__}.{p.name}")
        return out

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(canonical_json(self.config()))

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={_fmt(v) if k != 'transforms' else list(v)}"
            for k, v in self.hparams.items()
            if not (k == "transforms" and not v)
        )
        return f"{type(self).__name__}({inner})"

    @property
    def step_size(self) -> float:
        """``alpha`` (subclasses may derive it from ``eps`` when ``alpha`` is ``None``)."""
        a: float | None = self.alpha
        return self.eps / 10 if a is None else a

    def input_transforms(self) -> list[InputTransform]:
        """The input transforms among ``transforms``, in order."""
        return [p for p in self.transforms if isinstance(p, InputTransform)]

    def gradient_transforms(self) -> list[GradientTransform]:
        """The gradient transforms among ``transforms``, in order."""
        return [p for p in self.transforms if isinstance(p, GradientTransform)]

    def model_hooks(self) -> list[ModelHook]:
        """The model hooks among ``transforms``."""
        return [p for p in self.transforms if isinstance(p, ModelHook)]

    # ---- the call
    def __call__(
        self,
        surrogate: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        target: torch.Tensor | None = None,
        targeted: bool | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack ``surrogate`` on ``(x, y)``.

        Args:
            surrogate: An ``nn.Module`` returning logits or an :class:`~robust_ens.Ensemble`.
            x: Images ``[N, C, H, W]`` in [0, 1] (any floating dtype).
            y: True labels ``[N]`` (may be ``None`` for a targeted call).
            target: Target labels ``[N]``: makes the attack targeted.
            targeted: Optional explicit flag; ``True`` without ``target`` is an error.
            seed: Seed of the attack's generator (same seed, same device: same output bit for bit).
            generator: A generator to draw from instead of seeding a new one.

        Returns:
            :class:`AttackResult` with ``x_adv`` and ``cost``.

        Raises:
            RobustEnsError: for bad input, naming the argument.
        """
        t0 = time.perf_counter()
        if not isinstance(surrogate, nn.Module):
            raise RobustEnsError(f"surrogate must be an nn.Module or an Ensemble, got {type(surrogate).__name__}")
        if self.ensemble_only and not (isinstance(surrogate, Ensemble) and len(surrogate) >= 2):
            raise RobustEnsError(
                f"surrogate must be an Ensemble of at least 2 members for {type(self).__name__} "
                "(an ensemble strategy); got "
                + (f"an Ensemble of {len(surrogate)}" if isinstance(surrogate, Ensemble) else type(surrogate).__name__)
            )
        check_images(x, "x")
        n = x.shape[0]
        if targeted is True and target is None:
            raise RobustEnsError("target is required for a targeted attack (targeted=True): pass target=<labels [N]>")
        if targeted is False and target is not None:
            raise RobustEnsError("target was given but targeted=False; drop one of them")
        is_targeted = target is not None
        num_classes = self._num_classes(surrogate, x)
        if y is None and not is_targeted:
            raise RobustEnsError("y (the true labels) is required for an untargeted attack")
        if y is not None:
            y = self._check_labels(y, "y", n, num_classes, x.device)
        if is_targeted:
            assert target is not None
            target = self._check_labels(target, "target", n, num_classes, x.device)
        labels = target if is_targeted else y
        assert labels is not None

        used_seed: int | None
        if generator is None:
            used_seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
            generator = torch.Generator(device=x.device)
            generator.manual_seed(used_seed)
        else:
            used_seed = None
        run = AttackRun(surrogate, labels, is_targeted, generator, num_classes, n)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if n == 0:
            return AttackResult(x.clone(), run.cost(time.perf_counter() - t0), used_seed)
        with self._session(surrogate):
            x_adv = self.perturb(run, x.detach().to(work))
        out = enforce_budget(x, x_adv, self.eps, self.norm)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        cost = run.cost(time.perf_counter() - t0)
        log.debug("%r on %d examples: %.1f forward / %.1f backward passes per example, %.3f s",
                  self, n, cost.forward, cost.backward, cost.seconds)
        return AttackResult(out, cost, used_seed)

    @staticmethod
    def _num_classes(surrogate: nn.Module, x: torch.Tensor) -> int:
        k = getattr(surrogate, "num_classes", None)
        if k is not None:
            return int(k)
        was = surrogate.training
        surrogate.eval()
        try:
            with torch.no_grad():
                param = next(surrogate.parameters(), None)
                dt = param.dtype if param is not None and param.is_floating_point() else torch.float32
                return int(surrogate(x[:1].to(dt)).shape[-1])
        finally:
            surrogate.train(was)

    @staticmethod
    def _check_labels(lab: Any, what: str, n: int, k: int, device: torch.device) -> torch.Tensor:
        if not isinstance(lab, torch.Tensor):
            raise RobustEnsError(f"{what} must be a tensor of class indices [N], got {type(lab).__name__}")
        if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            raise RobustEnsError(f"{what} must hold integer class indices, got dtype {lab.dtype}")
        if tuple(lab.shape) != (n,):
            raise RobustEnsError(f"{what} must have shape [N] = [{n}] (one label per image), got {tuple(lab.shape)}")
        if n and (int(lab.min()) < 0 or int(lab.max()) >= k):
            raise RobustEnsError(
                f"{what} must hold class indices in [0, {k - 1}] (the surrogate has {k} classes); "
                f"got values in [{int(lab.min())}, {int(lab.max())}]"
            )
        return lab.to(device=device, dtype=torch.long)

    @contextlib.contextmanager
    def _session(self, surrogate: nn.Module) -> Iterator[None]:
        """Eval mode, hooks and input checks for the attack; everything restored afterwards."""
        modes = [(m, m.training) for m in surrogate.modules()]
        check = getattr(surrogate, "check_inputs", None)
        handles: list[Any] = []
        try:
            surrogate.eval()
            if isinstance(surrogate, Ensemble):
                surrogate.check_inputs = False  # x is checked once; transforms may leave [0, 1] (NI, VMI)
            for hook in self.model_hooks():
                handles.extend(hook.attach(surrogate))
            yield
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes:
                m.training = mode
            if check is not None:
                surrogate.check_inputs = check

    # ---- hooks
    def objective(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        """Per-example objective ``[n]`` the attack maximizes at (transformed) inputs ``x``."""
        return run.objective(run.logits(x))

    def input_gradient(
        self, run: AttackRun, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Gradient of the objective at ``x``, averaged over the input transforms' copies."""
        obj = objective or (lambda z: self.objective(run, z))
        transforms = self.input_transforms()
        if not transforms:
            return run.grad(obj, x)
        total = torch.zeros_like(x)
        count = 0
        for idx in _product([t.copies for t in transforms]):

            def fn(z: torch.Tensor, idx: tuple[int, ...] = idx) -> torch.Tensor:
                for t, i in zip(transforms, idx, strict=True):
                    z = t.apply(z, i, run)
                return obj(z)

            total = total + run.grad(fn, x)
            count += 1
        return total / count

    def transform_gradient(self, run: AttackRun, g: torch.Tensor) -> torch.Tensor:
        """Apply the gradient transforms (TI) in order."""
        for t in self.gradient_transforms():
            g = t.apply(g, run)
        return g

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """The gradient-like quantity the update rule consumes at the current point ``x_adv``."""
        return self.transform_gradient(run, self.input_gradient(run, x_adv))

    def direction(self, g: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """Update rule (momentum etc.); the identity for I-FGSM/PGD."""
        return g

    def step(self, d: torch.Tensor) -> torch.Tensor:
        """The step taken along direction ``d``: ``alpha * sign(d)`` (Linf) or L2-normalized."""
        if self.norm == "Linf":
            return self.step_size * d.sign()
        return self.step_size * d / (_l2(d) + _TINY)

    def project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Project ``delta`` onto the eps ball, then so that ``x + delta`` is in [0, 1]."""
        eps: float = self.eps
        if self.norm == "Linf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * (eps / (_l2(delta) + _TINY)).clamp(max=1.0)
        return (x + delta).clamp(0, 1) - x

    def init_delta(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        """Zeros, or a uniformly random point of the ball when ``random_start``."""
        if not self.random_start:
            return torch.zeros_like(x)
        eps: float = self.eps
        if self.norm == "Linf":
            delta = (run.rand_like(x) * 2 - 1) * eps
        else:  # uniform in the L2 ball: direction ~ normal, radius ~ U^(1/d)
            g = run.randn_like(x)
            d = x[0].numel()
            r = run.rand_like(x[:, :1, :1, :1]) ** (1.0 / d)
            delta = g / (_l2(g) + _TINY) * r * eps
        return self.project(x, delta)

    def perturb(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        """The one loop. Returns adversarial images (the caller enforces the budget again)."""
        delta = self.init_delta(run, x)
        state: dict[str, Any] = {}
        for t in range(self.steps):
            state["t"] = t
            g = self.gradient(run, x, x + delta, state)
            d = self.direction(g, state)
            delta = self.project(x, delta + self.step(d))
        return x + delta


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.reshape(t.shape[0], -1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _l1_mean(t: torch.Tensor) -> torch.Tensor:
    """Per-example mean absolute value (MI-FGSM's normalization), shaped to broadcast."""
    return t.abs().reshape(t.shape[0], -1).mean(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _product(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    if not sizes:
        yield ()
        return
    for i in range(sizes[0]):
        for rest in _product(sizes[1:]):
            yield (i, *rest)


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "AttackRun",
    "Cost",
    "GradientTransform",
    "InputTransform",
    "ModelHook",
    "Part",
    "create_attack",
    "enforce_budget",
    "list_attacks",
    "parse_eps",
    "register_attack",
]

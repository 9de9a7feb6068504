"""The attack base class: the attack registry and the one iterative loop with its hooks.

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

The pieces the loop uses live in their own modules and are re-exported here: the budget
(:mod:`~robust_ens.attacks.budget`: ``enforce_budget``, ``parse_eps``, ``NORMS``), one call's
context and result (:mod:`~robust_ens.attacks.run`: ``AttackRun``, ``AttackResult``, ``Cost``) and
the composable parts (:mod:`~robust_ens.attacks.parts`: ``Part``, ``InputTransform``,
``GradientTransform``, ``ModelHook``, ``PARTS``, ``create_part``).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from robust_ens.canonical import canonical_json, to_jsonable
from robust_ens.ensemble import Ensemble, check_images
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import model_dtype
from robust_ens.overrides import L2_BUDGET, PIXEL_BUDGET, Count, Step, check_call
from robust_ens.registry import Registry

from .budget import _TINY, NORMS, _l1_mean, _l2, enforce_budget, parse_eps  # noqa: F401  (_l1_mean: re-exported)
from .parts import PARTS, GradientTransform, InputTransform, ModelHook, Part, create_part, format_hparam
from .run import AttackResult, AttackRun, Cost

log = logging.getLogger(__name__)

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")


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
    if not isinstance(factory, type):  # a factory function's ranges (a class checks its own)
        check_call(factory, kwargs)
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


def attack_name(cls: type) -> str:
    """The registry name of an attack class (the first, sorted, if it has several)."""
    for name in ATTACKS.list():
        if ATTACKS.get(name) is cls:
            return name
    raise RobustEnsError(f"attack class {cls.__name__} is not registered, so it has no config; register it")


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
        alpha: Step size (> 0).
        steps: Number of iterations (>= 1).

    Ranges: a subclass declares the meaningful values of its numeric hyperparameters in its
    ``__init__`` signature (``decay: Decay = 1.0``, :mod:`robust_ens.overrides`); construction,
    :meth:`replace` and :func:`create_attack` refuse a value outside them in one line before any
    work. ``eps`` is checked here, against the norm's range.
        random_start: Start from a uniformly random point of the eps ball.
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Parts: input transforms (:class:`DI`, :class:`SI`), gradient transforms
            (:class:`TI`) and model hooks (:class:`SGM`), in any combination.
        **extra: Further hyperparameters of a subclass (validated by it; shown by ``repr``).
    """

    ensemble_only: ClassVar[bool] = False
    #: Whether a bf16 call attacks an Ensemble through its BatchNorm-folded view
    #: (:meth:`robust_ens.Ensemble.folded`: the same function in fewer passes). False for an attack
    #: that edits or samples its members' modules (Ghost, MBA); calls with model hooks (SGM) never fold.
    folds_batchnorm: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = NORMS
    #: Bump when a change to the attack's code moves its output; part of every adversarial-set key.
    code_version: ClassVar[int] = 1
    _init_kwargs: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Attack:
        # The keywords the caller gave, before any subclass turns them into parts or derived
        # values: what :meth:`config` needs to rebuild an equal attack. Their declared ranges
        # (``steps: Count``, ``decay: Decay``, ... in the ``__init__`` signatures) are checked here.
        check_call(cls, kwargs)
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
        alpha: Step | None,
        steps: Count,
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
        (PIXEL_BUDGET if norm == "Linf" else L2_BUDGET).check(eps, "eps")  # eps's range follows the norm
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise RobustEnsError(f"steps must be an integer, got {steps!r}")
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha)
        ):
            raise RobustEnsError(f"alpha must be a number, got {alpha!r}")
        return float(eps)

    def replace(self, **changes: Any) -> Attack:
        """A copy with some hyperparameters changed (``atk.replace(eps=4/255)``); validated like ``__init__``.

        Raises:
            RobustEnsError: for an unknown name or an invalid value.
        """
        unknown = sorted(set(changes) - set(self._names))
        if unknown:
            raise RobustEnsError(f"unknown hyperparameter(s) {', '.join(unknown)} for {type(self).__name__}")
        check_call(type(self), changes)
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
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(canonical_json(self.config()))

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={format_hparam(v) if k != 'transforms' else list(v)}"
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
        surrogate = self._fast_surrogate(surrogate, x)
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

    def _fast_surrogate(self, surrogate: nn.Module, x: torch.Tensor) -> nn.Module:
        """The Ensemble's BatchNorm-folded view for a bf16 call that may use it; else ``surrogate``.
        fp32 (the reference precision of every committed number) always runs the members as given."""
        if (self.folds_batchnorm and isinstance(surrogate, Ensemble) and not self.model_hooks()
                and surrogate.resolved_precision(x.device) == "bf16"):
            return surrogate.folded(x)
        return surrogate

    @staticmethod
    def _num_classes(surrogate: nn.Module, x: torch.Tensor) -> int:
        k = getattr(surrogate, "num_classes", None)
        if k is not None:
            return int(k)
        was = surrogate.training
        surrogate.eval()
        try:
            with torch.no_grad():
                return int(surrogate(x[:1].to(model_dtype(surrogate))).shape[-1])
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


def _product(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    if not sizes:
        yield ()
        return
    for i in range(sizes[0]):
        for rest in _product(sizes[1:]):
            yield (i, *rest)


# Everything importable from here before the split keeps working (the budget, run and parts
# modules are re-exported: ``from robust_ens.attacks.base import AttackRun`` etc.).
__all__ = [
    "ATTACKS",
    "NORMS",
    "PARTS",
    "Attack",
    "AttackResult",
    "AttackRun",
    "Cost",
    "GradientTransform",
    "InputTransform",
    "ModelHook",
    "Part",
    "attack_name",
    "create_attack",
    "create_part",
    "enforce_budget",
    "list_attacks",
    "parse_eps",
    "register_attack",
]

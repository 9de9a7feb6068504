"""Contract over the whole attack registry (timm's habit: every registered entry is tested).

Each attack in ``list_attacks()``: budget and [0, 1] box hold for random shapes, eps and dtypes
(hypothesis); shape/dtype/device are kept; the same seed gives the same output bit for bit; it
lowers the white-box accuracy of a trained digits model; targeted mode reaches the target more
often than chance.

The trained models are committed checkpoints (:mod:`tests.fixtures.make_digits_weights`), so the
strength checks see the same weights on every machine. Targeted success is judged by a one-sided
binomial test against chance (1/9 over the 9 other classes) on 256 images: at least
:data:`TARGET_HITS` hits, a count that chance reaches with probability below 1e-4. Measured on the
committed weights (eps 0.3, 2026-12-04): the weakest attack, single-step FGSM, hits 37% of targets
on the packed ensemble and 47% on one model (95 and 119 of 256 against a threshold of 50); every
iterative attack hits 58% or more.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.attacks import ATTACKS, Attack, create_attack, list_attacks
from tests.attack_fixtures import (  # noqa: F401
    digits_ensemble,
    digits_model,
    digits_models,
    digits_test,
    digits_test_256,
    single_thread,
)
from tests.packed_fixtures import digits_packed  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

ALL = list_attacks()
N_TARGETED = 256
CHANCE = 1 / 9
# The fewest hits that chance (each of the 9 other classes equally likely) reaches with probability < 1e-4.
TARGET_HITS = next(k for k in range(N_TARGETED + 1) if binom.sf(k - 1, N_TARGETED, CHANCE) < 1e-4)

# Cheaper settings for attacks with expensive inner loops (the contract is about behavior, not strength).
FAST: dict[str, dict[str, Any]] = {"vmifgsm": {"N": 2}, "svre": {"m": 3}, "sinifgsm": {"m": 2}}


def _accepts(name: str, kw: str) -> bool:
    factory = ATTACKS.get(name)
    params = inspect.signature(factory).parameters
    return kw in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def make(name: str, eps: float, steps: int | None = None, alpha_frac: float | None = 0.2, **extra: Any) -> Attack:
    kw: dict[str, Any] = {"eps": eps, **FAST.get(name, {}), **extra}
    if steps is not None and _accepts(name, "steps"):
        kw["steps"] = steps
    if alpha_frac is not None and _accepts(name, "alpha") and name != "cwa":
        kw["alpha"] = eps * alpha_frac
    return create_attack(name, **kw)


class AnyImage(nn.Module):
    """Untrained classifier for any channel count and size >= 1 (channel mean, then a tiny CNN)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = models.create("small_cnn", in_chans=1, width=4)
        self.num_classes = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True))


_ANY = [AnyImage(0).eval(), AnyImage(1).eval()]
_ANY_ENS = Ensemble(_ANY, precision="fp32").eval()


def surrogate_for(atk: Attack, single: nn.Module, ens: nn.Module) -> nn.Module:
    return ens if type(atk).ensemble_only else single


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([1, 3]),
    h=st.integers(4, 10),
    w=st.integers(4, 10),
    eps=st.floats(1e-3, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_budget_box_shape_dtype(name: str, n: int, c: int, h: int, w: int, eps: float, dtype: torch.dtype, seed: int) -> None:
    norm_l2 = name == "pgdl2"
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g).to(dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    atk = make(name, eps * (4.0 if norm_l2 else 1.0), steps=2)
    with _no_sgm_warning():
        res = atk(surrogate_for(atk, _ANY[0], _ANY_ENS), x, y, seed=seed)
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype and xa.device == x.device
    d = xa.double() - x.double()
    if norm_l2:
        assert float(d.reshape(n, -1).norm(dim=1).max()) <= atk.eps
    else:
        assert float(d.abs().max()) <= atk.eps
    assert float(xa.double().min()) >= 0.0 and float(xa.double().max()) <= 1.0
    assert res.cost.forward > 0 and res.cost.backward > 0 and res.cost.seconds >= 0 and res.cost.examples == n


class _no_sgm_warning:
    """SGM (no residual blocks) and ViT-EnsembleAttack (no attention modules) warn on the digits CNNs; expected here."""

    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.filterwarnings("ignore", message="SGM found no residual blocks")
        warnings.filterwarnings("ignore", message="ViTEnsembleAttack: member .* no supported attention")

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name: str, digits_model: nn.Module, digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    x, y = x[:16], y[:16]
    atk = make(name, 0.2, steps=3)
    sur = surrogate_for(atk, digits_model, digits_ensemble)
    with _no_sgm_warning():
        a = atk(sur, x, y, seed=123)
        b = atk(sur, x, y, seed=123)
        c = atk(sur, x, y, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.x_adv, c.x_adv)
    assert a.seed == 123


def check_strength(name: str, sur: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_min: float, what: str) -> None:
    """White-box accuracy falls by 0.2 at least, and targeted hits pass the binomial test against chance."""
    atk = make(name, 1.5 if name == "pgdl2" else 0.3)
    with torch.no_grad():
        clean = (sur(x).argmax(1) == y).float().mean().item()
    with _no_sgm_warning():
        res = atk(sur, x, y, seed=0)
        t = (y + 1 + torch.randint(0, 9, y.shape, generator=torch.Generator().manual_seed(1))) % 10
        tres = atk(sur, x, y, target=t, seed=0)
    with torch.no_grad():
        adv = (sur(res.x_adv).argmax(1) == y).float().mean().item()
        hits = int((sur(tres.x_adv).argmax(1) == t).sum())
    assert clean > clean_min
    assert adv < clean - 0.2, f"{name}: white-box accuracy {adv:.2f} vs clean {clean:.2f}{what}"
    assert hits >= TARGET_HITS, (
        f"{name}: {hits} of {len(y)} targets hit{what}; chance (1/9) reaches {TARGET_HITS} with p < 1e-4")


@pytest.mark.parametrize("name", ALL)
def test_lowers_whitebox_accuracy_and_targeted(name: str, digits_model: nn.Module,  # noqa: F811
                                               digits_ensemble: Ensemble, digits_test_256) -> None:  # noqa: F811
    x, y = digits_test_256
    sur = surrogate_for(make(name, 0.3), digits_model, digits_ensemble)
    check_strength(name, sur, x, y, 0.9, "")


@pytest.mark.parametrize("name", ALL)
def test_repr_and_keyword_only(name: str) -> None:
    atk = create_attack(name)
    r = repr(atk)
    assert r.startswith(type(atk).__name__ + "(") and "eps=" in r
    assert atk.__doc__ and "Example" in (type(atk).__doc__ or "")
    with pytest.raises(TypeError):
        type(atk)(0.1)  # hyperparameters are keyword-only
    # an attack holds no model, tensor or device
    for v in vars(atk).values():
        assert not isinstance(v, nn.Module | torch.Tensor | torch.device)


# --------------------------------------------------------------------------- packed ensembles
# A packed ensemble (models.create("packed:<arch>"), shared weights + rank-1 adapters) is an
# Ensemble whose member_logits is one batched pass; every registered attack must work on it as on
# any other surrogate.

_PACKED_ANY = models.create("packed:small_cnn", members=3, in_chans=3, width=4, seed=0).eval()
_PACKED_ANY.precision = "fp32"


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    h=st.integers(4, 10),
    w=st.integers(4, 10),
    eps=st.floats(1e-3, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_packed_surrogate_budget_box_shape_dtype(name: str, n: int, h: int, w: int, eps: float, dtype: torch.dtype,
                                                 seed: int) -> None:
    norm_l2 = name == "pgdl2"
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g).to(dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    atk = make(name, eps * (4.0 if norm_l2 else 1.0), steps=2)
    with _no_sgm_warning():
        res = atk(_PACKED_ANY, x, y, seed=seed)
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype
    d = xa.double() - x.double()
    bound = float(d.reshape(n, -1).norm(dim=1).max()) if norm_l2 else float(d.abs().max())
    assert bound <= atk.eps
    assert float(xa.double().min()) >= 0.0 and float(xa.double().max()) <= 1.0
    assert res.cost.forward > 0


@pytest.mark.parametrize("name", ALL)
def test_packed_surrogate_same_seed_lowers_accuracy_and_targets(name: str, digits_packed: Ensemble,  # noqa: F811
                                                                digits_test_256) -> None:  # noqa: F811
    x, y = digits_test_256
    sur = digits_packed
    small = make(name, 0.2, steps=3)
    with _no_sgm_warning():
        a = small(sur, x[:16], y[:16], seed=5)
        b = small(sur, x[:16], y[:16], seed=5)
    assert torch.equal(a.x_adv, b.x_adv)
    check_strength(name, sur, x, y, 0.85, " on a packed ensemble")

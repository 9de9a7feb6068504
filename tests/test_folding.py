"""BatchNorm folding for attacks in bf16 (issue 27): the same function, never stale, never where it could be wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.attacks import PGD, Attack, Ghost, create_attack
from robust_ens.models.folding import fold_batchnorm, has_batchnorm
from tests.attack_fixtures import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _member(seed: int) -> nn.Module:
    """A ResNet-20 whose BatchNorms hold non-trivial statistics and affine weights (eval mode)."""
    torch.manual_seed(seed)
    m = models.create("resnet20", num_classes=10)
    for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def _bn_calls(model: nn.Module) -> list[int]:
    """A counter of forward calls of every BatchNorm in ``model`` (hooks left in place)."""
    calls = [0]
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_folded_resnet_computes_the_same_logits_and_input_gradients() -> None:
    m = _member(0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(4, 3, 32, 32)
    folded = fold_batchnorm(m, x[:2])
    assert folded is not None and not has_batchnorm(folded)
    assert not any(p.requires_grad for p in folded.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the original is untouched
    assert has_batchnorm(m)

    def grad(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])), xg)
        return logits.detach(), g

    (ref, g_ref), (out, g_out) = grad(m), grad(folded)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    assert torch.allclose(g_out, g_ref, rtol=1e-3, atol=1e-4 * float(g_ref.abs().max()))


def test_nothing_to_fold_or_untraceable_keeps_the_original() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    assert fold_batchnorm(plain) is None  # no BatchNorm

    class Branchy(nn.Module):  # data-dependent control flow: fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.bn(self.conv(x))
            return h.mean((2, 3)) if h.sum() > 0 else -h.mean((2, 3))

    assert fold_batchnorm(Branchy().eval(), torch.rand(2, 3, 8, 8)) is None

    class BnFirst(nn.Module):  # BatchNorm not after a convolution: no pair
        def __init__(self) -> None:
            super().__init__()
            self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x)).mean((2, 3))

    assert fold_batchnorm(BnFirst().eval()) is None


def test_the_folded_view_is_cached_and_rebuilt_when_a_weight_changes() -> None:
    ens = Ensemble([_member(0), _member(1)], precision="bf16")
    x = torch.rand(2, 3, 32, 32)
    view = ens.folded(x)
    assert view is not ens and view.folded(x) is view and ens.folded(x) is view
    assert view.weights is ens.weights and view.precision == ens.precision
    with torch.no_grad():
        ens.members[1].net.linear.weight.add_(1.0)  # a training step, a load: the in-place version moves
    fresh = ens.folded(x)
    assert fresh is not view
    with torch.no_grad():
        assert torch.allclose(fresh.with_precision("fp32")(x), ens.with_precision("fp32")(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ens.members[0].net.layer1[0].bn1.running_mean.add_(0.1)  # a buffer too
    assert ens.folded(x) is not fresh


def test_bf16_attacks_use_the_folded_view_and_fp32_never_does() -> None:
    members = [_member(0), _member(1)]
    calls = [_bn_calls(m) for m in members]
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    ens = Ensemble(members, precision="bf16")
    ens.folded(x)  # built once (its probe runs the copies' BatchNorms, hooks included), then cached
    for c in calls:
        c[0] = 0
    PGD(eps=8 / 255, alpha=2 / 255, steps=2)(ens, x, y, seed=0)
    assert [c[0] for c in calls] == [0, 0]
    PGD(eps=8 / 255, alpha=2 / 255, steps=2)(Ensemble(members, precision="fp32"), x, y, seed=0)
    assert all(c[0] > 0 for c in calls)  # the reference precision runs the members as given


@pytest.mark.parametrize("attack", [Ghost(steps=2), create_attack("sgm", steps=2)], ids=["ghost", "sgm"])
def test_attacks_that_edit_or_hook_members_never_fold(attack: Attack) -> None:
    ens = Ensemble([_member(0), _member(1)], precision="bf16")
    calls = [_bn_calls(m) for m in ens.members]
    attack(ens, torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), seed=0)
    assert all(c[0] > 0 for c in calls)


def test_a_bf16_attack_on_the_folded_view_matches_the_fp32_attack_in_effect() -> None:
    members = [_member(0), _member(1)]
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    atk = PGD(eps=8 / 255, alpha=2 / 255, steps=5)
    bf16 = atk(Ensemble(members, precision="bf16"), x, y, seed=0).x_adv
    fp32 = atk(Ensemble(members, precision="fp32"), x, y, seed=0).x_adv
    assert float((bf16 - x).abs().max()) <= 8 / 255 + 1e-6
    ref = Ensemble(members, precision="fp32")
    with torch.no_grad():
        loss = [float(nn.functional.cross_entropy(ref(a), y)) for a in (x, fp32, bf16)]
    assert loss[2] > loss[0] and loss[2] > 0.9 * loss[1]  # the folded bf16 attack ascends like the fp32 one


def test_a_compiled_ensemble_compiles_its_folded_copies_not_the_originals() -> None:
    ens = Ensemble([_member(0), _member(1)], precision="bf16", compile=True)
    x = torch.rand(2, 3, 32, 32)
    view = ens.folded(x)  # torch.compile is lazy: nothing is compiled until a call
    assert view is not ens
    runners = view._runners()
    assert [r._orig_mod for r in runners] == list(view.members)  # the folded copies, compiled
    assert not any(has_batchnorm(m) for m in view.members)
    assert [r._orig_mod for r in ens._runners()] == list(ens.members)  # the ensemble's own stay as they were

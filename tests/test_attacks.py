"""Attack library: agreement with torchattacks, CWA's ablation identity, bad input, parts, cost."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.attacks import (
    BIM,
    CWA,
    DI,
    FGSM,
    MIFGSM,
    PGD,
    SGM,
    SI,
    SVRE,
    TI,
    TIFGSM,
    AdaEA,
    Ens,
    create_attack,
    enforce_budget,
    parse_eps,
    ti_kernel_size,
)
from robust_ens.errors import RobustEnsError
from tests.attack_fixtures import digits_ensemble, digits_model, digits_models, digits_test, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

EPS, ALPHA, STEPS = 0.2, 0.05, 7


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: PGD(eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False),
         lambda m: torchattacks.PGD(m, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)),
        (lambda: BIM(eps=EPS, alpha=ALPHA, steps=STEPS), lambda m: torchattacks.BIM(m, eps=EPS, alpha=ALPHA, steps=STEPS)),
        (lambda: FGSM(eps=EPS), lambda m: torchattacks.FGSM(m, eps=EPS)),
        (lambda: MIFGSM(eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0),
         lambda m: torchattacks.MIFGSM(m, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0)),
        (lambda: create_attack("nifgsm", eps=EPS, alpha=ALPHA, steps=STEPS),
         lambda m: torchattacks.NIFGSM(m, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0)),
        (lambda: create_attack("sinifgsm", eps=EPS, alpha=ALPHA, steps=STEPS, m=3),
         lambda m: torchattacks.SINIFGSM(m, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0, m=3)),
    ],
    ids=["pgd", "bim", "fgsm", "mifgsm", "nifgsm", "sinifgsm"],
)
def test_agrees_with_torchattacks(ours, theirs, digits_model: nn.Module, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    ref = theirs(digits_model)(x, y)
    got = ours()(digits_model, x, y, seed=0).x_adv
    assert (got - x).abs().max() > 0.5 * EPS  # not trivially equal
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_cwa_without_flatness_and_cse_is_mifgsm(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    a = CWA(eps=16 / 255, steps=5, flatness=False, cse=False)(digits_ensemble, x, y, seed=0)
    b = MIFGSM(eps=16 / 255, alpha=16 / 255 / 5, steps=5, decay=1.0)(digits_ensemble, x, y, seed=0)
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.cost.forward == b.cost.forward == 5 * 3


def test_cwa_parts_change_the_result_and_cost(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    full = CWA(eps=0.1, steps=2)(digits_ensemble, x, y)
    assert full.cost.forward == 2 * (3 + 3)  # flatness: one ensemble pass; CSE: one pass per member
    no_flat = CWA(eps=0.1, steps=2, flatness=False)(digits_ensemble, x, y)
    assert no_flat.cost.forward == 2 * 3
    assert not torch.equal(full.x_adv, no_flat.x_adv)


def test_ens_logits_equals_mifgsm_on_logit_ensemble(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    a = Ens(eps=0.1, alpha=0.02, steps=4, fusion="logits")(digits_ensemble, x, y).x_adv
    b = MIFGSM(eps=0.1, alpha=0.02, steps=4)(digits_ensemble, x, y).x_adv
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    c = Ens(eps=0.1, alpha=0.02, steps=4, fusion="loss")(digits_ensemble, x, y).x_adv
    d = Ens(eps=0.1, alpha=0.02, steps=4, fusion="probs")(digits_ensemble, x, y).x_adv
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_svre_cost(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    res = SVRE(eps=0.1, steps=2, m=4)(digits_ensemble, x[:8], y[:8], seed=0)
    assert res.cost.backward == 2 * (3 + 3 + 4)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5, float("nan")])
def test_eps_out_of_range(eps: float) -> None:
    with pytest.raises(RobustEnsError, match="eps"):
        PGD(eps=eps)


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_steps_below_one(steps: int) -> None:
    with pytest.raises(RobustEnsError, match="steps"):
        MIFGSM(steps=steps)  # type: ignore[arg-type]


def test_labels_out_of_range(digits_model: nn.Module, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    with pytest.raises(RobustEnsError, match="y must hold class indices"):
        PGD()(digits_model, x[:2], torch.tensor([0, 10]))
    with pytest.raises(RobustEnsError, match="target must hold"):
        PGD()(digits_model, x[:2], y[:2], target=torch.tensor([-1, 3]))
    with pytest.raises(RobustEnsError, match=r"y must have shape"):
        PGD()(digits_model, x[:2], y[:3])
    with pytest.raises(RobustEnsError, match="y must hold integer"):
        PGD()(digits_model, x[:2], y[:2].float())


def test_targeted_without_target(digits_model: nn.Module, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    with pytest.raises(RobustEnsError, match="target is required"):
        PGD()(digits_model, x[:2], y[:2], targeted=True)


@pytest.mark.parametrize("cls", [CWA, SVRE, Ens, AdaEA])
def test_ensemble_only_refuses_single_model(cls, digits_model: nn.Module, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    with pytest.raises(RobustEnsError, match="surrogate must be an Ensemble"):
        cls()(digits_model, x[:2], y[:2])
    with pytest.raises(RobustEnsError, match="surrogate must be an Ensemble"):
        cls()(Ensemble([digits_model]), x[:2], y[:2])


def test_bad_images(digits_model: nn.Module) -> None:  # noqa: F811
    with pytest.raises(RobustEnsError, match="x must"):
        PGD()(digits_model, torch.rand(2, 1, 8, 8) * 3, torch.tensor([0, 1]))
    with pytest.raises(RobustEnsError, match="x must"):
        PGD()(digits_model, torch.rand(1, 8, 8), torch.tensor([0]))


def test_unknown_attack_and_parts() -> None:
    with pytest.raises(RobustEnsError, match="unknown attack"):
        create_attack("mi-fgsm")
    with pytest.raises(RobustEnsError, match="transforms"):
        PGD(transforms=[lambda x: x])  # type: ignore[list-item]
    with pytest.raises(RobustEnsError, match="fusion"):
        Ens(fusion="median")
    with pytest.raises(RobustEnsError, match="norm"):
        CWA(norm="L2")


def test_parse_eps() -> None:
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps("0.5") == 0.5
    with pytest.raises(RobustEnsError, match="eps"):
        parse_eps("eight")


# --------------------------------------------------------------------------- modes, parts, budget


def test_modes_restored_and_bn_untouched(digits_models, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    m = digits_models[1]
    ens = Ensemble(digits_models, precision="fp32")
    ens.train()
    stats = {k: v.clone() for k, v in m.state_dict().items()}
    MIFGSM(eps=0.1, steps=2)(ens, x, y)
    assert all(mod.training for mod in ens.modules())
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in stats.items())
    assert ens.check_inputs is True
    ens.eval()
    for mm in digits_models:
        mm.eval()


def test_ti_kernel_size_scales_with_image() -> None:
    assert ti_kernel_size(32) == 7
    assert ti_kernel_size(224) == 15
    assert ti_kernel_size(8) in (3, 5, 7) and ti_kernel_size(8) % 2 == 1
    g = torch.zeros(1, 3, 32, 32)
    g[0, :, 16, 16] = 1
    out = TI().apply(g, None)  # type: ignore[arg-type]
    assert out.shape == g.shape
    assert (out[0, 0] > 0).sum() == 49  # a 7x7 footprint
    torch.testing.assert_close(out.sum(), torch.tensor(3.0))


def test_sgm_scales_residual_gradients() -> None:
    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 2])
    plain = MIFGSM(eps=8 / 255, steps=2)(net, x, y).x_adv
    sgm = create_attack("sgm", eps=8 / 255, steps=2, decay=1.0)(net, x, y).x_adv
    assert not torch.equal(plain, sgm)
    # hooks are gone afterwards: a second plain run gives the same result
    assert torch.equal(plain, MIFGSM(eps=8 / 255, steps=2)(net, x, y).x_adv)
    # gamma = 1 is the identity
    same = MIFGSM(eps=8 / 255, steps=2, transforms=[SGM(gamma=1.0)])(net, x, y).x_adv
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=0)


def test_parts_compose(digits_model: nn.Module, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    atk = MIFGSM(eps=0.1, steps=2, transforms=[SI(m=2), DI(diversity_prob=1.0), TI(len_kernel=3)])
    res = atk(digits_model, x[:8], y[:8], seed=0)
    assert res.cost.forward == 2 * 2  # 2 steps x 2 scale copies
    assert "SI(m=2)" in repr(atk) and "TI(len_kernel=3" in repr(atk)


def test_enforce_budget_low_precision() -> None:
    x = torch.rand(4, 3, 5, 5).to(torch.bfloat16)
    adv = x.float() + 0.3 * torch.randn(4, 3, 5, 5)
    for eps in (1 / 255, 0.0123, 0.5):
        out = enforce_budget(x, adv, eps, "Linf")
        assert out.dtype == torch.bfloat16
        assert (out.double() - x.double()).abs().max() <= eps
        out2 = enforce_budget(x, adv, eps, "L2")
        assert (out2.double() - x.double()).reshape(4, -1).norm(dim=1).max() <= eps
    nan = enforce_budget(x, torch.full(x.shape, float("nan")), 0.1, "Linf")
    assert torch.equal(nan, x)


def test_untargeted_labels_optional_when_targeted(digits_model: nn.Module, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    t = (y[:4] + 1) % 10
    res = PGD(eps=0.3, alpha=0.05)(digits_model, x[:4], None, target=t, seed=0)
    assert res.x_adv.shape == x[:4].shape
    with pytest.raises(RobustEnsError, match="y"):
        PGD()(digits_model, x[:4], None)


def test_ti_agrees_with_torchattacks_without_di() -> None:
    torch.manual_seed(0)
    net = models.create("small_cnn", in_chans=3, width=8).eval()  # torchattacks' TI kernel is 3-channel
    x = torch.rand(6, 3, 12, 12)
    y = torch.randint(0, 10, (6,))
    ref = torchattacks.TIFGSM(net, eps=EPS, alpha=ALPHA, steps=4, decay=1.0, len_kernel=5, nsig=3,
                              diversity_prob=0.0)(x, y)
    got = TIFGSM(eps=EPS, alpha=ALPHA, steps=4, decay=1.0, len_kernel=5, nsig=3, diversity_prob=0.0)(net, x, y).x_adv
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_replace_copies_and_validates() -> None:
    a = create_attack("difgsm", eps=0.1)
    b = a.replace(eps=0.2, steps=3)
    assert (a.eps, a.steps, b.eps, b.steps) == (0.1, 10, 0.2, 3)
    assert b.transforms == a.transforms
    with pytest.raises(RobustEnsError, match="eps"):
        a.replace(eps=2.0)
    with pytest.raises(RobustEnsError, match="unknown hyperparameter"):
        a.replace(gamma=0.3)
    with pytest.raises(RobustEnsError, match="unknown hyperparameter"):
        create_attack("pgd", gamma=0.3)


def test_adaea_without_agm_and_drf_is_mifgsm(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    # decay 1 and no start noise: MI-FGSM's own settings (AdaEA's defaults are the authors' 0.9 and 0.001)
    a = AdaEA(eps=0.1, alpha=0.02, steps=4, beta=0.0, threshold=-1.0, decay=1.0, init_noise=0.0)(
        digits_ensemble, x, y).x_adv
    b = MIFGSM(eps=0.1, alpha=0.02, steps=4)(digits_ensemble, x, y).x_adv
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    c = AdaEA(eps=0.1, alpha=0.02, steps=4)(digits_ensemble, x, y).x_adv
    assert not torch.equal(a, c)


def test_lgv_collect_and_attack(digits_models, digits_test) -> None:  # noqa: F811
    from robust_ens import data
    from robust_ens.attacks import LGV, lgv_collect

    base = digits_models[0]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    xt, yt = data.load("digits", split="train", n=256, seed=0)
    ens = lgv_collect(base, xt, yt, epochs=2, samples_per_epoch=2, batch_size=64, lr=0.01)
    assert len(ens) == 4
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the base is untouched
    x, y = digits_test
    res = LGV(eps=0.3, steps=8)(ens, x, y, seed=0)
    assert res.cost.forward == 8.0  # one collected model per iteration
    with torch.no_grad():
        assert (base(res.x_adv).argmax(1) == y).float().mean() < (base(x).argmax(1) == y).float().mean()

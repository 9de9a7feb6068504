"""Ensemble defenses: losses against direct computations, distillation, second-order terms, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from robust_ens import Ensemble, models
from robust_ens.defenses import (
    DEFENSES,
    check_layers,
    distill_features,
    feature_layers,
    get_features,
    list_defenses,
    load_recipe,
    resolve_recipe,
    train_defense,
)
from robust_ens.defenses.adp import ADPParams, adp_loss
from robust_ens.defenses.dverge import DVERGEParams, derangement, dverge_loss, make_step, partners
from robust_ens.defenses.gal import GALParams, add_noise, gal_loss
from robust_ens.defenses.trs import TRSParams, current_eps, trs_loss
from robust_ens.errors import RobustEnsError
from robust_ens.train import StepContext, TrainConfig

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_resnets(n: int = 3, seed: int = 0, **kw) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [models.create("resnet20", num_classes=10, **kw).eval() for _ in range(n)]


def tiny_cnns(n: int = 3, seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [models.create("small_cnn", num_classes=10, in_chans=1, width=8).eval() for _ in range(n)]


def batch(n: int = 6, shape=(1, 8, 8), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


# --------------------------------------------------------------------------- registry and input errors


def test_list_defenses_has_the_five():
    assert list_defenses() == ["adp", "baseline", "dverge", "gal", "trs"]


def test_unknown_defense_lists_known_ones():
    with pytest.raises(RobustEnsError, match="unknown defense 'dvrge'.*dverge.*Known defenses: adp, baseline"):
        train_defense("dvrge", dataset="digits", arch="small_cnn")


@pytest.mark.parametrize("name", ["adp", "gal", "dverge", "trs"])
def test_pairwise_defenses_need_two_members(name):
    with pytest.raises(RobustEnsError, match="n_members must be >= 2"):
        train_defense(name, n_members=1, dataset="digits", arch="small_cnn")


def test_unknown_layer_lists_candidates():
    m = tiny_resnets(1)[0]
    with pytest.raises(RobustEnsError, match=r"layer 'net.layer9' does not exist.*net\.act1:in.*net\.linear"):
        check_layers(m, ["net.layer9"])
    with pytest.raises(RobustEnsError, match="does not exist"):
        make_step(tiny_resnets(2), DVERGEParams(layer="net.nope"), TrainConfig(epochs=1))


def test_unknown_override_and_tier_are_reported():
    with pytest.raises(RobustEnsError, match="unknown option 'bogus'.*dverge hyperparameters"):
        resolve_recipe("dverge", "small", {"bogus": 1})
    with pytest.raises(RobustEnsError, match="unknown recipe tier 'huge'.*small"):
        load_recipe("gal", "huge")


@pytest.mark.parametrize("name", sorted(DEFENSES.list()))
@pytest.mark.parametrize("tier", ["small", "full"])
def test_every_recipe_tier_builds(name, tier):
    rec = resolve_recipe(name, tier)
    TrainConfig(**rec["train"])
    spec = DEFENSES.get(name)
    spec.params_cls(**rec["defense"])
    if rec["warmup"]:
        TrainConfig(**rec["warmup"])


def test_overrides_are_routed():
    rec = resolve_recipe("dverge", "small", {"lr": 0.5, "eps": 0.03, "train_n": 10, "warmup.epochs": 1})
    assert rec["train"]["lr"] == 0.5 and rec["defense"]["eps"] == 0.03
    assert rec["train_n"] == 10 and rec["warmup"]["epochs"] == 1
    flat = resolve_recipe("gal", {"tier": "mine", "epochs": 3, "lam": 1.0})
    assert flat["tier"] == "mine" and flat["train"] == {"epochs": 3} and flat["defense"] == {"lam": 1.0}


# --------------------------------------------------------------------------- feature hooks


def test_resnet20_layers_match_the_authors_twenty():
    m = tiny_resnets(1)[0]
    layers = feature_layers(m)
    assert len(layers) == 20
    assert layers[:3] == ["net.act1:in", "net.layer1.0.act1:in", "net.layer1.0.act2:in"]
    assert layers[-1] == "net.linear"
    x = torch.rand(2, 3, 32, 32)
    net = m.net
    with torch.no_grad():
        z = (x - m.mean) / m.std
        stem = net.bn1(net.conv1(z))
        torch.testing.assert_close(get_features(m, x, "net.act1:in"), stem)
        h = net.act1(stem)
        blk = net.layer1[0]
        torch.testing.assert_close(get_features(m, x, "net.layer1.0.act1:in"), blk.bn1(blk.conv1(h)))
        torch.testing.assert_close(get_features(m, x, "net.linear"), m(x))
        assert get_features(m, x, "net.layer3.2.act2:in").shape == (2, 64, 8, 8)
        assert get_features(m, x, "net.layer2").shape == (2, 32, 16, 16)


# --------------------------------------------------------------------------- losses vs direct computation


def test_adp_loss_matches_direct_computation():
    ms = tiny_cnns(3)
    x, y = batch(5)
    p = ADPParams(alpha=2.0, beta=0.5)
    loss, _ = adp_loss(ms, x, y, p)
    with torch.no_grad():
        probs = [F.softmax(m(x), -1) for m in ms]
        ce = sum(F.cross_entropy(m(x), y) for m in ms)
        ens = sum(probs) / 3
        ent = float(-(ens * torch.log(ens + 1e-20)).sum(-1).mean())
        logdets = []
        for b in range(len(y)):
            rows = []
            for pm in probs:
                v = torch.cat([pm[b, : y[b]], pm[b, y[b] + 1 :]]).double()
                rows.append(v / v.norm())
            mat = torch.stack(rows)
            logdets.append(math.log(torch.det(mat @ mat.T + 1e-6 * torch.eye(3, dtype=torch.float64))))
        expected = float(ce) - 2.0 * ent - 0.5 * sum(logdets) / len(logdets)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def _input_grad(m, x, y):
    xx = x.clone().requires_grad_(True)
    F.cross_entropy(m(xx), y).backward()
    return xx.grad.flatten(1)


def test_gal_loss_matches_direct_computation():
    ms = tiny_cnns(3)
    x, y = batch(4)
    loss, _ = gal_loss(ms, x, y, GALParams(lam=0.5))
    grads = [_input_grad(m, x, y) for m in ms]
    with torch.no_grad():
        ce = sum(float(F.cross_entropy(m(x), y)) for m in ms) / 3
    lse = []
    for b in range(len(y)):
        s = 0.0
        for i, j in itertools.combinations(range(3), 2):
            gi, gj = grads[i][b], grads[j][b]
            s += math.exp(float(gi @ gj / (gi.norm() * gj.norm())))
        lse.append(math.log(s))
    assert float(loss.detach()) == pytest.approx(ce + 0.5 * sum(lse) / len(lse), rel=1e-4)


def test_trs_loss_matches_direct_computation_for_four_members():
    ms = tiny_cnns(4)
    x, y = batch(4)
    p = TRSParams(coeff=40.0, lamda=2.5, scale=0.7)
    loss, metrics = trs_loss(ms, x, y, p)
    grads = [_input_grad(m, x, y) for m in ms]
    with torch.no_grad():
        ce = sum(float(F.cross_entropy(m(x), y)) for m in ms)
    pair_cos = [
        sum(abs(float(F.cosine_similarity(grads[i][b], grads[j][b], dim=0))) for b in range(len(y))) / len(y)
        for i, j in itertools.combinations(range(4), 2)
    ]
    smooth = sum(2 * float((g**2).sum(1).mean()) for g in grads) / 4
    expected = ce + 0.7 * (40.0 * sum(pair_cos) / len(pair_cos) + 2.5 * smooth)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["cos"]) == pytest.approx(sum(pair_cos) / len(pair_cos), rel=1e-4)


def test_dverge_loss_matches_direct_computation_and_round_robin():
    ms = tiny_cnns(3)
    _, y = batch(4)
    distilled = [batch(4, seed=s)[0] for s in (1, 2, 3)]
    loss, _ = dverge_loss(ms, distilled, y, DVERGEParams())
    with torch.no_grad():
        expected = sum(float(F.cross_entropy(ms[i](distilled[j]), y)) for i in range(3) for j in range(3) if i != j)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    rr, _ = dverge_loss(ms, distilled, y, DVERGEParams(round_robin=True), step=1)
    with torch.no_grad():
        expected_rr = sum(float(F.cross_entropy(ms[i](distilled[(i + 2) % 3]), y)) for i in range(3))
    assert float(rr.detach()) == pytest.approx(expected_rr, rel=1e-5)
    # round robin visits every other member over N-1 consecutive steps
    assert sorted(partners(0, 4, s, True)[0] for s in range(3)) == [1, 2, 3]


def test_trs_eps_ramp_and_derangement():
    p = TRSParams(init_eps=0.01, adv_eps=0.03)
    assert current_eps(p, 0, 10) == pytest.approx(0.01) and current_eps(p, 5, 10) == pytest.approx(0.02)
    perm = derangement(50, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(50)) and (perm != torch.arange(50)).all()


def test_gal_noise_hits_about_half_the_batch_with_the_right_std():
    x = torch.full((400, 1, 8, 8), 0.5)
    out = add_noise(x, 0.045, 0.5, torch.Generator().manual_seed(0))
    noisy = (out != x).flatten(1).any(1)
    assert 150 < int(noisy.sum()) < 250
    assert float((out - x)[noisy].std()) == pytest.approx(0.045, rel=0.1)


# --------------------------------------------------------------------------- second-order terms


def _param_grad(members, loss):
    params = [p for m in members for p in m.parameters()]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("which", ["gal", "trs"])
def test_gradient_terms_flow_through_create_graph(which):
    """The regularizer's parameter gradient exists (second order) and changes the total gradient."""
    ms = tiny_resnets(2)
    for m in ms:
        m.train()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    if which == "gal":
        loss, _ = gal_loss(ms, x, y, GALParams(lam=0.5))
        ce_only, _ = gal_loss(ms, x, y, GALParams(lam=0.0))
    else:
        loss, _ = trs_loss(ms, x, y, TRSParams())
        ce_only, _ = trs_loss(ms, x, y, TRSParams(coeff=0.0, lamda=0.0))
    g_full = _param_grad(ms, loss)
    g_ce = _param_grad(ms, ce_only)
    diff = (g_full - g_ce).norm() / g_ce.norm()
    assert torch.isfinite(g_full).all()
    assert diff > 1e-3, f"regularizer did not change the parameter gradient (relative change {diff:.2e})"


def test_second_order_gradient_matches_finite_difference():
    """d/dtheta of the GAL coherence term, along a random direction, equals a finite difference."""
    torch.manual_seed(0)
    ms = [models.create("small_cnn", num_classes=10, in_chans=1, width=4).double().eval() for _ in range(2)]
    x, y = batch(3)
    x = x.double()

    def coherence():
        return gal_loss(ms, x, y, GALParams(lam=1.0))[1]["coherence"]

    loss, _ = gal_loss(ms, x, y, GALParams(lam=1.0))
    ce = sum(F.cross_entropy(m(x), y) for m in ms) / 2
    params = [p for m in ms for p in m.parameters()]
    grads = torch.autograd.grad(loss - ce, params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(h * d)
    plus = float(coherence())
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * h * d)
    minus = float(coherence())
    assert analytic == pytest.approx((plus - minus) / (2 * h), rel=1e-3, abs=1e-6)


# --------------------------------------------------------------------------- distillation


def test_distillation_stays_in_budget_and_moves_features_toward_target():
    ms = tiny_resnets(2)
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 3, 32, 32, generator=g)
    layer = "net.layer1.1.act2:in"  # an early layer: the forward pass stops there
    out = distill_features(ms, src, tgt, layer, eps=0.07, alpha=0.007, steps=10)
    for m, d in zip(ms, out, strict=True):
        assert (d - src).abs().max() <= 0.07 + 1e-6
        assert d.min() >= 0 and d.max() <= 1
        with torch.no_grad():
            ft = get_features(m, tgt, layer)
            before = F.mse_loss(get_features(m, src, layer), ft)
            after = F.mse_loss(get_features(m, d, layer), ft)
        assert after < 0.8 * before
    looped = distill_features(ms, src, tgt, layer, eps=0.07, alpha=0.007, steps=10, mode="loop")
    for a, b in zip(out, looped, strict=True):
        # identical up to sign flips of gradient entries that are ~0 in float32
        assert (a - b).abs().gt(1e-5).float().mean() < 0.01


def test_dverge_step_uses_eval_mode_for_distillation_and_train_mode_for_training():
    ms = tiny_resnets(2)
    for m in ms:
        m.train()
    seen = []
    hook = ms[0].net.bn1.register_forward_pre_hook(lambda mod, a: seen.append(mod.training))
    # the eval-mode switch (the default, distill_train_mode=True, is the authors' train mode: tests/test_fidelity.py)
    step = make_step(ms, DVERGEParams(steps=2, layer="net.layer1.0.act1:in", distill_train_mode=False),
                     TrainConfig(epochs=1))
    x = torch.rand(4, 3, 32, 32)
    loss, metrics = step(x, torch.arange(4), StepContext(0, 0, torch.Generator().manual_seed(0), torch.device("cpu")))
    hook.remove()
    assert torch.isfinite(loss)
    assert seen[:3] == [False, False, False]  # target features + 2 distillation steps
    assert seen[-1] is True and ms[0].training  # training pass in train mode, mode restored


# --------------------------------------------------------------------------- metrics


def test_transferability_matrix_and_other_metrics():
    from robust_ens.defenses import (
        gradient_cosine,
        mean_gradient_cosine,
        transferability_matrix,
        vulnerability_overlap,
    )

    ens = train_defense("baseline", arch="small_cnn", n_members=2, dataset="digits", progress=False,
                        arch_kwargs={"width": 16},
                        recipe={"train": dict(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, crop_padding=1,
                                              flip=False, precision="fp32"), "train_n": 320, "eval_n": 100})
    from robust_ens import data

    x, y = data.load("digits", "test", n=40)
    calls = []

    def fgsm(model, xb, yb):
        calls.append(len(xb))
        xx = xb.clone().requires_grad_(True)
        F.cross_entropy(model(xx), yb).backward()
        return (xb + 0.3 * xx.grad.sign()).clamp(0, 1)

    tm = transferability_matrix(ens, x, y, attack=fgsm)
    assert tm.matrix.shape == (2, 3) and 0 < tm.n_examples <= 60
    assert ((tm.matrix >= 0) & (tm.matrix <= 1)).all()
    # White-box FGSM at 0.3 fools the source member: the smallest diagonal over 16 trainings was 0.905
    # (4 seeds x fp32/bf16 x 1/2 threads; experiments/results/threshold_spread.md).
    assert (tm.matrix.diagonal() > 0.5).all()
    assert sum(calls) == 2 * tm.n_examples
    vo = vulnerability_overlap(ens, x, y, steps=3)
    assert vo.shape == (2, 2) and torch.isfinite(vo).all()
    gc = gradient_cosine(ens, x, y)
    torch.testing.assert_close(gc.diagonal(), torch.ones(2), atol=1e-5, rtol=0)
    assert -1 <= mean_gradient_cosine(ens, x, y) <= 1
    with pytest.raises(RobustEnsError, match=">= 2 members"):
        transferability_matrix(Ensemble([ens.members[0]]), x, y, attack=fgsm)


@pytest.mark.parametrize("name", ["adp", "gal", "trs", "dverge"])
def test_plus_adv_variants_run_one_step(name):
    """Adversarial variants: one training step gives a finite loss with gradients for every member."""
    ms = tiny_cnns(2)
    for m in ms:
        m.train()
    spec = DEFENSES.get(name)
    extra = {"steps": 2, "adv_steps": 2} if name == "dverge" else {"adv_steps": 2}
    params = spec.params_cls(plus_adv=True, **extra)
    step = spec.make_step(ms, params, TrainConfig(epochs=4))
    x, y = batch(6)
    loss, metrics = step(x, y, StepContext(1, 0, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(m.net.head.weight.grad is not None and m.training for m in ms)
    if name in ("adp", "gal"):
        assert "adv_ce" in metrics


def test_training_pgd_is_the_attack_library_pgd_and_clips_noisy_inputs():
    from robust_ens.attacks import PGD
    from robust_ens.defenses import linf_pgd

    torch.manual_seed(0)
    model = models.create("small_cnn", in_chans=1).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    ours = linf_pgd(model, x, y, eps=0.05, alpha=0.01, steps=3, generator=torch.Generator().manual_seed(3))
    ref = PGD(eps=0.05, alpha=0.01, steps=3, random_start=True)(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, ref.x_adv)
    noisy = x + 0.2 * torch.randn_like(x)  # GAL's unclipped noise leaves the box
    adv = linf_pgd(lambda t: model(t), noisy, y, eps=0.05, alpha=0.01, steps=2)
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - noisy.clamp(0, 1)).abs().max() <= 0.05 + 1e-6


# --------------------------------------------------------------------------- packed ensembles


@pytest.mark.parametrize("name", sorted(DEFENSES.list()))
def test_every_defense_step_trains_a_packed_ensemble(name):
    """Each registered defense's own step, unchanged, on the members of one packed network: the
    loss reaches the shared weights and every member's adapters and BatchNorm."""
    from robust_ens.models.packed import PackedBatchNorm2d, PackedConv2d

    spec = DEFENSES.get(name)
    torch.manual_seed(0)
    ens = models.create("packed:small_cnn", members=3, in_chans=1, width=8, seed=0)
    ens.precision = "fp32"
    params = spec.params_cls(**({"steps": 1} if name == "dverge" else {}))
    step = spec.make_step(list(ens.members), params, TrainConfig(epochs=1, precision="fp32"))
    x, y = batch(8)
    ens.train()
    ctx = StepContext(epoch=0, step=0, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    out = step(x, y, ctx)
    loss = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(loss)
    loss.backward()
    conv = next(m for m in ens.modules() if isinstance(m, PackedConv2d))
    bn = next(m for m in ens.modules() if isinstance(m, PackedBatchNorm2d))
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    for k in range(3):  # every member contributes to its own adapters and BatchNorm
        assert conv.r.grad[k].abs().sum() > 0 and bn.weight.grad[k].abs().sum() > 0, (name, k)

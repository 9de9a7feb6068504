"""Fidelity switches (issue 15): each pins one place where we follow, or depart from, the authors' code.

Every test states a property that a wrong implementation of the switch fails: an independent
re-implementation of the algorithm as the authors' code runs it, a gradient identity, a step
direction, batch (in)dependence, or which BatchNorm mode and running statistics a step uses.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.attacks import CWA, LGV, SGM, AdaEA
from robust_ens.attacks.base import AttackRun
from robust_ens.attacks.ensemble import agm_ratio, drf_similarity
from robust_ens.defenses.distill import distill_features, linf_pgd
from robust_ens.defenses.dverge import DVERGEParams
from robust_ens.defenses.dverge import make_step as dverge_step
from robust_ens.defenses.trs import TRSParams, magnitude, magnitude_pgd
from robust_ens.defenses.trs import make_step as trs_step
from robust_ens.train import StepContext, TrainConfig
from tests.attack_fixtures import digits_ensemble, digits_models, digits_test, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def frac_differ(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> float:
    return float((a - b).abs().gt(tol).float().mean())


# --------------------------------------------------------------------------- CWA


def reference_cwa(
    members: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, alpha: float,
    r: float, beta: float, carry: bool, summed: bool, batch_norm: bool, smooth: Any = None,
) -> torch.Tensor:
    """MI-CWA written out as ``MI_CommonWeakness.attack`` runs it (untargeted, mu = 1).

    Batch-mean cross-entropy everywhere, as the authors' ``nn.CrossEntropyLoss()``; the outer
    change is normalized by its L1 norm per example, or over the whole batch (``batch_norm``).
    ``smooth`` (TI) acts on the reverse gradient and on every inner gradient, as with ``TI=True``.
    """
    sm = smooth or (lambda t: t)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    x_adv, m_out, m_in = x.clone(), torch.zeros_like(x), torch.zeros_like(x)
    n = len(x)
    for _ in range(steps):
        if not carry:
            m_in = torch.zeros_like(x)
        xg = x_adv.clone().requires_grad_(True)
        logits = torch.stack([m(xg) for m in members])
        fused = logits.sum(0) if summed else logits.mean(0)
        (g,) = torch.autograd.grad(F.cross_entropy(fused, y), xg)
        z = torch.min(torch.max(x_adv - r * sm(g).sign(), lo), hi)
        for m in members:
            zg = z.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(m(zg), y), zg)
            g = sm(g)
            m_in = m_in + g / g.reshape(n, -1).norm(dim=1).view(n, 1, 1, 1)
            z = torch.min(torch.max(z + beta * m_in, lo), hi)
        d = z - x_adv
        scale = d.abs().sum() if batch_norm else d.abs().reshape(n, -1).sum(1).view(n, 1, 1, 1)
        m_out = m_out + d / scale
        x_adv = torch.min(torch.max(x_adv + alpha * m_out.sign(), lo), hi)
    return x_adv


CWA_KW = dict(eps=0.1, steps=8, alpha=0.02, reverse_step=0.03, beta=0.05)  # inner steps below the ball


@pytest.mark.parametrize(
    "switches, ref",
    [
        ({}, dict(carry=True, summed=True, batch_norm=False)),  # the defaults
        ({"carry_inner_momentum": False}, dict(carry=False, summed=True, batch_norm=False)),
        ({"reverse_logits": "ensemble"}, dict(carry=True, summed=False, batch_norm=False)),
        ({"outer_norm": "batch"}, dict(carry=True, summed=True, batch_norm=True)),
        ({"carry_inner_momentum": False, "reverse_logits": "ensemble"}, dict(carry=False, summed=False,
                                                                             batch_norm=False)),
    ],
    ids=["defaults", "reset-inner", "mean-logits", "batch-norm", "before-issue-15"],
)
def test_cwa_matches_the_authors_algorithm(switches, ref, digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    x, y = x[:32], y[:32]
    got = CWA(**CWA_KW, **switches)(digits_ensemble, x, y, seed=0).x_adv
    kw = dict(eps=0.1, steps=8, alpha=0.02, r=0.03, beta=0.05)
    want = reference_cwa(list(digits_ensemble.members), x, y, **kw, **ref)
    assert frac_differ(got, want) < 0.005  # equal up to sign flips of ~0 float entries
    # the reference tells the settings apart: flipping any one of them moves most examples
    for key in ref:
        other = reference_cwa(list(digits_ensemble.members), x, y, **kw, **{**ref, key: not ref[key]})
        assert frac_differ(got, other) > 0.02, key


def test_cwa_smooths_every_gradient_like_the_authors_ti(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    from robust_ens.attacks import TI

    x, y = digits_test
    x, y = x[:32], y[:32]
    ti = TI(len_kernel=3)
    kw = dict(eps=0.1, steps=8, alpha=0.02, r=0.03, beta=0.05, carry=True, summed=True, batch_norm=False)
    want = reference_cwa(list(digits_ensemble.members), x, y, **kw, smooth=lambda g: ti.apply(g, None))
    got = CWA(**CWA_KW, transforms=[ti])(digits_ensemble, x, y, seed=0).x_adv
    assert frac_differ(got, want) < 0.005
    old = CWA(**CWA_KW, transforms=[ti], transform_placement="update")(digits_ensemble, x, y, seed=0).x_adv
    assert frac_differ(old, want) > 0.02
    # without parts the placement does not matter
    a = CWA(**CWA_KW)(digits_ensemble, x, y, seed=0).x_adv
    b = CWA(**CWA_KW, transform_placement="update")(digits_ensemble, x, y, seed=0).x_adv
    assert torch.equal(a, b)


class _SpyCWA(CWA):
    """Records the inner momentum at entry to and exit from every outer step."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._log: list[tuple[torch.Tensor | None, torch.Tensor]] = []

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        start = state.get("inner_momentum")
        start = None if start is None else start.clone()
        out = super().gradient(run, x, x_adv, state)
        self._log.append((start, state["inner_momentum"].clone()))
        return out


def test_cwa_inner_momentum_is_carried_across_outer_steps(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    atk = _SpyCWA(**CWA_KW)
    atk(digits_ensemble, x[:8], y[:8], seed=0)
    assert atk._log[0][0] is None  # zero before the first outer step
    for (_, end), (start, _) in zip(atk._log, atk._log[1:], strict=False):
        assert start is not None and torch.equal(start, end)  # step t+1 starts where step t ended
    # and it is used: the reset variant moves the attack
    reset = CWA(**CWA_KW, carry_inner_momentum=False)(digits_ensemble, x, y, seed=0).x_adv
    carried = CWA(**CWA_KW)(digits_ensemble, x, y, seed=0).x_adv
    assert frac_differ(reset, carried) > 0.05


def _run(ens: Ensemble, y: torch.Tensor) -> AttackRun:
    return AttackRun(ens, y, False, torch.Generator().manual_seed(0), 10, len(y))


def test_cwa_reverse_step_gradient_is_that_of_the_summed_logits(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    x, y = x[:16], y[:16]
    members = list(digits_ensemble.members)

    def grad_of(fn: Any) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xg).sum(), xg)
        return g

    summed = grad_of(lambda z: CWA().reverse_objective(_run(digits_ensemble, y), z))
    direct = grad_of(lambda z: F.cross_entropy(sum(m(z) for m in members), y, reduction="none"))
    torch.testing.assert_close(summed, direct, atol=1e-6, rtol=1e-5)
    mean = grad_of(lambda z: CWA(reverse_logits="ensemble").reverse_objective(_run(digits_ensemble, y), z))
    direct_mean = grad_of(lambda z: F.cross_entropy(sum(m(z) for m in members) / 3, y, reduction="none"))
    torch.testing.assert_close(mean, direct_mean, atol=1e-6, rtol=1e-5)
    assert frac_differ(summed.sign(), mean.sign(), 0.5) > 0.05  # CE of a sum is not CE of a mean
    # non-uniform weights: M * sum_k w_k logits_k
    w_ens = Ensemble(members, weights=[0.5, 0.3, 0.2], precision="fp32").eval()
    weighted = grad_of(lambda z: CWA().reverse_objective(_run(w_ens, y), z))
    direct_w = grad_of(lambda z: F.cross_entropy(3 * sum(w * m(z) for w, m in zip([0.5, 0.3, 0.2], members,
                                                                                  strict=True)), y, reduction="none"))
    torch.testing.assert_close(weighted, direct_w, atol=1e-6, rtol=1e-4)


def test_cwa_outer_norm_example_is_batch_independent_and_batch_is_not(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    for norm, independent in (("example", True), ("batch", False)):
        atk = CWA(**CWA_KW, outer_norm=norm)
        whole = atk(digits_ensemble, x, y, seed=0).x_adv[:8]
        part = atk(digits_ensemble, x[:8], y[:8], seed=0).x_adv
        if independent:
            assert frac_differ(whole, part) < 0.005
        else:
            assert frac_differ(whole, part) > 0.01


def test_cwa_switches_are_validated_and_stored_under_their_names() -> None:
    from robust_ens.errors import RobustEnsError

    atk = CWA(carry_inner_momentum=False, reverse_logits="ensemble", outer_norm="batch")
    assert (atk.carry_inner_momentum, atk.reverse_logits, atk.outer_norm) == (False, "ensemble", "batch")
    with pytest.raises(RobustEnsError, match="reverse_logits"):
        CWA(reverse_logits="mean")
    with pytest.raises(RobustEnsError, match="outer_norm"):
        CWA(outer_norm="pixel")


# --------------------------------------------------------------------------- AdaEA


def test_adaea_agm_ratio_follows_the_authors_formula() -> None:
    g = torch.Generator().manual_seed(0)
    cross = torch.rand(3, 3, 5, generator=g) + 0.1  # cross[k, j] = L_j(x_k)
    code = agm_ratio(cross, "code")
    own = agm_ratio(cross, "own")
    for k in range(3):
        others = [i for i in range(3) if i != k]
        torch.testing.assert_close(code[k], sum(cross[k, i] / cross[i, i] for i in others))
        torch.testing.assert_close(own[k], sum(cross[k, j] / cross[k, k] for j in others) / 2)
    torch.testing.assert_close(agm_ratio(cross, "code", targeted=True)[0],
                               sum(cross[i, i] / cross[0, i] for i in (1, 2)))
    batch = agm_ratio(cross.mean(-1), "code")  # batch-mean losses: one ratio per member
    assert batch.shape == (3,)
    torch.testing.assert_close(batch[0], cross[0, 1].mean() / cross[1, 1].mean() + cross[0, 2].mean() / cross[2, 2].mean())


def test_adaea_drf_map_follows_the_authors_loop() -> None:
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    u = [F.normalize(t, dim=1) for t in grads]
    s = {(i, j): (u[i] * u[j]).sum(1, keepdim=True) for i in range(3) for j in range(i + 1, 3)}
    # the authors fill member 0 and 1's mean agreement, leave member 2's at zero, average over 3
    want_code = ((s[0, 1] + s[0, 2]) / 2 + (s[0, 1] + s[1, 2]) / 2) / 3
    torch.testing.assert_close(drf_similarity(grads, "code"), want_code)
    torch.testing.assert_close(drf_similarity(grads, "pairs"), (s[0, 1] + s[0, 2] + s[1, 2]) / 3)


def test_adaea_defaults_and_batch_dependence(digits_ensemble: Ensemble, digits_test) -> None:  # noqa: F811
    x, y = digits_test
    atk = AdaEA()
    assert (atk.decay, atk.threshold, atk.init_noise, atk.agm_ratio, atk.drf, atk.agm_reduction) == (
        0.9, -0.3, 0.001, "code", "code", "example")
    for reduction, independent in (("example", True), ("batch", False)):
        a = AdaEA(eps=0.1, alpha=0.02, steps=4, init_noise=0.0, agm_reduction=reduction)
        whole = a(digits_ensemble, x, y, seed=0).x_adv[:8]
        part = a(digits_ensemble, x[:8], y[:8], seed=0).x_adv
        assert (frac_differ(whole, part) < 0.005) is independent, reduction
    # the start noise comes from the attack's generator: same seed, same result; 0 is deterministic
    r1 = AdaEA(eps=0.1, alpha=0.02, steps=2)(digits_ensemble, x, y, seed=1).x_adv
    r2 = AdaEA(eps=0.1, alpha=0.02, steps=2)(digits_ensemble, x, y, seed=1).x_adv
    assert torch.equal(r1, r2)


# --------------------------------------------------------------------------- LGV and SGM


def _member_sequence(ens: Ensemble, atk: LGV, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    seen: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, k=k: seen.append(k)) for k, m in enumerate(ens.members)]
    try:
        atk(ens, x, y, seed=3)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_lgv_repeats_one_random_order_unless_reshuffled(digits_models) -> None:  # noqa: F811
    import copy

    ens = Ensemble([copy.deepcopy(m) for m in list(digits_models) * 2], precision="fp32").eval()  # 6 models
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    seq = _member_sequence(ens, LGV(eps=0.1, steps=18), x, y)
    assert len(seq) == 18 and sorted(seq[:6]) == list(range(6))
    assert seq[:6] == seq[6:12] == seq[12:18]  # the authors: model t mod M of one shuffled list
    s = _member_sequence(ens, LGV(eps=0.1, steps=18, reshuffle=True), x, y)
    assert all(sorted(s[i:i + 6]) == list(range(6)) for i in (0, 6, 12))  # every cycle visits all
    assert len({tuple(s[i:i + 6]) for i in (0, 6, 12)}) > 1  # a new order per cycle
    assert s[:6] == seq[:6]  # the same first draw from the same seed


def test_sgm_skips_the_first_block_of_each_stage_like_the_authors() -> None:
    torch.manual_seed(0)
    m = models.create("resnet20", num_classes=10).eval()
    firsts = {"net.layer1.0", "net.layer2.0", "net.layer3.0"}
    default = SGM(gamma=0.2).decayed_blocks(m)
    assert len(default) == 6 and not firsts & set(default)
    assert set(SGM(gamma=0.2, decay_first_block=True).decayed_blocks(m)) >= firsts
    x = torch.rand(2, 3, 32, 32)

    def input_grad(part: SGM | None) -> torch.Tensor:
        handles = part.attach(m) if part is not None else []
        try:
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(m(xg).logsumexp(-1).sum(), xg)
        finally:
            for h in handles:
                h.remove()
        return g

    plain, auth, all_blocks = input_grad(None), input_grad(SGM(gamma=0.2)), input_grad(SGM(gamma=0.2, decay_first_block=True))
    assert frac_differ(auth, all_blocks) > 0.5 and frac_differ(auth, plain) > 0.5
    torch.testing.assert_close(input_grad(SGM(gamma=1.0)), plain)


# --------------------------------------------------------------------------- TRS


def _bn_means(members: list[nn.Module]) -> list[torch.Tensor]:
    return [mm.running_mean.clone() for m in members for mm in m.modules() if isinstance(mm, nn.BatchNorm2d)]


def test_trs_pgd_direction_is_the_sign_of_the_accumulated_gradients() -> None:
    torch.manual_seed(0)
    members = [models.create("small_cnn", num_classes=10, in_chans=1, width=8).eval() for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    eps = 0.1
    alpha = eps / 3

    def mag_grad(z: torch.Tensor) -> torch.Tensor:
        z = z.clone().requires_grad_(True)
        mags = []
        for m in members:
            (gm,) = torch.autograd.grad(F.cross_entropy(m(z), y), z, create_graph=True)
            mags.append(magnitude(gm.flatten(1)))
        (out,) = torch.autograd.grad(sum(mags) / 2, z)
        return out

    def project(z: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)

    noise = torch.empty(x.shape).uniform_(-eps, eps, generator=torch.Generator().manual_seed(5))
    x0 = (x + noise).clamp(0, 1)
    g1 = mag_grad(x0)
    x1 = project(x0 + alpha * g1.sign())
    g2 = mag_grad(x1)
    acc = magnitude_pgd(members, x, y, eps, 2, torch.Generator().manual_seed(5), accumulate=True)
    fresh = magnitude_pgd(members, x, y, eps, 2, torch.Generator().manual_seed(5), accumulate=False)
    torch.testing.assert_close(acc, project(x1 + alpha * (g1 + g2).sign()))
    torch.testing.assert_close(fresh, project(x1 + alpha * g2.sign()))
    assert frac_differ(acc, fresh) > 0.01


def _trs_step(params: TRSParams, members: list[nn.Module], x: torch.Tensor, y: torch.Tensor) -> tuple[Any, list[bool]]:
    modes: list[bool] = []
    bn = next(mm for mm in members[0].modules() if isinstance(mm, nn.BatchNorm2d))
    h = bn.register_forward_pre_hook(lambda mod, a: modes.append(mod.training))
    try:
        step = trs_step(members, params, TrainConfig(epochs=2))
        loss, metrics = step(x, y, StepContext(0, 0, torch.Generator().manual_seed(0), torch.device("cpu")))
    finally:
        h.remove()
    return (loss, metrics), modes


def test_trs_pgd_mode_every_batch_and_repeated_forwards_only_move_batchnorm_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)

    def fresh() -> list[nn.Module]:
        torch.manual_seed(0)
        return [models.create("resnet20", num_classes=10).train() for _ in range(2)]

    runs = {}
    for name, kw in {
        "authors": {},
        "no_pgd": {"pgd_every_batch": False},
        "eval_pgd": {"pgd_train_mode": False},
        "lean": {"pgd_every_batch": False, "repeat_forwards": False},
    }.items():
        ms = fresh()
        (loss, metrics), modes = _trs_step(TRSParams(adv_steps=2, **kw), ms, x, y)
        runs[name] = (float(loss.detach()), float(metrics["train_acc"]), _bn_means(ms), modes)
    # same loss everywhere (the PGD result is unused without plus_adv)
    for name in ("no_pgd", "eval_pgd", "lean"):
        assert runs[name][0] == pytest.approx(runs["authors"][0], rel=1e-6, abs=1e-6), name
    # forwards of the first member's stem BatchNorm: 1 (loss) + 2 PGD steps + 1 (second smoothness
    # pass) + 1 (accuracy pass), all in train mode for the authors' defaults
    assert runs["authors"][3] == [True] * 5
    assert runs["eval_pgd"][3] == [True, False, False, True, True]  # the authors' order of passes
    assert runs["no_pgd"][3] == [True] * 3 and runs["lean"][3] == [True]
    # and therefore different running statistics
    for a, b in (("authors", "no_pgd"), ("authors", "eval_pgd"), ("no_pgd", "lean")):
        assert not all(torch.allclose(u, v) for u, v in zip(runs[a][2], runs[b][2], strict=True)), (a, b)


def test_trs_plus_adv_pgd_runs_in_train_mode_by_default() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    ms = [models.create("resnet20", num_classes=10).train() for _ in range(2)]
    _, modes = _trs_step(TRSParams(plus_adv=True, adv_steps=2), ms, x, y)
    assert modes == [True] * 5 and all(m.training for m in ms)  # loss, 2 PGD, smoothness batch, accuracy
    _, modes = _trs_step(TRSParams(plus_adv=True, adv_steps=2, pgd_train_mode=False), ms, x, y)
    assert modes == [True, False, False, True, True] and all(m.training for m in ms)


# --------------------------------------------------------------------------- DVERGE


def test_dverge_distills_in_train_mode_like_the_authors() -> None:
    torch.manual_seed(0)
    ms = [models.create("resnet20", num_classes=10).train() for _ in range(2)]
    layer = "net.layer1.0.act1:in"
    seen: list[bool] = []
    hook = ms[0].net.bn1.register_forward_pre_hook(lambda mod, a: seen.append(mod.training))
    before = _bn_means(ms)
    step = dverge_step(ms, DVERGEParams(steps=3, layer=layer), TrainConfig(epochs=1))
    x = torch.rand(6, 3, 32, 32)
    loss, _ = step(x, torch.arange(6), StepContext(0, 0, torch.Generator().manual_seed(0), torch.device("cpu")))
    hook.remove()
    assert torch.isfinite(loss)
    # 3 distillation steps x (source, target) in train mode, then the training pass
    assert seen[:6] == [True] * 6 and seen[6:] == [True]
    assert all(m.training for m in ms)
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_means(ms), strict=True))


def test_distillation_in_train_mode_batched_equals_loop_and_statistics_follow_the_authors() -> None:
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 3, 32, 32, generator=g)
    layer = "net.layer1.1.act2:in"
    outs, stats = {}, {}
    for mode in ("batched", "loop", "authors"):
        torch.manual_seed(0)
        ms = [models.create("resnet20", num_classes=10).train() for _ in range(2)]
        if mode == "authors":  # the authors' loop: per step, source forward then target forward
            res = []
            for m in ms:
                xa, gm = src.clone(), torch.zeros_like(src)
                for _ in range(4):
                    xa.requires_grad_(True)
                    from robust_ens.defenses.features import get_features

                    fs = get_features(m, xa, layer)
                    ft = get_features(m, tgt, layer).detach()
                    (gr,) = torch.autograd.grad(F.mse_loss(fs, ft), xa)
                    with torch.no_grad():
                        gm = gm + gr / gr.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                        xa = torch.min(torch.max(xa - 0.007 * gm.sign(), src - 0.07), src + 0.07).clamp(0, 1)
                res.append(xa.detach())
        else:
            res = distill_features(ms, src, tgt, layer, eps=0.07, alpha=0.007, steps=4, mode=mode,
                                   recompute_target=True)
        outs[mode], stats[mode] = res, _bn_means(ms)
    for mode in ("batched", "loop"):
        for a, b in zip(outs[mode], outs["authors"], strict=True):
            assert frac_differ(a, b, 1e-5) < 0.01
        for a, b in zip(stats[mode], stats["authors"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_training_pgd_keep_mode_attacks_a_member_in_train_mode() -> None:
    torch.manual_seed(0)
    m = models.create("resnet20", num_classes=10).train()
    seen: list[bool] = []
    h = m.net.bn1.register_forward_pre_hook(lambda mod, a: seen.append(mod.training))
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    linf_pgd(m, x, y, eps=8 / 255, alpha=2 / 255, steps=2, keep_mode=True, generator=torch.Generator().manual_seed(0))
    kept = list(seen)
    seen.clear()
    linf_pgd(m, x, y, eps=8 / 255, alpha=2 / 255, steps=2, generator=torch.Generator().manual_seed(0))
    h.remove()
    assert kept == [False, True, True]  # class-count probe in eval mode, then 2 steps in train mode
    assert False in seen and True not in seen[1:]  # default: the attack's eval mode
    assert m.training

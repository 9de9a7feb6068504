"""Packed ensembles (BatchEnsemble / TabM-style sub-models): exactness, batching, checkpoints, training."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.defenses import member_mean_config, resolve_recipe, train_defense
from robust_ens.errors import CheckpointError, RobustEnsError
from robust_ens.models.packed import (
    INITS,
    MemberLinear,
    PackedBatchNorm2d,
    PackedConv2d,
    PackedEnsemble,
    PackedLinear,
    build_packed,
)
from robust_ens.train import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")
from tests.attack_fixtures import single_thread  # noqa: E402,F401

TINY_VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
# (registry name, create kwargs, input shape)
ARCHS = [
    ("resnet20", {}, (3, 3, 32, 32)),
    ("small_cnn", {"in_chans": 1, "width": 8}, (4, 1, 8, 8)),
    ("timm:vit_tiny_patch16_224", TINY_VIT, (3, 3, 16, 16)),
]


def pack_copy(base: nn.Module, members: int, init: str = "ones", heads: str = "shared") -> PackedEnsemble:
    """A packed ensemble built from a copy of ``base`` (a created model), fp32."""
    kw = dict(base.arch_kwargs)  # type: ignore[attr-defined]
    ens = build_packed(base.arch, copy.deepcopy(base.net), members=members, init=init, heads=heads,  # type: ignore[attr-defined]
                       seed=0, mean=None, std=None, num_classes=base.num_classes, in_chans=base.in_chans,  # type: ignore[attr-defined]
                       arch_kwargs=kw)
    ens.precision = "fp32"
    return ens


def warm_bn(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Give BatchNorm non-trivial running statistics (a few train-mode passes)."""
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(torch.rand(8, *shape[1:], generator=torch.Generator().manual_seed(s)))
    model.eval()


@pytest.mark.parametrize(("name", "kw", "shape"), ARCHS, ids=[a[0] for a in ARCHS])
def test_adapters_at_ones_equal_one_network(name, kw, shape):
    torch.manual_seed(0)
    base = models.create(name, **kw)
    warm_bn(base, shape)
    ens = pack_copy(base, 3, init="ones")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = base.eval()(x)
        for logits in ens.eval().member_logits(x):
            torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
        # train mode: every member normalizes its own block with that block's batch statistics
        ref_t = copy.deepcopy(base).train()(x)
        for logits in copy.deepcopy(ens).train().member_logits(x):
            torch.testing.assert_close(logits, ref_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", [i for i in INITS if i != "ones"])
def test_members_differ_once_adapters_differ(init):
    torch.manual_seed(0)
    ens = models.create("packed:resnet20", members=3, init=init, seed=3).eval()
    ens.precision = "fp32"
    with torch.no_grad():
        z = ens.member_logits(torch.rand(4, 3, 32, 32))
    for i in range(3):
        for j in range(i + 1, 3):
            assert (z[i] - z[j]).abs().max() > 1e-3, (init, i, j)


def test_only_the_adapters_make_members_differ():
    """Random-sign adapters set back to one: the members are one network again."""
    torch.manual_seed(0)
    ens = models.create("packed:small_cnn", members=4, in_chans=1, width=8).eval()
    ens.precision = "fp32"
    with torch.no_grad():
        for mod in ens.modules():
            if isinstance(mod, PackedConv2d | PackedLinear):
                mod.r.fill_(1.0)
                mod.s.fill_(1.0)
        z = ens.member_logits(torch.rand(5, 1, 8, 8))
    for k in range(1, 4):
        torch.testing.assert_close(z[k], z[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("name", "kw", "shape"), ARCHS, ids=[a[0] for a in ARCHS])
@pytest.mark.parametrize("heads", ["shared", "separate"])
def test_batched_member_logits_equal_each_member_alone(name, kw, shape, heads):
    torch.manual_seed(0)
    ens = models.create("packed:" + name, members=4, heads=heads, seed=1, **kw)
    ens.precision = "fp32"
    warm_bn(ens, shape)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = ens.member_logits(x)
        assert batched.shape == (4, shape[0], 10)
        for k in range(4):
            torch.testing.assert_close(batched[k], ens.member_forward(k, x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(batched[k], ens.members[k](x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ens(x), batched.mean(0), rtol=1e-5, atol=1e-5)
    # the input gradients agree too (what the attacks use)
    xg = x.clone().requires_grad_(True)
    (g_batched,) = torch.autograd.grad(ens.member_logits(xg)[:, :, 0].sum(), xg)
    xg2 = x.clone().requires_grad_(True)
    (g_loop,) = torch.autograd.grad(ens.member_logits_loop(xg2)[:, :, 0].sum(), xg2)
    torch.testing.assert_close(g_batched, g_loop, rtol=1e-4, atol=1e-5)


def test_train_mode_batched_equals_members_alone_and_updates_own_statistics():
    torch.manual_seed(0)
    ens = models.create("packed:small_cnn", members=3, in_chans=1, width=8, seed=0)
    ens.precision = "fp32"
    x = torch.rand(6, 1, 8, 8)
    a, b = copy.deepcopy(ens).train(), copy.deepcopy(ens).train()
    za = a.member_logits(x)
    zb = torch.stack([b.members[k](x) for k in range(3)])
    torch.testing.assert_close(za, zb, rtol=1e-5, atol=1e-5)
    for (na, ma), (_, mb) in zip(a.named_modules(), b.named_modules(), strict=True):
        if isinstance(ma, PackedBatchNorm2d):
            torch.testing.assert_close(ma.running_mean, mb.running_mean, rtol=1e-6, atol=1e-6, msg=na)
            torch.testing.assert_close(ma.running_var, mb.running_var, rtol=1e-6, atol=1e-6, msg=na)
    # member 1 alone moves only member 1's statistics
    c = copy.deepcopy(ens).train()
    before = {n: m.running_mean.clone() for n, m in c.named_modules() if isinstance(m, PackedBatchNorm2d)}
    c.members[1](x)
    for n, m in c.named_modules():
        if isinstance(m, PackedBatchNorm2d):
            assert torch.equal(m.running_mean[[0, 2]], before[n][[0, 2]])
            assert not torch.equal(m.running_mean[1], before[n][1])


def test_it_is_an_ensemble_with_shared_parameters_and_one_state_dict():
    ens = models.create("packed:resnet20", members=6)
    base = models.create("resnet20")
    assert isinstance(ens, Ensemble) and isinstance(ens, models.Normalized)
    assert len(ens) == 6 and ens.num_classes == 10 and ens.arch == "packed:resnet20"
    assert ens.arch_kwargs["members"] == 6
    n = sum(p.numel() for p in ens.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    assert n_base < n < 1.2 * n_base  # six members for far less than six networks
    counts = ens.parameter_count()
    assert counts["total"] == n and counts["shared"] + 6 * counts["per_member"] == n
    # members are views: same parameters, no second copy in the state dict
    ids = {id(p) for p in ens.parameters()}
    for m in ens.members:
        assert {id(p) for p in m.parameters()} == ids
    assert all(k.startswith("net.") for k in ens.state_dict())
    assert len(ens.state_dict()) == len(base.state_dict()) + sum(
        2 for mod in ens.modules() if isinstance(mod, PackedConv2d | PackedLinear))  # + r and s per layer
    # layer names are the base architecture's (DVERGE's feature layers)
    names = dict(ens.named_modules())
    assert isinstance(names["net.layer2.1.conv1"], PackedConv2d) and isinstance(names["net.linear"], nn.Linear)
    assert "packed.net.layer2.1.act2" in dict(ens.members[0].named_modules())


def test_separate_heads_are_member_specific():
    ens = models.create("packed:small_cnn", members=3, in_chans=1, width=8, heads="separate", init="ones")
    assert isinstance(ens.net.head, MemberLinear) and ens.net.head.weight.shape == (3, 10, 16)
    with torch.no_grad():
        z = ens.eval().member_logits(torch.rand(2, 1, 8, 8))
    assert (z[0] - z[1]).abs().max() > 1e-4  # body identical (ones), heads differ


def test_checkpoint_round_trip_and_sha256(tmp_path):
    torch.manual_seed(0)
    ens = models.create("packed:resnet20", members=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ens.precision = "fp32"
    warm_bn(ens, (1, 3, 32, 32))
    path = models.save_checkpoint(ens, tmp_path / "p", dataset="cifar10", metrics={"parameters": 1})
    side = json.loads((tmp_path / "p.json").read_text())
    assert side["arch"] == "packed:resnet20" and side["arch_kwargs"]["members"] == 3
    loaded = models.load_checkpoint(tmp_path / "p")
    assert isinstance(loaded, PackedEnsemble) and len(loaded) == 3 and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    loaded.precision = "fp32"
    with torch.no_grad():
        torch.testing.assert_close(loaded.member_logits(x), ens.eval().member_logits(x), rtol=0, atol=0)
    assert loaded.normalization == ens.normalization
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        models.load_checkpoint(tmp_path / "p")


def test_bad_names_and_options_are_reported():
    with pytest.raises(RobustEnsError, match="architecture name"):
        models.create("packed:")
    with pytest.raises(RobustEnsError, match="members"):
        models.create("packed:small_cnn", members=0)
    with pytest.raises(RobustEnsError, match="init"):
        models.create("packed:small_cnn", init="zeros")
    with pytest.raises(RobustEnsError, match="heads"):
        models.create("packed:small_cnn", heads="many")
    with pytest.raises(RobustEnsError, match="unknown model"):
        models.create("packed:resnet21")
    assert {"packed:resnet20", "packed:small_cnn"} <= set(models.list_models("packed:*"))


def test_bf16_policy_runs_and_stays_close_to_fp32():
    torch.manual_seed(0)
    ens = models.create("packed:small_cnn", members=2, in_chans=1, width=8).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        ens.precision = "fp32"
        ref = ens.member_logits(x)
        ens.precision = "bf16"
        low = ens.member_logits(x)
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_member_mean_config_and_packed_recipe_table():
    sgd = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4)
    assert member_mean_config(sgd, 4).lr == pytest.approx(0.025)
    assert member_mean_config(sgd, 4).weight_decay == pytest.approx(2e-3)
    adam = TrainConfig(optimizer="adam", lr=2e-3, weight_decay=1e-4)
    assert member_mean_config(adam, 3).lr == 2e-3 and member_mean_config(adam, 3).weight_decay == pytest.approx(3e-4)
    rec = resolve_recipe("baseline", "small", packed=True)
    assert rec["mean_of_members"] is True
    assert not resolve_recipe("baseline", "small").get("mean_of_members")


def test_train_defense_packed_records_cost_and_reloads(tmp_path):
    rec = {"train": dict(epochs=2, batch_size=64, optimizer="adam", lr=1e-2, weight_decay=0.0, crop_padding=0,
                         flip=False, precision="fp32"), "train_n": 256, "eval_n": 100}
    kw = dict(arch="packed:small_cnn", n_members=3, dataset="digits", recipe=rec, progress=False,
              arch_kwargs={"width": 8}, out_dir=tmp_path / "run")
    ens = train_defense("baseline", **kw)
    assert isinstance(ens, PackedEnsemble) and len(ens) == 3
    side = json.loads((tmp_path / "run" / "packed.json").read_text())
    m = side["metrics"]
    assert m["parameters"] == sum(p.numel() for p in ens.parameters())
    assert m["train_seconds_per_epoch"] > 0 and m["inference_seconds_per_example"] > 0
    assert side["recipe"]["arch"] == "packed:small_cnn" and side["recipe"]["mean_of_members"] is False
    again = train_defense("baseline", **kw)  # finished: loaded, not retrained
    assert isinstance(again, PackedEnsemble)
    x = torch.rand(3, 1, 8, 8)
    again.precision = ens.precision = "fp32"
    with torch.no_grad():
        torch.testing.assert_close(again.member_logits(x), ens.member_logits(x))
    # a packed ensemble as init is copied, not trained in place
    before = {k: v.clone() for k, v in ens.state_dict().items()}
    train_defense("adp", arch="packed:small_cnn", n_members=3, dataset="digits", recipe=rec, progress=False,
                  init=ens, epochs=1)
    assert all(torch.equal(before[k], v) for k, v in ens.state_dict().items())


def test_unbatched_mode_gives_the_same_member_logits():
    torch.manual_seed(0)
    ens = models.create("packed:small_cnn", members=3, in_chans=1, width=8, seed=0).eval()
    ens.precision = "fp32"
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        a = ens.member_logits(x)
        ens.batched = False
        torch.testing.assert_close(ens.member_logits(x), a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ens(x), a.mean(0), rtol=1e-5, atol=1e-5)

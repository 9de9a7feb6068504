"""ViT-EnsembleAttack: augmentation hooks, the attack on the shared loop, Bayesian optimization."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.attacks import DI, MIFGSM, TI, AugmentParams, ViTEnsembleAttack, augmented, create_attack
from robust_ens.attacks.vit_augment import ViTAugmenter, find_sites
from robust_ens.errors import RobustEnsError

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 4}
FAMILIES: dict[str, dict[str, Any]] = {
    "timm:vit_tiny_patch16_224": TINY,
    "timm:deit_tiny_patch16_224": TINY,
    "timm:cait_xxs24_224": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 4,
                            "depth_token_only": 1, "init_values": 1.0},
    "timm:pit_ti_224": {"img_size": 32, "patch_size": 4, "stride": 2, "base_dims": [16, 16], "depth": [1, 1],
                        "heads": [2, 4]},
    "timm:visformer_tiny": {"img_size": 32, "init_channels": 8, "embed_dim": 64, "depth": (1, 1, 1), "num_heads": 2},
    "timm:swin_tiny_patch4_window7_224": {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 32,
                                          "depths": (1, 1), "num_heads": (2, 4)},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(name: str = "timm:vit_tiny_patch16_224", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create(name, num_classes=10, **FAMILIES[name]).eval()


@pytest.fixture(scope="module")
def ens() -> Ensemble:
    return Ensemble([tiny("timm:vit_tiny_patch16_224", 0), tiny("timm:deit_tiny_patch16_224", 1)], precision="fp32")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)


def _hook_free(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m) for m in model.modules()
    )


# --------------------------------------------------------------------------- augmentations


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("which", ["p_h", "s", "lam"])
def test_each_augmentation_changes_logits(name: str, which: str) -> None:
    m = tiny(name)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = m(x)
        value = {"p_h": 0.5, "s": 2.0, "lam": 0.5}[which]
        with augmented(m, {which: value}, torch.Generator().manual_seed(0)):
            out = m(x)
        after = m(x)
    assert find_sites(m).supported
    assert float((out - base).abs().max()) > 1e-6, f"{name}: {which} had no effect"
    assert torch.equal(after, base) and _hook_free(m)


def test_score_scaling_is_exact_on_fused_attention() -> None:
    """Scaling q inside timm's (fused) Attention equals softmax(s * q k^T * scale) v computed by hand."""
    from timm.layers import Attention

    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 5, 32)
    s = 1.7
    with torch.no_grad():
        b, n, c = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = s * (q @ k.transpose(-2, -1)) * attn.scale
        ref = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))
        with augmented(attn, AugmentParams(s=s)):
            got = attn(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_head_drop_and_mixing_semantics() -> None:
    """p_h close to 1 keeps exactly one head per module; lam=1 replaces features by a partner's."""
    from timm.layers import Attention

    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=4).eval()
    seen: list[torch.Tensor] = []
    with torch.no_grad(), augmented(attn, AugmentParams(p_h=0.999), torch.Generator().manual_seed(0)):
        h = attn.proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))  # runs after the augmenter's
        attn(torch.randn(2, 5, 32))
        h.remove()
    alive = (seen[0].reshape(2, 5, 4, 8).abs().sum((0, 1, 3)) > 0).sum()
    assert int(alive) == 1
    m = tiny()
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        with augmented(m, {"lam": 1.0}, torch.Generator().manual_seed(0)):
            single = m(x)  # a batch of one has no partner: unchanged
        assert torch.equal(single, m(x))


def test_unsupported_model_is_refused() -> None:
    cnn = models.create("small_cnn", in_chans=3)
    with pytest.raises(RobustEnsError, match="no attention module"):
        ViTAugmenter(cnn)
    with pytest.raises(RobustEnsError, match="no attention module"), augmented(cnn, {"p_h": 0.1}):
        pass


def test_params_validation() -> None:
    with pytest.raises(RobustEnsError, match="p_h"):
        AugmentParams(p_h=1.0)
    with pytest.raises(RobustEnsError, match="unknown"):
        ViTEnsembleAttack(params={"p": 0.1})
    with pytest.raises(RobustEnsError, match="step_scale"):
        ViTEnsembleAttack(step_scale=0.5)
    with pytest.raises(RobustEnsError, match="copies"):
        ViTEnsembleAttack(copies=0)


# --------------------------------------------------------------------------- the attack


def test_all_off_equals_mifgsm_on_the_ensemble(ens: Ensemble, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    off = ViTEnsembleAttack(eps=8 / 255, alpha=2 / 255, steps=4, copies=3, head_drop=False, score_scale=False,
                            mlp_mix=False, reweight=False, step_scale=1.0)
    ref = MIFGSM(eps=8 / 255, alpha=2 / 255, steps=4)
    a, b = off(ens, x, y, seed=0), ref(ens, x, y, seed=0)
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.cost.forward == b.cost.forward  # identical copies are not recomputed
    # with DI and TI too
    parts = [DI(), TI()]
    a = off.replace(transforms=parts)(ens, x, y, seed=3)
    b = ref.replace(transforms=parts)(ens, x, y, seed=3)
    assert torch.equal(a.x_adv, b.x_adv)


def test_attack_budget_cost_determinism_and_hooks_removed(ens: Ensemble, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    with torch.no_grad():
        before = ens.member_logits(x)
    fwd = [type(m).forward for m in ens.modules()]
    atk = ViTEnsembleAttack(steps=3, copies=2, params={"p_h": 0.3, "s": 1.3, "lam": 0.2})
    r1, r2 = atk(ens, x, y, seed=5), atk(ens, x, y, seed=5)
    r3 = atk(ens, x, y, seed=6)
    assert torch.equal(r1.x_adv, r2.x_adv) and not torch.equal(r1.x_adv, r3.x_adv)
    assert float((r1.x_adv - x).abs().max()) <= atk.eps + 1e-7
    assert r1.cost.forward == 3 * 2 * 2 and r1.cost.backward == 3 * 2 * 2
    assert atk.step_size == pytest.approx(2 * 1.6 / 255)
    with torch.no_grad():
        assert torch.equal(ens.member_logits(x), before)
    assert _hook_free(ens) and [type(m).forward for m in ens.modules()] == fwd
    # hooks are removed when the attack fails midway too
    with pytest.raises(RobustEnsError, match="entries"):
        atk.replace(params=[{"p_h": 0.1, "s": 1.0, "lam": 0.0}] * 3)(ens, x, y, seed=0)
    assert _hook_free(ens)


def test_components_change_the_result(ens: Ensemble, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    base = dict(steps=3, copies=1, params={"p_h": 0.3, "s": 1.5, "lam": 0.3}, head_drop=False, score_scale=False,
                mlp_mix=False, reweight=False, step_scale=1.0)
    ref = ViTEnsembleAttack(**base)(ens, x, y, seed=0).x_adv
    for change in ({"head_drop": True}, {"score_scale": True}, {"mlp_mix": True}, {"reweight": True},
                   {"step_scale": 2.0}, {"fusion": "loss"}, {"include_original": True, "head_drop": True}):
        out = ViTEnsembleAttack(**{**base, **change})(ens, x, y, seed=0).x_adv
        assert not torch.equal(out, ref), change


def test_reweighting_favours_members_not_yet_fooled() -> None:
    from robust_ens.attacks.base import AttackRun

    members = [tiny(seed=0), tiny(seed=1)]
    e = Ensemble(members, precision="fp32")
    y = torch.tensor([0, 1])
    run = AttackRun(e, y, False, torch.Generator(), 10, 2)
    lg_easy = F.one_hot(y, 10).float() * 10  # member 0 confident and right: low loss
    lg_fooled = F.one_hot((y + 1) % 10, 10).float() * 10  # member 1 already fooled: high loss
    atk = ViTEnsembleAttack(reweight_temp=1.0)
    w = atk._weights(run, [lg_easy.unsqueeze(0), lg_fooled.unsqueeze(0)], torch.zeros(2, 3, 32, 32))
    assert torch.all(w[0] > w[1]) and torch.allclose(w.sum(0), torch.ones(2))


def test_cnn_members_default_warn_explicit_error(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    cnn = models.create("small_cnn", in_chans=3).eval()
    mixed = Ensemble([tiny(), cnn], precision="fp32")
    with pytest.warns(UserWarning, match="member 1"):
        ViTEnsembleAttack(steps=1, copies=1)(mixed, x, y, seed=0)
    with pytest.raises(RobustEnsError, match="member 1"):
        ViTEnsembleAttack(steps=1, params={"p_h": 0.1, "s": 1.0, "lam": 0.1})(mixed, x, y, seed=0)
    assert _hook_free(mixed)
    ViTEnsembleAttack(steps=1, params=[{"p_h": 0.1, "s": 1.0, "lam": 0.1}, None])(mixed, x, y, seed=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precisions(precision: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    e = Ensemble([tiny(seed=0), tiny("timm:deit_tiny_patch16_224", seed=1)], precision=precision)
    atk = ViTEnsembleAttack(steps=2, copies=2, params={"p_h": 0.3, "s": 1.3, "lam": 0.2})
    r = atk(e, x, y, seed=0)
    assert r.x_adv.dtype == x.dtype and float((r.x_adv - x).abs().max()) <= atk.eps
    assert torch.isfinite(r.x_adv).all() and not torch.equal(r.x_adv, x)
    # a bf16 model (weights in bf16) attacked alone, with bf16 images
    m = tiny(seed=2).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    rb = atk(m, xb, y, seed=0)
    assert rb.x_adv.dtype == torch.bfloat16 and float((rb.x_adv.double() - xb.double()).abs().max()) <= atk.eps


def test_registered_config_is_json_and_replays(ens: Ensemble, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    atk = create_attack("vit_ensemble", steps=2, copies=1, params=[{"p_h": 0.2, "s": 0.9, "lam": 0.1}, None])
    cfg = json.loads(json.dumps(atk.config()))
    assert cfg["params"] == [{"p_h": 0.2, "s": 0.9, "lam": 0.1}, None]
    again = create_attack(**cfg)
    assert again == atk
    assert torch.equal(atk(ens, x, y, seed=1).x_adv, again(ens, x, y, seed=1).x_adv)
    d = ViTEnsembleAttack()
    assert d.eps == pytest.approx(16 / 255) and d.steps == 10 and d.alpha == pytest.approx(1.6 / 255)
    assert math.isclose(d.step_size, 3.2 / 255)


# --------------------------------------------------------------------------- Bayesian optimization


def test_bayesopt_end_to_end_reproducible(ens: Ensemble) -> None:
    pytest.importorskip("optuna")
    from robust_ens.attacks.bayesopt import optimize_augmentation

    val = tiny("timm:deit_tiny_patch16_224", seed=7)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = val(x).argmax(1)  # the validation model is right on every example
    atk = ViTEnsembleAttack(eps=4 / 255, steps=2, copies=1)
    r1 = optimize_augmentation(atk, ens, val, x, y, n_trials=3, seed=0)
    r2 = optimize_augmentation(atk, ens, val, x, y, n_trials=3, seed=0)
    assert r1.params == r2.params and r1.best_values == r2.best_values
    assert len(r1.params) == 2 and all(p is not None for p in r1.params)
    assert len(r1.trials) == 6 and r1.baseline is not None
    assert r1.attack.params == tuple(r1.params)
    json.loads(r1.to_json())
    r3 = optimize_augmentation(atk, ens, val, x, y, n_trials=2, seed=0, mode="joint")
    assert len(r3.best_values) == 1 and len(r3.params) == 2
    with pytest.raises(RobustEnsError, match="mode"):
        optimize_augmentation(atk, ens, val, x, y, mode="grid")


# --------------------------------------------------------------------------- the ImageNet path (224 px)

# A timm ViT-Tiny/16 at 224 px, cut to 2 narrow blocks so the test stays fast on one CPU thread.
VIT224: dict[str, Any] = {"depth": 2, "embed_dim": 64, "num_heads": 4}


def _image_tree(root: Any, n_per_class: int = 2) -> None:
    """An ImageNet-style tree ``root/<class>/*`` with PNG and JPEG files of uneven sizes."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, cls in enumerate(("n01440764", "n01443537")):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            h, w = 240 + 8 * i, 260 - 4 * c
            arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / cls / (f"{i}.png" if i % 2 else f"{i}.JPEG"), quality=90)


def test_imagenet_path_imagefolder_224_and_timm_weights_on_disk(tmp_path: Any, monkeypatch: Any) -> None:
    import timm
    from safetensors.torch import save_file

    from robust_ens import data

    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imagenet_mini"
    _image_tree(root)
    name = f"imagefolder:{root}"
    x, y = data.load(name, "test", size=224)  # a tree without split folders is one evaluation set
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1]
    info = data.info(name)
    assert info.num_classes == 2

    # "timm weights a user has on disk": a 1000-class checkpoint per member, loaded into a 2-class model.
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        src = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **VIT224)
        path = tmp_path / f"vit_tiny_{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
        with pytest.warns(UserWarning, match="classifier"):
            m = models.create("timm:vit_tiny_patch16_224", num_classes=info.num_classes, mean=info.mean,
                              std=info.std, weights_file=path, **VIT224)
        loaded = {k: v for k, v in m.state_dict().items() if ".blocks.0.attn.qkv.weight" in k}
        assert len(loaded) == 1 and torch.equal(next(iter(loaded.values())), src.state_dict()["blocks.0.attn.qkv.weight"])
        assert find_sites(m).supported
        members.append(m.eval())

    ens = Ensemble(members, precision="fp32")
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    xb, yb = x[:2], y[:2]
    atk = create_attack("vit_ensemble", eps=16 / 255, steps=2, copies=1,
                        params={"p_h": 0.25, "s": 1.2, "lam": 0.2})
    res = atk(ens, xb, yb, seed=0)
    adv = res.x_adv
    assert adv.shape == xb.shape and adv.dtype == xb.dtype
    assert float((adv - xb).abs().max()) <= 16 / 255 + 1e-6 and float((adv - xb).abs().max()) > 0
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert res.cost.forward == 4.0  # 2 steps x 2 members x 1 copy
    for m, state in zip(members, before, strict=True):
        assert _hook_free(m)
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


# --------------------------------------------------------------------------- the experiment script's pieces


def _experiment_module() -> Any:
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "vit_transfer.py"
    if not path.is_file():
        pytest.skip("experiments/vit_transfer.py is not part of this checkout")
    spec = importlib.util.spec_from_file_location("vit_transfer_experiment", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


def test_experiment_success_rate_split_and_rows() -> None:
    exp = _experiment_module()
    y = torch.tensor([0, 1, 2, 3, 4])
    clean = torch.tensor([0, 1, 2, 0, 0])  # right on the first three only
    adv = torch.tensor([1, 1, 0, 4, 0])  # two of those three now wrong; the others do not count
    assert exp.success_rate(clean, adv, y) == (pytest.approx(2 / 3), 2, 3)
    assert exp.success_rate(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                            torch.ones(2, dtype=torch.long)) == (0.0, 0, 0)
    with pytest.raises(ValueError):
        exp.success_rate(clean, adv[:2], y)

    labels = torch.arange(100) % 10
    ev, val = exp.eval_split(labels, 30, 20, seed=0)
    assert len(ev) == 30 and len(val) == 20 and not set(ev.tolist()) & set(val.tolist())
    ev2, val2 = exp.eval_split(labels, 30, 20, seed=0)
    assert torch.equal(ev, ev2) and torch.equal(val, val2)

    rows = exp.attack_rows(8 / 255, [{"p_h": 0.1, "s": 1.1, "lam": 0.1}] * 3, copies=2)
    full = rows["ViT-EnsembleAttack (full)"]
    assert full.alpha == pytest.approx(0.8 / 255) and full.steps == 10 and full.copies == 2
    assert rows["VEA w/o step enlargement"].step_scale == 1.0
    assert not rows["VEA w/o head drop"].head_drop and not rows["VEA w/o reweighting"].reweight
    assert not rows["VEA w/o score scale"].score_scale and not rows["VEA w/o MLP mix"].mlp_mix
    assert rows["MI-FGSM-Ens"].alpha == pytest.approx(0.8 / 255)

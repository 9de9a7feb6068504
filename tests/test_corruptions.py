"""Contract tests over every corruption of every preset, plus agreement with the reference peer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robust_ens.corruptions import CORRUPTIONS, corrupt, describe, list_corruptions, list_presets
from robust_ens.errors import RobustEnsError

SIZES = {"cifar10c": (32, 32), "imagenetc": (40, 56), "kittic": (48, 96)}
CASES = [(p, n) for p in ("cifar10c", "imagenetc", "kittic") for n in list_corruptions(p)]
# Non-monotone by their published parameters, not "fixed" here. cifar10c elastic and glass blur:
# reference doc, pitfall 8. saturate desaturates at s1-s2 and saturates at s3-s5; spatter switches
# from water to mud at s4; imagenetc glass blur s3 (3 passes) beats s4 (2 passes); snow s3 raises
# the flake threshold. imagecorruptions itself, measured with ssim_loss on the test batch:
# glass .353 .383 .639 .602 .651, saturate .092 .140 .077 .157 .226, snow .230 .363 .431 .378 .449;
# frost (s5 mixes less image, 0.6 vs 0.65, for little more frost) on 4 images of 96x320:
# .276 .339 .410 .547 .498.
NON_MONOTONE = {
    ("cifar10c", "elastic_transform"), ("cifar10c", "glass_blur"), ("cifar10c", "saturate"), ("cifar10c", "spatter"),
    *((p, n) for p in ("imagenetc", "kittic") for n in ("glass_blur", "saturate", "snow", "frost")
      if n in list_corruptions(p)),
}


def natural(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Image-like test batch on the uint8 grid (scikit-image's photographs, cropped; smooth synthetic
    images when scikit-image is missing)."""
    import torch.nn.functional as F

    try:
        import skimage.data as skd

        base = [skd.astronaut(), skd.chelsea(), skd.coffee(), skd.rocket()]
    except ImportError:
        gen = torch.Generator().manual_seed(seed)
        base = [(F.interpolate(torch.rand(1, 3, 12, 16, generator=gen), size=(300, 400), mode="bicubic",
                               align_corners=False).clamp(0, 1)[0].permute(1, 2, 0) * 255).byte().numpy()
                for _ in range(4)]
    out = []
    g = np.random.default_rng(seed)
    for i in range(n):
        img = torch.from_numpy(base[i % len(base)]).permute(2, 0, 1)[None].float() / 255
        img = F.interpolate(img, size=(h * 2, w * 2), mode="area")
        t, l_ = g.integers(0, h + 1), g.integers(0, w + 1)
        out.append(img[:, :, t : t + h, l_ : l_ + w])
    return (torch.cat(out) * 255).round() / 255


@pytest.fixture(scope="module")
def batches() -> dict[str, torch.Tensor]:
    return {p: natural(3, *hw) for p, hw in SIZES.items()}


@pytest.mark.parametrize("preset,name", CASES)
def test_contract(preset: str, name: str, batches: dict[str, torch.Tensor]) -> None:
    x = batches[preset]
    meta = describe(name)
    assert meta["source"] and meta["family"] in ("noise", "blur", "weather", "digital")
    ys = [corrupt(x, name, s, preset=preset, seed=3) for s in (1, 5)]
    for y in ys:
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.equal(torch.round(y * 255) / 255, y)  # on the uint8 grid
    # deterministic for a seed, and batch-invariant through `index`
    a = corrupt(x, name, 3, preset=preset, seed=7)
    assert torch.equal(a, corrupt(x, name, 3, preset=preset, seed=7))
    b = torch.cat([corrupt(x[:1], name, 3, preset=preset, seed=7),
                   corrupt(x[1:], name, 3, preset=preset, seed=7, index=torch.tensor([1, 2]))])
    assert torch.equal(a, b)
    assert torch.equal(a[2:], corrupt(x[2:], name, 3, preset=preset, seed=7, index=torch.tensor([2])))
    if meta["random"]:
        assert not torch.equal(a, corrupt(x, name, 3, preset=preset, seed=8))


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean ``1 - SSIM`` (7x7 uniform window, on luma), the distortion measure of the reference doc."""
    import torch.nn.functional as F

    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    a, b = (x * w).sum(1, keepdim=True).double(), (y * w).sum(1, keepdim=True).double()
    mu = lambda t: F.avg_pool2d(t, 7, 1)  # noqa: E731
    ma, mb = mu(a), mu(b)
    va, vb, cov = mu(a * a) - ma**2, mu(b * b) - mb**2, mu(a * b) - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return float(1 - s.mean())


@pytest.mark.parametrize("preset,name", [c for c in CASES if c not in NON_MONOTONE])
def test_monotone_in_severity(preset: str, name: str, batches: dict[str, torch.Tensor]) -> None:
    """Distortion (1 - SSIM, averaged over 3 images and 2 seeds) does not decrease with severity."""
    x = batches[preset]
    dist = [np.mean([ssim_loss(x, corrupt(x, name, s, preset=preset, seed=k)) for k in (1, 2)]) for s in range(1, 6)]
    for lo, hi in zip(dist, dist[1:], strict=False):
        assert hi >= lo * 0.95 - 2e-3, (name, [round(d, 4) for d in dist])
    assert dist[-1] > dist[0], (name, dist)


@pytest.mark.parametrize("preset,name", sorted(NON_MONOTONE - {("cifar10c", "elastic_transform")}))
def test_non_monotone_ones_still_grow_overall(preset: str, name: str, batches: dict[str, torch.Tensor]) -> None:
    x = batches[preset]
    d1, d5 = (np.mean([ssim_loss(x, corrupt(x, name, s, preset=preset, seed=k)) for k in (1, 2)]) for s in (1, 5))
    assert d5 > d1, (name, d1, d5)


@pytest.mark.parametrize("name", ["glass_blur", "saturate", "snow"])
def test_severity_curve_follows_reference(name: str) -> None:
    """Where the parameters make distortion non-monotone, ours is non-monotone like the reference."""
    ic = pytest.importorskip("imagecorruptions")
    x = natural(4, 64, 160, seed=3)
    np.random.seed(0)
    for s in range(1, 6):
        ref = torch.stack([
            torch.from_numpy(ic.corrupt((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), severity=s,
                                        corruption_name=name).astype(np.float32) / 255).permute(2, 0, 1)
            for im in x
        ])
        ours, theirs = ssim_loss(x, corrupt(x, name, s, preset="imagenetc")), ssim_loss(x, ref)
        assert abs(ours - theirs) <= 0.06, (name, s, ours, theirs)


def test_grey_and_half_precision() -> None:
    x = natural(2, 32, 32).mean(1, keepdim=True)
    y = corrupt(x, "fog", 2)
    assert y.shape == x.shape
    xh = natural(2, 32, 32).to(torch.bfloat16)
    assert corrupt(xh, "contrast", 2).dtype == torch.bfloat16


def test_errors() -> None:
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(RobustEnsError, match="not in preset"):
        corrupt(x, "dark", 1, preset="cifar10c")
    with pytest.raises(RobustEnsError, match="unknown preset"):
        corrupt(x, "fog", 1, preset="cifar100c")
    with pytest.raises(RobustEnsError, match="severity"):
        corrupt(x, "fog", 6)
    with pytest.raises(RobustEnsError, match="at least 32x32"):
        corrupt(torch.rand(1, 3, 16, 16), "fog", 1)
    with pytest.raises(RobustEnsError, match="float tensor"):
        corrupt((x * 255).byte(), "fog", 1)
    with pytest.raises(RobustEnsError, match=r"\[0, 1\]"):
        corrupt(x * 2, "fog", 1)
    with pytest.raises(RobustEnsError, match="index"):
        corrupt(x, "fog", 1, index=torch.arange(3))
    assert list_presets() == ["cifar10c", "imagenetc", "kittic"]
    assert len(list_corruptions("cifar10c")) == 19 and len(list_corruptions("kittic")) == 18
    assert set(list_corruptions("kittic")) <= set(CORRUPTIONS.list())


def test_glass_shuffle_matches_sequential_copy() -> None:
    """Pointer doubling reproduces the reference's sequential one-way copies exactly (same offsets)."""
    from robust_ens.corruptions.blur import glass_shuffle

    g = np.random.default_rng(0)
    for h, w, delta in [(12, 15, 1), (20, 17, 2), (24, 30, 4)]:
        x = g.integers(0, 256, (h, w, 3)).astype(np.float64)
        hr, wr = h - 2 * delta, w - 2 * delta
        dy = g.integers(-delta, delta, (hr, wr))
        dx = g.integers(-delta, delta, (hr, wr))
        ref = x.copy()
        for r in range(h - delta, delta, -1):  # the reference's visiting order
            for c in range(w - delta, delta, -1):
                i, j = r - delta - 1, c - delta - 1
                ref[r, c] = ref[r + dy[i, j], c + dx[i, j]]
        xt = torch.from_numpy(x).permute(2, 0, 1)[None]
        ours = glass_shuffle(xt, delta, torch.from_numpy(dy)[None], torch.from_numpy(dx)[None])
        np.testing.assert_array_equal(ours[0].permute(1, 2, 0).numpy(), ref)


def test_color_quant_matches_pillow_posterize() -> None:
    from PIL import Image, ImageOps

    x = natural(1, 32, 48)
    arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for s, bits in enumerate([5, 4, 3, 2, 1], start=1):
        ref = np.asarray(ImageOps.posterize(Image.fromarray(arr), bits)).astype(np.float64)
        ours = corrupt(x, "color_quant", s, preset="kittic")[0].permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(ours, ref, atol=1e-3)


# ------------------------------------------------------------------------ reference peer agreement

# Deterministic corruptions vs imagecorruptions (imagenetc parameters), in 8-bit levels:
# (mean |diff| bound, max |diff| bound). JPEG: torch codec vs libjpeg (float DCT, rounding).
TOLERANCE = {
    "gaussian_blur": (0.05, 1), "defocus_blur": (0.05, 1), "zoom_blur": (0.05, 1), "contrast": (0.01, 1),
    "brightness": (0.1, 1), "saturate": (0.2, 1), "pixelate": (0.01, 1), "jpeg_compression": (1.0, 60),
}


@pytest.mark.parametrize("name", sorted(TOLERANCE))
@pytest.mark.parametrize("hw", [(96, 320), (40, 48)])
def test_deterministic_agree_with_reference(name: str, hw: tuple[int, int]) -> None:
    ic = pytest.importorskip("imagecorruptions")
    x = natural(1, *hw, seed=2)
    img = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mean_tol, max_tol = TOLERANCE[name]
    if name == "jpeg_compression" and hw == (40, 48):
        mean_tol = 2.5  # edge blocks dominate tiny images
    for s in range(1, 6):
        ref = ic.corrupt(img, severity=s, corruption_name=name).astype(np.float64)
        ours = (corrupt(x, name, s, preset="imagenetc")[0].permute(1, 2, 0).numpy() * 255).round()
        d = np.abs(ref - ours)
        assert d.mean() <= mean_tol and d.max() <= max_tol, (name, s, d.mean(), d.max())


def test_motion_blur_kernel_agrees_with_reference() -> None:
    pytest.importorskip("imagecorruptions")
    from imagecorruptions.corruptions import _motion_blur

    from robust_ens.corruptions import _ops

    x = natural(1, 48, 64, seed=4)
    img = x[0].permute(1, 2, 0).numpy().astype(np.float64) * 255
    for angle in (-44.0, -10.5, 0.0, 17.0, 44.9):
        ref = np.clip(_motion_blur(img, radius=15, sigma=5, angle=angle), 0, 255)
        ours = _ops.motion_blur(x.double(), 15, 5.0, torch.tensor([angle])).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_random_corruptions_match_reference_statistics() -> None:
    """Random corruptions: mean absolute change within 15% of the reference's (same image)."""
    ic = pytest.importorskip("imagecorruptions")
    x = natural(1, 96, 128, seed=5)
    img = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.random.seed(0)
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "elastic_transform"):
        for s in (1, 3, 5):
            ref = np.mean([np.abs(ic.corrupt(img, severity=s, corruption_name=name).astype(float) - img).mean()
                           for _ in range(3)])
            ours = np.mean([float((corrupt(x, name, s, preset="imagenetc", seed=k) - x).abs().mean()) * 255
                            for k in range(3)])
            assert abs(ours - ref) <= 0.15 * ref + 0.3, (name, s, ours, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_same_contract() -> None:
    x = natural(3, 48, 64).cuda()
    for name in list_corruptions("kittic"):
        y = corrupt(x, name, 3, preset="kittic")
        assert y.is_cuda and y.shape == x.shape
        b = torch.cat([corrupt(x[:1], name, 3, preset="kittic"),
                       corrupt(x[1:], name, 3, preset="kittic", index=torch.tensor([1, 2]))])
        assert torch.equal(y, b)


# ----------------------------------------------------------------------------- fast exact kernels


@pytest.mark.parametrize("rate", [0.0, 0.05, 1.3, 12.0, 48.0, 500.0])
def test_table_poisson_sampler_is_poisson(rate: float) -> None:
    """The inverse-CDF table sampler (shot/iso noise, dark) against the Poisson pmf (chi-square)."""
    from scipy import stats

    from robust_ens.corruptions._rng import poisson_from_uniform

    n = 400_000
    u = torch.rand(2, n // 2, generator=torch.Generator().manual_seed(int(rate * 10)))
    level = torch.zeros(2, n // 2, dtype=torch.int32)
    level[1] = 1
    rates = torch.tensor([[rate, 3.0], [7.0, rate]])  # per-example rows: example 1 uses level 1
    k = poisson_from_uniform(u, level, rates).flatten().long().numpy()
    vals, cnt = np.unique(k, return_counts=True)
    if rate == 0:
        assert vals.tolist() == [0]
        return
    expected = stats.poisson.pmf(vals, rate) * n
    keep = expected > 20
    chi2 = float(((cnt[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert stats.chi2.sf(chi2, max(int(keep.sum()) - 1, 1)) > 1e-4, (rate, chi2)
    assert abs(k.mean() - rate) < 5 * math.sqrt(rate / n) + 1e-9


def test_shot_noise_off_grid_input_uses_exact_poisson() -> None:
    """Inputs off the uint8 grid fall back to torch.poisson (same distribution family, no table)."""
    x = natural(2, 32, 32) * 0.9 + 0.0005  # not on the uint8 levels
    y = corrupt(x, "shot_noise", 3)
    assert y.shape == x.shape and float((y - x).abs().mean()) > 0


@pytest.mark.parametrize("radius,alias", [(3, 0.1), (4, 0.5), (6, 0.5), (5.5, 0.2)])
def test_defocus_row_runs_equal_kernel_correlation(radius: float, alias: float) -> None:
    from robust_ens.corruptions import _ops, blur

    x = natural(2, 40, 56).double()
    ref = _ops.filter2d(x, torch.from_numpy(blur.disk_kernel(radius, alias)).double(), "reflect101")
    assert float((blur._disk_runs(x, radius, alias) - ref).abs().max()) < 1e-6


def test_frost_bicubic_matrices_equal_interpolate() -> None:
    import torch.nn.functional as F

    from robust_ens.corruptions.weather import _bicubic_matrix

    g = torch.rand(3, 1, 30, 50, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(g, size=(290, 490), mode="bicubic", align_corners=True)[:, :, :192, :400]
    cpu = torch.device("cpu")
    ours = _bicubic_matrix(30, 290, 192, torch.float32, cpu) @ (g @ _bicubic_matrix(50, 490, 400, torch.float32, cpu).t())
    assert float((ours - ref).abs().max()) < 1e-5


def test_cpu_chunking_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    """corrupt() works in cache-sized chunks on CPU; the result equals one whole-batch call."""
    import robust_ens.corruptions as rc

    x = natural(5, 48, 96)
    names = ["frost", "glass_blur", "shot_noise", "dark", "fog", "contrast", "elastic_transform", "jpeg_compression"]
    whole = {nm: corrupt(x, nm, 3, preset="kittic", seed=1) for nm in names}
    monkeypatch.setattr(rc, "_CPU_CHUNK_ELEMENTS", 2 * 3 * 48 * 96)  # chunks of 2 examples
    for nm in names:
        assert torch.equal(corrupt(x, nm, 3, preset="kittic", seed=1), whole[nm]), nm

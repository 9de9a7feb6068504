"""Compiled kernels (numba): glass blur and the uint8 truncation are bit-identical to the torch code
they replace (a frozen copy below, and sha256 of its outputs), and the dispatch falls back cleanly."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robust_ens.corruptions import _compiled, corrupt
from robust_ens.corruptions._base import Ctx
from robust_ens.corruptions._rng import ExampleRNG
from robust_ens.corruptions.blur import glass_blur, glass_blur_torch
from robust_ens.corruptions.presets import PRESETS

# ---------------------------------------------------------------------------------------------
# The oracle: glass blur exactly as it was before the compiled kernel (commit da68768), with its
# helpers from _ops copied too, so later changes to _ops cannot move the reference.


def _oracle_taps(sigma: float) -> tuple[float, ...]:
    if sigma <= 0:
        return (1.0,)
    radius = int(4.0 * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return tuple((k / k.sum()).tolist())


def _oracle_conv1d(x: torch.Tensor, k: tuple[float, ...], dim: int) -> torch.Tensor:
    if len(k) == 1:
        return x * k[0]
    r = (len(k) - 1) // 2
    n = x.shape[dim]
    xp = F.pad(x, (r, r, 0, 0) if dim == 3 else (0, 0, r, r), mode="replicate")
    out = xp.narrow(dim, 0, n) * k[0]
    for i in range(1, len(k)):
        out.add_(xp.narrow(dim, i, n), alpha=k[i])
    return out


def _oracle_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return _oracle_conv1d(_oracle_conv1d(x, _oracle_taps(sigma), 2), _oracle_taps(sigma), 3)


def _oracle_quantize(x: torch.Tensor) -> torch.Tensor:
    y = torch.add(x.new_tensor(1e-3), x, alpha=255.0)
    return y.clamp_(1e-3, 255.0 + 1e-3).floor_().div_(255.0)


def _oracle_source_map(n: int, h: int, w: int, delta: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    dev = dy.device
    hr, wr = dy.shape[1], dy.shape[2]
    itype = torch.int32 if n * h * w < 2**31 - 1 else torch.int64
    src = torch.arange(n * h * w, device=dev, dtype=itype)
    if hr <= 0 or wr <= 0:
        return src
    dy, dx = dy.to(itype), dx.to(itype)
    off = dy * w + dx
    ri = torch.arange(hr, device=dev, dtype=itype).view(1, hr, 1)
    ci = torch.arange(wr, device=dev, dtype=itype).view(1, 1, wr)
    rr, cc = dy + ri, dx + ci
    later = (rr >= 0) & (rr < hr) & (cc >= 0) & (cc < wr) & (off > 0)
    region = src.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr]
    q = off.add_(region)
    first = src.clone()
    first.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr] = q
    link = src.clone()
    link.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr] = torch.where(later, q, region)
    nonterm = torch.zeros(n * h * w, dtype=torch.bool, device=dev)
    nonterm.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr] = later
    active = nonterm.nonzero().squeeze(1).to(itype)
    while active.numel():
        nxt = link.index_select(0, link.index_select(0, active))
        link[active] = nxt
        active = active[nonterm.index_select(0, nxt)]
    return first.index_select(0, link)


def oracle_glass_blur(x: torch.Tensor, p: tuple[float, int, int], ctx: Ctx) -> torch.Tensor:
    """The pre-kernel ``glass_blur``, verbatim."""
    sigma, delta, iters = float(p[0]), int(p[1]), int(p[2])
    n, c, h, w = x.shape
    y = _oracle_quantize(_oracle_blur(x, sigma))
    hr, wr = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    src: torch.Tensor | None = None
    for it in range(iters):
        a = ctx.rng.uniform(f"shuffle{it}", (hr, wr)).mul_(2 * delta)
        ay = a.floor()
        dx = a.sub_(ay).mul_(2 * delta).floor_().clamp_(max=2 * delta - 1).to(torch.int32).sub_(delta)
        dy = ay.clamp_(max=2 * delta - 1).to(torch.int32).sub_(delta)
        step = _oracle_source_map(n, h, w, delta, dy, dx)
        src = step if src is None else src.index_select(0, step)
    if src is not None:
        planes = y.transpose(0, 1).reshape(c, n * h * w)
        y = planes.index_select(1, src).view(c, n, h, w).transpose(0, 1).contiguous()
    return _oracle_blur(y, sigma).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------


def _batch(n: int, c: int, h: int, w: int, seed: int, grid: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    return (x * 255).floor() / 255 if grid else x


def _ctx(n: int, seed: int = 3, start: int = 0) -> Ctx:
    rng = ExampleRNG(seed, torch.arange(start, start + n), "glass_blur", 2, torch.device("cpu"))
    return Ctx(preset="kittic", severity=2, rng=rng)


PARAMS = sorted({tuple(p) for preset in PRESETS.values() for p in preset["glass_blur"]}) + [(2.5, 3, 3), (0.0, 2, 1)]
SHAPES = [(1, 3, 32, 32), (2, 3, 37, 45), (3, 3, 33, 70), (1, 3, 48, 96), (2, 1, 40, 41), (1, 2, 36, 35)]


def kernel_ready() -> bool:
    return _compiled.kernels() is not None and _compiled.kernel_agrees()


@pytest.fixture
def fresh_probe():
    """Clear the once-per-process kernel check before and after a test that fakes its inputs."""
    _compiled.kernel_agrees.cache_clear()
    yield
    _compiled.kernel_agrees.cache_clear()


@pytest.mark.parametrize("shape", SHAPES)
def test_glass_blur_equals_frozen_oracle(shape: tuple[int, int, int, int]) -> None:
    """Both paths (and the dispatcher) give the old implementation's output, bit for bit."""
    x = _batch(*shape, seed=sum(shape))
    for p in PARAMS:
        want = oracle_glass_blur(x, p, _ctx(shape[0]))
        assert torch.equal(glass_blur_torch(x, p, _ctx(shape[0])), want), p
        assert torch.equal(glass_blur(x, p, _ctx(shape[0])), want), p
        if kernel_ready():
            got = _compiled.glass_blur_kernel(x, p, _ctx(shape[0]))
            assert torch.equal(got, want), p


@pytest.mark.skipif(not kernel_ready(), reason="numba missing, or the kernel disagrees with torch here")
def test_kernel_matches_torch_path_off_grid_and_tiny() -> None:
    """Off-grid values and a NaN, images smaller than the displacement (no visited pixels), one channel."""
    for shape, p in [((2, 3, 50, 70), (1.5, 4, 2)), ((1, 3, 7, 9), (0.7, 4, 2)), ((1, 3, 9, 64), (1.1, 3, 2)),
                     ((2, 1, 20, 23), (1.0, 2, 3)), ((1, 3, 8, 8), (3.0, 1, 1))]:
        x = _batch(*shape, seed=1, grid=False)
        x[0, 0, 3, 4] = float("nan")  # NaN travels like torch's (clamp keeps it)
        want = glass_blur_torch(x, p, _ctx(shape[0]))
        got = _compiled.glass_blur_kernel(x, p, _ctx(shape[0]))
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=str((shape, p)))


# sha256 (first 32 hex digits) of corrupt(..., "glass_blur") outputs computed with the code before the
# kernel (commit da68768), one torch thread: (preset, shape, severity, first index, digest).
RECORDED = [
    ("cifar10c", (8, 3, 32, 32), 1, None, "d4e99deee918ecbde5728722b15ea6dd"),
    ("cifar10c", (8, 3, 32, 32), 2, None, "f9472a93577da465b4915963b3df07d3"),
    ("cifar10c", (8, 3, 32, 32), 3, None, "fb17500471366fa41d24d1008959df90"),
    ("cifar10c", (8, 3, 32, 32), 4, None, "3fd231fef63f2b321df0fff31b59ccda"),
    ("cifar10c", (8, 3, 32, 32), 5, None, "db60aaa37be9d71f32f2bf9c9b9e9fa7"),
    ("imagenetc", (3, 3, 40, 56), 1, None, "a24622911de26cfe6828a8d5462ff759"),
    ("imagenetc", (3, 3, 40, 56), 2, None, "6d60d0f8fd4c45a5a24b670cc12871f0"),
    ("imagenetc", (3, 3, 40, 56), 3, None, "0a2905ec381694619507cf19907a681e"),
    ("imagenetc", (3, 3, 40, 56), 4, None, "8e031774dc5e4391a11c0274beda9b3c"),
    ("imagenetc", (3, 3, 40, 56), 5, None, "5a4690ed29d064de501612d8887d97e9"),
    ("kittic", (2, 3, 48, 96), 1, None, "c165574943d52d1e3f52c731da94df4f"),
    ("kittic", (2, 3, 48, 96), 2, None, "a42fc4750d4fd782dafa875a13a6e21a"),
    ("kittic", (2, 3, 48, 96), 3, None, "469df8c1179061923ae6a4fb10c580a4"),
    ("kittic", (2, 3, 48, 96), 4, None, "7180e9200cab449f9c0386c2edc618e2"),
    ("kittic", (2, 3, 48, 96), 5, None, "c67d869bfec8c3161d0c763c90cede11"),
    ("kittic", (4, 3, 192, 640), 2, None, "404cf27f56979eeb578bd8f18dae35e4"),
    ("kittic", (2, 1, 64, 72), 3, None, "64bac7a8ef7a7652c1caabc49f789efa"),
    ("imagenetc", (3, 3, 33, 47), 4, 100, "04d383ce07e1247302acf8fd25c71a6a"),
]


def _fma_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.skipif(not _fma_x86(), reason="digests recorded where ATen fuses multiply-adds (x86 AVX2/AVX-512)")
@pytest.mark.parametrize("numba", ["1", "0"])
def test_recorded_digests(numba: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """corrupt() reproduces digests recorded before the kernel existed (both paths). A failure after a
    torch upgrade alone means torch's random stream or arithmetic moved, not this code."""
    monkeypatch.setenv(_compiled.ENV_NUMBA, numba)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for preset, shape, s, start, digest in RECORDED:
            g = torch.Generator().manual_seed(sum(shape) + s)
            x = (torch.rand(*shape, generator=g) * 255).floor() / 255
            idx = None if start is None else torch.arange(start, start + shape[0])
            y = corrupt(x, "glass_blur", s, preset=preset, seed=7, index=idx)
            assert hashlib.sha256(y.numpy().tobytes()).hexdigest()[:32] == digest, (preset, shape, s)
    finally:
        torch.set_num_threads(before)


def test_quantize_kernel_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """_ops.quantize_u8 (the kernel on contiguous float32 CPU tensors) equals the frozen torch code,
    including values off [0, 1], NaN and infinities; small, strided or float64 tensors take torch."""
    from robust_ens.corruptions import _ops

    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.linspace(-0.2, 1.2, 9001), torch.arange(256) / 255.0, torch.rand(70000, generator=g),
                   torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1.0 + 1e-7])]).view(1, 1, 1, -1)
    want = _oracle_quantize(x)
    for case in (x, x.view(-1)[:5000], x.view(-1)[:-1:2], x.double()):
        got = _ops.quantize_u8(case)
        ref = _oracle_quantize(case)
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    if kernel_ready() and _compiled.enabled():
        calls: list[int] = []
        real = _compiled.quantize_u8

        def spy(t: torch.Tensor) -> torch.Tensor:
            calls.append(t.numel())
            return real(t)

        monkeypatch.setattr(_compiled, "quantize_u8", spy)
        torch.testing.assert_close(_ops.quantize_u8(x), want, rtol=0, atol=0, equal_nan=True)
        assert calls == [x.numel()]


def test_env_switch_selects_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _batch(2, 3, 40, 48, seed=5)
    want = corrupt(x, "glass_blur", 3, preset="kittic")
    monkeypatch.setenv(_compiled.ENV_NUMBA, "0")
    assert not _compiled.usable(x)

    def boom(*a: object, **k: object) -> torch.Tensor:
        raise AssertionError("kernel used although ROBUST_ENS_NUMBA=0")

    monkeypatch.setattr(_compiled, "glass_blur_kernel", boom)
    assert torch.equal(corrupt(x, "glass_blur", 3, preset="kittic"), want)


def test_without_numba_torch_path(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    x = _batch(2, 3, 40, 48, seed=6)
    want = corrupt(x, "glass_blur", 4, preset="imagenetc")
    monkeypatch.setattr(_compiled, "kernels", lambda: None)
    _compiled.kernel_agrees.cache_clear()
    assert not _compiled.usable(x)
    assert torch.equal(corrupt(x, "glass_blur", 4, preset="imagenetc"), want)


def test_numba_not_importable_subprocess() -> None:
    """With numba unimportable the module still imports and glass blur runs the torch path."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch, warnings; warnings.simplefilter('error')\n"
        "from robust_ens.corruptions import _compiled, corrupt\n"
        "x = torch.rand(2, 3, 32, 40)\n"
        "assert _compiled.kernels() is None and not _compiled.usable(x)\n"
        "y = corrupt(x, 'glass_blur', 3, preset='kittic')\n"
        "assert 'numba' not in sys.modules or sys.modules['numba'] is None\n"
        "print(y.shape[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


def test_disagreeing_kernel_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    if _compiled.kernels() is None:
        pytest.skip("numba is not installed")
    real = _compiled.glass_blur_kernel
    monkeypatch.setattr(_compiled, "glass_blur_kernel",
                        lambda x, *a: real(x, *a).add_(1.0 / 255).clamp_(0, 1))
    with pytest.warns(RuntimeWarning, match="differ from the torch paths"):
        assert not _compiled.kernel_agrees()
    x = _batch(1, 3, 32, 40, seed=8)
    assert not _compiled.usable(x)
    assert torch.equal(glass_blur(x, (0.9, 2, 1), _ctx(1)), glass_blur_torch(x, (0.9, 2, 1), _ctx(1)))


def test_failing_kernel_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    if _compiled.kernels() is None:
        pytest.skip("numba is not installed")

    def broken(*a: object) -> torch.Tensor:
        raise RuntimeError("no fma on this llvmlite")

    monkeypatch.setattr(_compiled, "glass_blur_kernel", broken)
    with pytest.warns(RuntimeWarning, match="cannot be compiled"):
        assert not _compiled.kernel_agrees()
    x = _batch(1, 3, 32, 40, seed=8)
    assert torch.equal(corrupt(x, "glass_blur", 1, preset="kittic"), oracle_glass_blur_corrupt(x, 1))


def oracle_glass_blur_corrupt(x: torch.Tensor, s: int) -> torch.Tensor:
    """What corrupt(x, "glass_blur", s, preset="kittic", seed=0) returned before the kernel."""
    rng = ExampleRNG(0, torch.arange(len(x)), "glass_blur", s, torch.device("cpu"))
    out = oracle_glass_blur(x, PRESETS["kittic"]["glass_blur"][s - 1], Ctx(preset="kittic", severity=s, rng=rng))
    return _oracle_quantize(out)


def test_other_dtypes_and_devices_take_torch_path() -> None:
    assert not _compiled.usable(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    assert not _compiled.usable(torch.zeros(1, 3, 32, 32, device="meta"))
    x = _batch(2, 3, 32, 36, seed=9).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = glass_blur(x, (0.7, 1, 2), _ctx(2))
    assert y.dtype == torch.float64 and torch.equal(y, oracle_glass_blur(x, (0.7, 1, 2), _ctx(2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_torch_path() -> None:
    x = _batch(2, 3, 48, 64, seed=10).cuda()
    assert not _compiled.usable(x)
    y = corrupt(x, "glass_blur", 2, preset="kittic")
    assert y.is_cuda and math.isfinite(float(y.sum()))

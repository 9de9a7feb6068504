from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_ens import data
from robust_ens.errors import DatasetNotFoundError, RobustEnsError

from .conftest import require_cifar10


def test_digits_shapes_ranges_and_fixed_split():
    x, y = data.load("digits", "train")
    xt, yt = data.load("digits", "test")
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(x) + len(xt) == 1797 and len(xt) == data.DIGITS_TEST
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) == 1.0
    assert set(yt.tolist()) == set(range(10))


def test_subset_is_deterministic_and_seed_dependent():
    a, ya = data.load("digits", n=50, seed=3)
    b, yb = data.load("digits", n=50, seed=3)
    c, _ = data.load("digits", n=50, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)


def test_balanced_subset_takes_equal_counts_per_class():
    _, y = data.load("digits", n=100, seed=0, balanced=True)
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    with pytest.raises(RobustEnsError, match="divisible"):
        data.load("digits", n=55, balanced=True)


def test_bad_arguments_are_refused_with_the_argument_named():
    with pytest.raises(RobustEnsError, match="n=99999 exceeds"):
        data.load("digits", n=99999)
    with pytest.raises(RobustEnsError, match="split must be"):
        data.load("digits", split="dev")
    with pytest.raises(RobustEnsError, match="unknown dataset 'mnist'"):
        data.load("mnist")


def test_missing_cifar_error_names_every_place_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError) as info:
        data.load("cifar10", root=tmp_path / "mine")
    msg = str(info.value)
    for place in (tmp_path / "mine", tmp_path / "nowhere" / "cifar10-jpeg" / "test", tmp_path / "cache" / "data"):
        assert str(place) in msg
    assert "ROBUST_ENS_DATA" in msg and "download=True" in msg


def _write_tree(root: Path, classes=("a", "b", "c"), per_class=4, size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")


def test_imagefolder_resizes_crops_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    _write_tree(tmp_path / "set")
    spec = f"imagefolder:{tmp_path / 'set'}"
    x, y = data.load(spec, split="test", size=24)  # "test" falls back to val/
    assert x.shape == (12, 3, 24, 24) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.info(spec).num_classes == 3
    cached = list((tmp_path / "cache").glob("imagefolder-*.npz"))
    assert len(cached) == 1
    # The cache is reused: a second load must not decode again.
    import robust_ens.data as mod

    monkeypatch.setattr(mod, "_decode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded twice")))
    x2, _ = data.load(spec, split="test", size=24)
    assert torch.equal(x, x2)


def test_cifar10_loads_from_shared_copy_with_cache():
    require_cifar10()
    x, y = data.load("cifar10", "test", n=200, seed=1, balanced=True)
    assert x.shape == (200, 3, 32, 32) and torch.bincount(y).tolist() == [20] * 10
    assert list(data.cache_dir().glob("cifar10-test-*.npz")), "the decoded split must be cached"
    x2, y2 = data.load("cifar10", "test", n=200, seed=1, balanced=True)
    assert torch.equal(x, x2) and torch.equal(y, y2)

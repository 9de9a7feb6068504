"""Splits never leak: a split a dataset lacks is an error, train and test never alias, data roots resolve once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_ens import data
from robust_ens.cli import main
from robust_ens.errors import RobustEnsError
from tests.cli_helpers import one_error_line


def _tree(root: Path, splits: tuple[str, ...], per_class: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in ("a", "b"):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")




# --------------------------------------------------------------------------- splits


def test_a_split_the_dataset_lacks_is_an_error_listing_its_splits():
    assert data.splits("digits") == ("train", "test") == data.splits("cifar10")
    with pytest.raises(RobustEnsError, match=r"no split 'val'.*train, test"):
        data.load("digits", split="val")
    with pytest.raises(RobustEnsError, match=r"no split 'val'.*train, test"):
        data.load_uint8("cifar10", "val")  # refused before any search for files


def test_digits_train_and_test_are_disjoint():
    xtr, _ = data.load_uint8("digits", "train")
    xte, _ = data.load_uint8("digits", "test")
    assert len(xtr) + len(xte) == 1797
    train_rows = {bytes(r) for r in xtr.flatten(1).numpy()}
    overlap = sum(bytes(r) in train_rows for r in xte.flatten(1).numpy())
    assert overlap < 10  # digits has a few duplicate images, but the split is by index, not by pixels
    assert not torch.equal(xtr[: len(xte)], xte)


def test_imagefolder_without_split_folders_is_an_evaluation_set_only(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    _tree(tmp_path / "flat", ("",))
    name = f"imagefolder:{tmp_path / 'flat'}"
    assert data.splits(name) == ("test",)
    assert data.load(name, "test", size=8)[0].shape == (4, 3, 8, 8)
    with pytest.raises(RobustEnsError, match=r"no split 'train'.*no split folders.*splits are: test"):
        data.load(name, "train", size=8)


def test_imagefolder_splits_never_alias(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    # ImageNet's layout: val/ is the test split, and there is no separate val.
    _tree(tmp_path / "inet", ("train", "val"))
    name = f"imagefolder:{tmp_path / 'inet'}"
    assert data.splits(name) == ("train", "test")
    with pytest.raises(RobustEnsError, match="val/ folder serves as the test split"):
        data.load(name, "val", size=8)
    # All three folders: three disjoint splits.
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        _tree(tmp_path / "three", (split,), seed=seed)
    name3 = f"imagefolder:{tmp_path / 'three'}"
    assert data.splits(name3) == ("train", "test", "val")
    loaded = {s: data.load_uint8(name3, s, size=8)[0] for s in ("train", "test", "val")}
    rows = {s: {bytes(r) for r in x.flatten(1).numpy()} for s, x in loaded.items()}
    assert not rows["val"] & rows["train"] and not rows["val"] & rows["test"] and not rows["train"] & rows["test"]
    # A val/ that is the test folder (a symlink) is refused, not served twice.
    _tree(tmp_path / "linked", ("train", "test"))
    os.symlink(tmp_path / "linked" / "test", tmp_path / "linked" / "val")
    with pytest.raises(RobustEnsError, match="same folder"):
        data.splits(f"imagefolder:{tmp_path / 'linked'}")


def test_cli_refuses_a_validation_split_that_would_be_training_data(tmp_path, capsys):
    rc = main(["--quiet", "corruptions", "evaluate", "--model", "zoo:digits_small_cnn_s0", "--data", "digits",
               "--split", "val", "--n", "10", "--out", str(tmp_path / "lb")])
    assert rc == 2
    assert "no split 'val'" in one_error_line(capsys)
    assert not (tmp_path / "lb").exists()  # no entry computed on training images


def test_relative_robust_ens_data_is_resolved_once_against_the_start_directory(tmp_path, monkeypatch):
    start = tmp_path / "checkout"
    start.mkdir()
    monkeypatch.chdir(start)
    raw = f"../shared-{os.getpid()}-{id(tmp_path)}"  # a value no other test resolved
    monkeypatch.setenv("ROBUST_ENS_DATA", raw)
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    assert data.data_env() == (raw, (start / raw).resolve())
    monkeypatch.chdir(tmp_path)  # a later chdir does not move the data
    assert data.data_env() == (raw, (start / raw).resolve())
    with pytest.raises(RobustEnsError) as info:
        data.load("cifar10")
    msg = str(info.value)
    assert "\n" not in msg and raw in msg and "resolved once against the start directory" in msg
    assert str((start / raw).resolve()) in msg


@pytest.mark.parametrize("argv,option", [(["data", "digits", "--root"], "--root"),
                                         (["train", "--data", "digits", "--out", "o", "--data-root"], "--data-root")])
def test_an_explicit_data_root_that_does_not_exist_is_an_error(argv, option, tmp_path, capsys):
    assert main(["--quiet", *argv, str(tmp_path / "nope")]) == 2
    assert f"{option} {tmp_path / 'nope'} is not an existing folder" in one_error_line(capsys)

"""Checkpoints are untrusted input: a record or weights file that does not fit is one line, and nothing unsafe is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robust_ens import models
from robust_ens.cli import main
from robust_ens.errors import CheckpointError
from tests.cli_helpers import one_error_line

# --------------------------------------------------------------------------- checkpoints are untrusted


@pytest.fixture
def ckpt(tmp_path):
    m = models.create("small_cnn", num_classes=10, in_chans=1, width=4)
    models.save_checkpoint(m, tmp_path / "m", dataset="digits")
    return tmp_path / "m"


def _edit_record(stem: Path, **changes) -> None:
    side = stem.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), **changes}))


def test_record_of_random_bytes_is_one_line(ckpt, capsys):
    ckpt.with_suffix(".json").write_bytes(b"\xff\xfe\x00garbage\x9c")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        models.load_checkpoint(ckpt)
    assert main(["--quiet", "corruptions", "evaluate", "--model", str(ckpt), "--data", "digits", "--n", "4",
                 "--out", str(ckpt.parent / "lb")]) == 2
    assert "not UTF-8" in one_error_line(capsys)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"pretrained": True}, "'pretrained' not accepted"),
        ({"pretrained_cfg_overlay": {"file": "/etc/passwd"}}, "'pretrained_cfg_overlay' not accepted"),
        ({"weights_file": "/etc/passwd"}, "'weights_file' not accepted"),
        ({"width": "abc"}, "must be an integer"),
    ],
)
def test_record_may_only_pass_safe_architecture_options(ckpt, kwargs, needle, monkeypatch):
    import timm

    def no_network(*a, **k):
        raise AssertionError("loading a checkpoint reached for the network or a file")

    monkeypatch.setattr(timm, "create_model", no_network)
    _edit_record(ckpt, arch_kwargs=kwargs)
    with pytest.raises(CheckpointError, match=needle):
        models.load_checkpoint(ckpt)


def test_timm_record_refuses_pretrained_without_touching_the_hub(tmp_path, monkeypatch):
    import timm

    kw = {"img_size": 32, "patch_size": 8}
    m = models.create("timm:vit_tiny_patch16_224", num_classes=10, **kw)
    models.save_checkpoint(m, tmp_path / "v")
    back = models.load_checkpoint(tmp_path / "v")  # safe timm options load (built on meta first)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(back(x), m.eval()(x))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    _edit_record(tmp_path / "v", arch_kwargs={**kw, "pretrained": True})
    with pytest.raises(CheckpointError, match="'pretrained' not accepted"):
        models.load_checkpoint(tmp_path / "v")


def test_tiny_vit_records_with_structural_options_load_and_absurd_ones_are_refused(tmp_path):
    kw = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    m = models.create("timm:vit_tiny_patch16_224", num_classes=10, **kw)
    models.save_checkpoint(m, tmp_path / "v")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(models.load_checkpoint(tmp_path / "v")(x), m.eval()(x))
    _edit_record(tmp_path / "v", arch_kwargs={**kw, "depth": 10**7})
    with pytest.raises(CheckpointError, match="depth=10000000 is far larger than anything in the weights"):
        models.load_checkpoint(tmp_path / "v")


def test_record_is_checked_against_the_weights_before_building(ckpt):
    _edit_record(ckpt, num_classes=1_000_000_000)
    with pytest.raises(CheckpointError, match="num_classes=1000000000.*no tensor in the weights"):
        models.load_checkpoint(ckpt)
    _edit_record(ckpt, num_classes=7)
    with pytest.raises(CheckpointError, match=r"do not fit.*other shapes.*record \[7"):
        models.load_checkpoint(ckpt)


def test_unknown_architecture_is_named_with_the_known_ones(ckpt):
    _edit_record(ckpt, arch="os:system")
    with pytest.raises(CheckpointError, match=r"unknown architecture 'os:system' in the record .*; known: .*small_cnn"):
        models.load_checkpoint(ckpt)


@pytest.mark.parametrize("weights", ["../outside.safetensors", "/etc/passwd", "sub/m.safetensors", ".."])
def test_weights_outside_the_checkpoint_folder_are_refused(ckpt, weights):
    outside = ckpt.parent.parent / "outside.safetensors"
    outside.write_bytes(ckpt.with_suffix(".safetensors").read_bytes())
    _edit_record(ckpt, weights=weights)
    with pytest.raises(CheckpointError, match="outside its folder"):
        models.load_checkpoint(ckpt)


def test_leaderboard_entry_of_random_bytes_is_one_line(tmp_path, capsys):
    bad = tmp_path / "e.json"
    bad.write_bytes(b"\x80\x81 not text \xff")
    assert main(["leaderboard", "validate", str(bad)]) == 2
    assert "not UTF-8" in one_error_line(capsys)

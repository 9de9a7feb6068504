"""Issue 14: no silent train/test leakage, every bad input a one-line error naming what to fix."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_ens import data, models, progress
from robust_ens.cli import main
from robust_ens.errors import CheckpointError, RobustEnsError


def _tree(root: Path, splits: tuple[str, ...], per_class: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in ("a", "b"):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


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
    assert "no split 'val'" in _one_error_line(capsys)
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
    assert f"{option} {tmp_path / 'nope'} is not an existing folder" in _one_error_line(capsys)


# --------------------------------------------------------------------------- overrides and warm-up


def test_overrides_are_unambiguous():
    from robust_ens.defenses import resolve_recipe

    with pytest.raises(RobustEnsError, match=r"'momentum' is ambiguous.*train\.momentum.*defense\.momentum"):
        resolve_recipe("dverge", "small", {"momentum": 0.5})
    rec = resolve_recipe("dverge", "small", {"train.momentum": 0.5, "defense.momentum": False,
                                             "warmup.lr": 0.05, "lr": 0.02})
    assert rec["train"]["momentum"] == 0.5 and rec["defense"]["momentum"] is False
    assert rec["warmup"]["lr"] == 0.05 and rec["train"]["lr"] == 0.02
    assert rec["warmup"]["momentum"] == 0.9  # a training option never reaches the warm-up by accident
    with pytest.raises(RobustEnsError, match="unknown option 'defense.lr'"):
        resolve_recipe("dverge", "small", {"defense.lr": 0.1})


def test_training_option_types_are_checked_in_one_place():
    from robust_ens.train import TrainConfig

    assert TrainConfig(milestones="100,150").milestones == (100, 150)
    with pytest.raises(RobustEnsError, match="'lr' must be a number, got 'abc'"):
        TrainConfig(lr="abc")
    with pytest.raises(RobustEnsError, match="'milestones' must be a comma-separated list of integers"):
        TrainConfig(milestones="a,b")
    with pytest.raises(RobustEnsError, match="'nesterov' must be true or false"):
        TrainConfig(nesterov=1)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--set", "lr=abc"], "'lr' must be a number"),
        (["--arch-param", "foo=1"], "--arch-param 'foo' not accepted by architecture 'small_cnn'; it takes: width"),
        (["--arch-param", "width=abc"], "'width' of 'small_cnn' must be an integer"),
        (["--set", "defense.eps=1"], "need --defense"),
        (["--members", "abc"], "argument --members: invalid int value"),
        (["--train-n", "0"], "argument --train-n: must be a positive integer"),
        (["--seed", "-1"], "argument --seed: must be a seed"),
    ],
)
def test_train_bad_values_are_one_line(extra, needle, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["--quiet", "train", "--arch", "small_cnn", "--data", "digits", "--members", "1", "--epochs", "1",
               "--train-n", "32", "--out", str(out), *extra])
    assert rc == 2
    assert needle in _one_error_line(capsys)
    assert not out.exists()


def test_dverge_momentum_override_reaches_sgd(tmp_path, capsys):
    rc = main(["--quiet", "train", "--defense", "dverge", "--tier", "small", "--arch", "small_cnn",
               "--arch-param", "width=4", "--data", "digits", "--members", "2", "--train-n", "64", "--epochs", "1",
               "--warmup-epochs", "1", "--set", "train.momentum=0.5", "--out", str(tmp_path / "d")])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    plan = printed.splitlines()[0]
    assert plan.startswith("plan: dverge") and "warm-up 1 epochs" in plan and "1 dverge epoch" in plan
    record = models.read_sidecar(tmp_path / "d" / "member0")["recipe"]
    assert record["train"]["momentum"] == 0.5 and record["defense_params"]["momentum"] is True
    assert record["warmup"]["epochs"] == 1


def test_epochs_do_not_silently_change_the_warm_up_and_zero_skips_it():
    from robust_ens.defenses import defense_plan

    assert "baseline warm-up 8 epochs" in defense_plan("dverge", recipe="small", epochs=1)
    assert "no baseline warm-up" in defense_plan("dverge", recipe="small", epochs=1, warmup_epochs=0)
    with pytest.raises(RobustEnsError, match="has no baseline warm-up"):
        defense_plan("adp", recipe="small", warmup_epochs=2)


def test_library_callers_are_told_when_epochs_leave_the_warm_up_as_it_is(caplog):
    from robust_ens.defenses import train_defense

    kw = dict(arch="small_cnn", n_members=2, dataset="digits", recipe="small", train_n=64, epochs=1,
              progress=False, arch_kwargs={"width": 4})
    with caplog.at_level(logging.WARNING, logger="robust_ens.defenses"):
        ens = train_defense("dverge", **kw)
    assert "the baseline warm-up still runs its recipe's 8 epochs" in caplog.text
    assert ens.record["warmup"]["epochs"] == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robust_ens.defenses"):
        ens = train_defense("dverge", **kw, warmup_epochs=0)
    assert "warm-up" not in caplog.text and ens.record["warmup"] == {}


def test_small_tier_on_digits_says_which_option_to_pass(tmp_path, capsys):
    rc = main(["--quiet", "train", "--defense", "baseline", "--tier", "small", "--arch", "small_cnn",
               "--data", "digits", "--out", str(tmp_path / "b")])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "train_n=2000 (from the small tier of baseline)" in line and "--train-n 1297" in line
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- run-folder lock


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    from robust_ens.train import LOCK_FILE, run_lock

    out = tmp_path / "shared"
    with run_lock(out):
        assert (out / LOCK_FILE).read_text() == str(os.getpid())
        rc = main(["--quiet", "train", "--arch", "small_cnn", "--data", "digits", "--members", "1", "--epochs", "1",
                   "--train-n", "32", "--out", str(out)])
        assert rc == 2
        assert "another run (pid" in _one_error_line(capsys)
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # the refused run wrote nothing
    assert not out.exists()  # the lock created the folder, nothing was written: both gone
    assert main(["--quiet", "train", "--arch", "small_cnn", "--data", "digits", "--members", "1", "--epochs", "1",
                 "--train-n", "32", "--out", str(out)]) == 0
    assert not (out / LOCK_FILE).exists() and (out / "member0.safetensors").is_file()


def test_the_lock_holds_across_processes(tmp_path):
    import subprocess
    import time

    out = tmp_path / "x"
    code = ("import sys, time; from robust_ens.train import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        from robust_ens.train import run_lock

        with pytest.raises(RobustEnsError, match=f"another run \\(pid {proc.pid}\\)"):
            with run_lock(out):
                pass
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.05)
    with run_lock(out):  # released by the OS when its holder died
        pass


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
    assert "not UTF-8" in _one_error_line(capsys)


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
    assert "not UTF-8" in _one_error_line(capsys)


# --------------------------------------------------------------------------- progress and quiet


def test_quiet_is_read_in_one_place(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(progress.QUIET_ENV, value)
        assert progress.quiet() is expected and progress.enabled() is not expected
    from robust_ens.commands.common import progress_enabled

    monkeypatch.setenv(progress.QUIET_ENV, "1")
    assert progress_enabled() is False and progress.enabled(True) is False
    progress.set_quiet(False)
    assert progress.enabled() and not progress.enabled(False)
    sources = [p for p in Path(__file__).resolve().parents[1].joinpath("robust_ens").rglob("*.py")
               if '"ROBUST_ENS_QUIET"' in p.read_text() or "environ.get(\"ROBUST_ENS_QUIET" in p.read_text()]
    assert [p.name for p in sources] == ["progress.py"]


def test_off_a_terminal_a_bar_prints_a_line_per_stage(monkeypatch, capsys):
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    bar = progress.bar(total=3, desc="corruptions", unit="set", every=1)
    assert isinstance(bar, progress.LineProgress)  # capsys' stderr is not a terminal
    for stage in ("fog s1", "fog s2", "snow s1"):
        bar.set_postfix_str(stage)
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "\r" not in "".join(lines)
    assert lines[0].startswith("corruptions: 1/3 set (33%") and lines[-1].endswith("snow s1")
    monkeypatch.setenv(progress.QUIET_ENV, "1")
    quiet_bar = progress.bar(total=3, desc="x")
    quiet_bar.update(3)
    quiet_bar.close()
    assert capsys.readouterr().err == ""


def test_long_loops_print_about_twenty_lines(monkeypatch):
    buf = io.StringIO()
    bar = progress.LineProgress(range(1000), desc="train", unit="batch", file=buf)
    assert sum(1 for _ in bar) == 1000
    lines = buf.getvalue().splitlines()
    assert 19 <= len(lines) <= 21 and lines[-1].startswith("train: 1000/1000")


def test_log_lines_are_written_above_a_terminal_bar(monkeypatch):
    """On a terminal the bar is tqdm; a log record goes through tqdm.write, which clears and redraws it."""
    import tqdm

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **k: written.append(s)))
    handler = progress.LogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.emit(logging.LogRecord("robust_ens.x", logging.INFO, __file__, 1, "fog s3: accuracy %.2f", (0.5,), None))
    assert written == ["INFO fog s3: accuracy 0.50"]


def test_corruptions_evaluate_shows_a_line_per_set_and_no_log_lines_inside(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    rc = main(["corruptions", "evaluate", "--model", "zoo:digits_small_cnn_s0", "--data", "digits", "--n", "8",
               "--corruptions", "gaussian_noise,fog", "--severities", "1-2", "--no-cache", "--out", str(tmp_path)])
    assert rc == 0
    err = capsys.readouterr().err
    stage_lines = [ln for ln in err.splitlines() if ln.startswith("corruptions: ")]
    assert len(stage_lines) == 4 and "\r" not in err
    assert all(ln.startswith(("INFO ", "corruptions: ", "WARNING ")) for ln in err.splitlines() if ln.strip())


def test_usage_errors_are_one_line(capsys):
    assert main(["train", "--members", "abc", "--out", "x"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("robust-ens train: error: argument --members") and "--help" in line

"""Training options: overrides are unambiguous, typed in one place, one-line errors; the warm-up; the run-folder lock."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from robust_ens import models
from robust_ens.cli import main
from robust_ens.errors import RobustEnsError
from tests.cli_helpers import one_error_line

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
    assert needle in one_error_line(capsys)
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
    line = one_error_line(capsys)
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
        assert "another run (pid" in one_error_line(capsys)
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

import json

import pytest

from robust_ens import models
from robust_ens.cli import main


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["--quiet", "quickstart", "--out", str(out), "--epochs", "4", "--n-eval", "100"]) == 0
    printed = capsys.readouterr().out
    assert "surrogate" in printed and "target" in printed and "clean acc" in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results["members"]) == 6 and {r["role"] for r in results["ensembles"]} == {"surrogate", "target"}
    assert all(r["clean_acc"] > 0.8 for r in results["ensembles"])
    seeds = {r["seed"] for r in results["members"]}
    assert len(seeds) == 6  # surrogate and target members all have their own seed
    transfer = results["transfer"]["records"]
    assert {r["attack"] for r in transfer} == {"MIFGSM", "CWA"}
    for r in transfer:  # an attack never raises accuracy; the largest eps must hurt the surrogate
        assert r["surrogate"] <= results["ensembles"][0]["clean_acc"] + 1e-9
    assert min(r["surrogate"] for r in transfer) < 0.5
    assert "target acc (transfer)" in printed


def test_train_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "ens"
    rc = main(["--quiet", "train", "--arch", "small_cnn", "--members", "2", "--data", "digits",
               "--epochs", "2", "--train-n", "300", "--out", str(out), "--set", "precision=fp32"])
    assert rc == 0
    assert "test acc" in capsys.readouterr().out
    m = models.load_checkpoint(out / "member1")
    assert m.checkpoint["recipe"]["epochs"] == 2 and m.checkpoint["metrics"]["train_n"] == 300


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--arch", "nope", "--data", "digits", "--out", "X"], "unknown model 'nope'"),
        (["train", "--data", "digits", "--members", "0", "--out", "X"], "--members must be >= 1"),
        (["train", "--data", "digits", "--set", "lr", "--out", "X"], "key=value"),
        (["train", "--data", "digits", "--set", "learnrate=1", "--out", "X"], "unknown training option"),
    ],
)
def test_bad_input_gives_one_line_error_not_a_traceback(argv, needle, capsys, tmp_path):
    argv = [a if a != "X" else str(tmp_path / "o") for a in argv]
    assert main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits_small_cnn_s0" in out and "small_cnn" in out
    from robust_ens.models.zoo import index

    for name, e in index().items():  # each cifar10 ensemble's row shows its training images
        if (n := (e.get("recipe") or {}).get("train_n")) is not None:
            assert any(line.split()[0] == name and f"{n:,}" in line.split() for line in out.splitlines()), name


@pytest.mark.parametrize("argv", [["zoo", "list", "--quiet"], ["--quiet", "zoo", "list"], ["zoo", "list", "-v"]])
def test_global_flags_also_after_the_subcommand(argv, monkeypatch):
    from robust_ens.cli import build_parser

    monkeypatch.delenv("ROBUST_ENS_QUIET", raising=False)
    args = build_parser().parse_args(argv)
    assert args.quiet is ("--quiet" in argv) and args.verbose is ("-v" in argv)
    assert main(argv) == 0
    import os

    assert (os.environ.get("ROBUST_ENS_QUIET") == "1") is ("--quiet" in argv)


def test_closed_output_pipe_is_not_an_error(monkeypatch):
    import robust_ens.commands.zoo as zoo_cmd

    def closed(*_, **__):
        raise BrokenPipeError

    monkeypatch.setattr(zoo_cmd, "print", closed, raising=False)
    import os
    import sys

    saved = os.dup(sys.stdout.fileno())
    try:
        assert main(["zoo", "list"]) == 0
    finally:
        os.dup2(saved, sys.stdout.fileno())
        os.close(saved)

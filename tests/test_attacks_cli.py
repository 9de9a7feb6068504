"""``robust-ens attack``: writes the adversarial set and its record; bad input exits 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robust_ens import data, models
from tests.attack_fixtures import single_thread  # noqa: F401

cli = pytest.importorskip("robust_ens.cli")
pytestmark = pytest.mark.usefixtures("single_thread")

ZOO = [n for n in models.list_zoo() if n.startswith("digits")]


def _zoo(k: int) -> str:
    if len(ZOO) < k:
        pytest.skip(f"needs {k} digits zoo checkpoints, the zoo has {ZOO}")
    return ",".join(f"zoo:{n}" for n in ZOO[:k])


def test_attack_command_writes_set_and_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sets" / "mi.safetensors"
    argv = ["--quiet", "attack", "--attack", "mifgsm", "--param", "alpha=2/255", "--param", "steps=5",
            "--surrogate", _zoo(2), "--data", "digits", "--n", "12", "--eps", "8/255",
            "--precision", "fp32", "--batch-size", "5", "--out", str(out), "--store", str(tmp_path / "store")]
    rc = cli.main(argv)
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and str(out) in line  # --quiet still says what was written
    t = load_file(str(out))
    assert t["x_adv"].shape == (12, 1, 8, 8) and t["x_adv"].dtype == torch.uint8
    xu, y = data.load_uint8("digits", "test")
    idx = t["indices"]
    assert torch.equal(t["labels"], y[idx])
    assert int((t["x_adv"].int() - xu[idx].int()).abs().max()) <= 8  # 8/255 is exactly 8 levels
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["eps"] == 8 / 255 and rec["budget"]["within_budget"] and rec["budget"]["max_linf"] <= 8 / 255
    assert rec["attack"]["name"] == "mifgsm" and rec["attack"]["steps"] == 5
    assert rec["cost"]["forward_per_example"] == 10.0  # 5 steps x 2 members
    assert rec["surrogate"]["ensemble"] is True and len(rec["surrogate"]["sha256"]) == 2
    assert {"adversarial", "adversarial_before_uint8"} <= set(rec["surrogate_accuracy"])
    # the same command again reads every batch from the store, bit for bit
    assert cli.main(argv) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["cost"]["batches_from_store"] == 3 and torch.equal(load_file(str(out))["x_adv"], t["x_adv"])


def test_attack_command_refuses_a_model_of_another_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--quiet", "attack", "--attack", "pgd", "--surrogate", "tests.bench_models:flat_cifar",
                   "--data", "digits", "--n", "4", "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "does not take digits images (1x8x8)" in err


def test_attack_command_unwritable_out_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--quiet", "attack", "--attack", "pgd", "--surrogate", _zoo(1), "--data", "digits", "--n", "4",
                   "--out", "/proc/nope/a.safetensors"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--out /proc/nope/a.safetensors" in err


def test_attack_command_targeted_single_model(tmp_path: Path) -> None:
    out = tmp_path / "t.safetensors"
    rc = cli.main(["--quiet", "attack", "--attack", "pgd", "--param", "alpha=0.05", "--surrogate", _zoo(1),
                   "--data", "digits", "--n", "10", "--eps", "0.3", "--target", "random", "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["surrogate_accuracy"]["target_hit_rate"] > 0.3
    assert "target" in load_file(str(out))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack", "pgd", "--eps", "2"], "--eps 2 is out of range: a pixel budget in (0, 1]"),
        (["--attack", "pgd", "--eps", "eight"], "--eps"),
        (["--attack", "pgd", "--param", "stepz=3"], "stepz"),
        (["--attack", "pgd", "--param", "steps=0"], "steps"),
        (["--attack", "nope"], "unknown attack"),
        (["--attack", "cwa"], "at least 2 models"),
    ],
)
def test_attack_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    rc = cli.main(["--quiet", "attack", "--surrogate", _zoo(1), "--data", "digits", "--n", "4",
                   "--out", str(tmp_path / "x.safetensors"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err

"""cifar10-corruptions results as leaderboard entries, and the ``robust-ens corruptions evaluate`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.corruptions import evaluate as ev

NAMES = ["gaussian_noise", "contrast", "pixelate"]


def _fake_result(shift: float = 0.0) -> dict:
    acc = {c: {s: max(0.0, 0.9 - 0.1 * s - shift) for s in (1, 3)} for c in NAMES}
    allacc = [a for v in acc.values() for a in v.values()]
    return {"protocol": {"version": ev.PROTOCOL_VERSION, "preset": "cifar10c", "seed": 0, "n_examples": 50,
                         "corruptions": NAMES, "severities": [1, 3]},
            "clean_accuracy": 0.95 - shift, "accuracy": acc, "mean_corruption_accuracy": sum(allacc) / len(allacc),
            "seconds": 1.5}


def test_entry_round_trip(tmp_path: Path) -> None:
    res = _fake_result()
    entry = ev.to_entry(res, name="demo_model", architecture="small_cnn", dataset="digits", command="test")
    assert entry.protocol.suite == "cifar10-corruptions" and entry.protocol.n_examples == 50
    assert entry.results.metrics["acc/contrast/3"] == pytest.approx(0.6)
    assert entry.results.metrics["mean_corruption_accuracy"] == pytest.approx(res["mean_corruption_accuracy"])
    assert "relative_mCE" not in entry.results.metrics  # no baseline: no mCE
    path = lb.write(entry, root=tmp_path)
    assert path == tmp_path / "digits" / "cifar10-corruptions" / "demo_model.json"
    back = ev.result_from_entry(path)
    assert back["accuracy"] == {c: {int(s): pytest.approx(a) for s, a in v.items()} for c, v in res["accuracy"].items()}
    # a result scored against its own entry: mCE and relative mCE are 100
    scored = ev.corruption_errors(res, back, NAMES)
    assert scored["mCE"] == pytest.approx(100.0) and scored["relative_mCE"] == pytest.approx(100.0)
    worse = ev.to_entry({**_fake_result(0.05), **ev.corruption_errors(_fake_result(0.05), back, NAMES),
                         "baseline": "demo_model"}, name="worse", dataset="digits")
    assert worse.results.metrics["mCE"] > 100 and worse.protocol.settings["baseline"] == "demo_model"
    json.dumps(worse.model_dump(mode="json"), allow_nan=False)  # numbers are plain JSON numbers


def test_result_from_entry_rejects_other_suites() -> None:
    entry = {"name": "x", "model": {"name": "x", "architecture": "a"},
             "protocol": {"suite": "transfer", "suite_version": "1", "dataset": "digits", "n_examples": 1, "seed": 0},
             "results": {"clean_accuracy": 0.5}}
    with pytest.raises(Exception, match="cifar10-corruptions"):
        ev.result_from_entry(entry)


def test_cli_evaluate_digits_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Zoo digits models (8x8) upsampled to 32 px: a single model as baseline, then an ensemble."""
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lb"
    common = ["--quiet", "corruptions", "evaluate", "--data", "digits", "--n", "60", "--severities", "1,5",
              "--corruptions", ",".join(NAMES), "--device", "cpu", "--batch-size", "32", "--out", str(out)]
    assert main([*common[:3], "--model", "zoo:digits_small_cnn_s0", "--name", "base", *common[3:]]) == 0
    base = out / "digits" / "cifar10-corruptions" / "base.json"
    entry = lb.validate(base)
    assert entry.protocol.settings["upscale"] == 4 and entry.model.n_members == 1
    assert entry.model.checkpoint_sha256 and entry.results.clean_accuracy > 0.8
    assert set(entry.results.metrics) >= {f"acc/{c}/{s}" for c in NAMES for s in (1, 5)}
    cached = list((tmp_path / "cache" / "corruptions" / "cifar10c").rglob("*.npy"))
    assert len(cached) == len(NAMES) * 2

    # the corrupted sets are reused: a second model costs forward passes only
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("corrupted set regenerated instead of read from the cache")

    monkeypatch.setattr(ev, "corrupt", boom)
    spec = "zoo:digits_small_cnn_s0,zoo:digits_small_cnn_s1,zoo:digits_small_cnn_s2"
    assert main([*common[:3], "--model", spec, "--baseline", str(base), *common[3:]]) == 0
    ens_path = next(p for p in (out / "digits" / "cifar10-corruptions").glob("*.json") if p.name != "base.json")
    ens = lb.validate(ens_path)
    assert ens.model.n_members == 3 and len(ens.model.checkpoint_sha256) == 3
    assert ens.protocol.settings["baseline"] == "base"
    assert 0 < ens.results.metrics["relative_mCE"] < 1000 and "mCE" in ens.results.metrics
    assert "wrote" in capsys.readouterr().out
    # scored against itself, the baseline gets mCE 100
    assert main([*common[:3], "--model", "zoo:digits_small_cnn_s0", "--name", "self", "--baseline", str(base),
                 *common[3:]]) == 0
    selfe = lb.validate(out / "digits" / "cifar10-corruptions" / "self.json")
    assert selfe.results.metrics["mCE"] == pytest.approx(100.0)
    assert selfe.results.metrics["relative_mCE"] == pytest.approx(100.0)
    assert lb.render_all(out)  # tables render from these entries


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--quiet", "corruptions", "evaluate", "--model", "zoo:digits_small_cnn_s0", "--data", "digits",
            "--out", str(tmp_path)]
    assert main([*base, "--severities", "0-7"]) == 2
    assert "severities" in capsys.readouterr().err
    assert main([*base, "--corruptions", "nope"]) == 2
    assert "unknown corruption" in capsys.readouterr().err
    assert main([*base, "--upscale", "x"]) == 2


def test_parse_severities() -> None:
    from robust_ens.commands.corruptions import parse_severities

    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("3") == [3] and parse_severities("5,1,3") == [1, 3, 5]
    assert torch.equal(torch.tensor(parse_severities("2-3")), torch.tensor([2, 3]))

"""``robust-ens corruptions evaluate`` through the engine into schema-2 entries; schema-1 entries are read-only legacy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.corruptions import evaluate as ev

NAMES = ["gaussian_noise", "contrast", "pixelate"]


def legacy_payload(name: str, clean: float, acc: dict[str, dict[int, float]]) -> dict:
    """A schema-1 entry as the command wrote them before it went through the engine (no writer makes these now)."""
    metrics = {f"acc/{c}/{s}": a for c, per in acc.items() for s, a in per.items()}
    metrics["mean_corruption_accuracy"] = sum(metrics.values()) / len(metrics)
    return {"name": name, "model": {"name": name, "architecture": "small_cnn"},
            "protocol": {"suite": "cifar10-corruptions", "suite_version": "1", "dataset": "digits", "n_examples": 60,
                         "seed": 0, "threat_model": "common-corruptions",
                         "settings": {"preset": "cifar10c", "corruptions": list(acc), "severities": [1, 5]}},
            "results": {"clean_accuracy": clean, "metrics": metrics}}


def test_a_legacy_schema1_entry_validates_and_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acc = {c: {1: 0.8, 5: 0.4} for c in NAMES}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(legacy_payload("old", 0.9, acc)))
    assert main(["--quiet", "leaderboard", "validate", str(path)]) == 0
    capsys.readouterr()
    assert lb.validate(path).schema_version == "1.0"
    back = ev.result_from_entry(path)
    assert back["accuracy"] == acc and back["clean_accuracy"] == 0.9 and back["protocol"]["preset"] == "cifar10c"
    scored = ev.corruption_errors(back, back, NAMES)  # against itself: mCE and relative mCE are 100
    assert scored["mCE"] == pytest.approx(100.0) and scored["relative_mCE"] == pytest.approx(100.0)
    with pytest.raises(Exception, match="has no accuracy for fog@1"):
        ev.check_baseline(back, ["fog"], [1], "cifar10c")
    with pytest.raises(Exception, match="preset"):
        ev.check_baseline(back, NAMES, [1], "imagenetc")


def test_result_from_entry_rejects_other_suites() -> None:
    entry = {"name": "x", "model": {"name": "x", "architecture": "a"},
             "protocol": {"suite": "transfer", "suite_version": "1", "dataset": "digits", "n_examples": 1, "seed": 0},
             "results": {"clean_accuracy": 0.5}}
    with pytest.raises(Exception, match="cifar10-corruptions"):
        ev.result_from_entry(entry)


def _cells(entry: lb.Entry) -> dict[tuple[str, int], tuple[int, int]]:
    return {(c.corruption, c.severity): (c.k, c.n) for c in entry.results.corruptions}


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
    assert isinstance(entry, lb.Entry) and entry.kind == "defense" and entry.model.n_members == 1
    assert entry.protocol.suite == "cifar10-corruptions" and entry.protocol.tier == "custom"
    assert entry.protocol.n_examples == 60 and entry.protocol.digest and entry.results_sha256
    assert entry.model.checkpoint_sha256 and entry.model.target.spec == "zoo:digits_small_cnn_s0"
    assert entry.results.clean.acc > 0.8 and set(_cells(entry)) == {(c, s) for c in NAMES for s in (1, 5)}
    assert "mCE" not in entry.results.metrics  # no baseline: no mCE
    cached = list((tmp_path / "cache" / "corruptions" / "cifar10c").rglob("*.npy"))
    assert len(cached) == len(NAMES) * 2

    # the corrupted sets are reused: a second model costs forward passes only
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("corrupted set regenerated instead of read from the cache")

    monkeypatch.setattr(ev, "corrupt", boom)
    # --upscale 4 is what auto chose for 8 px digits: the same numbers (another digest: it is in the tier)
    assert main([*common[:3], "--model", "zoo:digits_small_cnn_s0", "--name", "up4", "--upscale", "4", *common[3:]]) == 0
    up4 = lb.validate(out / "digits" / "cifar10-corruptions" / "up4.json")
    assert _cells(up4) == _cells(entry) and up4.protocol.digest != entry.protocol.digest
    spec = "zoo:digits_small_cnn_s0,zoo:digits_small_cnn_s1,zoo:digits_small_cnn_s2"
    assert main([*common[:3], "--model", spec, "--combine", "probs", "--baseline", str(base), *common[3:]]) == 0
    ens = lb.validate(out / "digits" / "cifar10-corruptions" / "zoo_digits_small_cnn_s0_zoo_digits_small_cnn_s1_zoo_digits_small_cnn_s2.json")
    assert ens.model.n_members == 3 and len(ens.model.checkpoint_sha256) == 3 and ens.model.target.spec == spec
    assert ens.model.config["mCE_baseline"] == "base" and ens.model.config["combine"] == "probs"
    assert 0 < ens.results.metrics["relative_mCE"] < 1000 and "mCE" in ens.results.metrics
    assert "wrote" in capsys.readouterr().out
    # scored against itself as a legacy schema-1 entry, the baseline gets mCE 100
    acc: dict[str, dict[int, float]] = {}
    for (c, s), (k, n) in _cells(entry).items():
        acc.setdefault(c, {})[s] = k / n
    legacy = tmp_path / "legacy-base.json"
    legacy.write_text(json.dumps(legacy_payload("legacy-base", entry.results.clean.acc, acc)))
    assert main([*common[:3], "--model", "zoo:digits_small_cnn_s0", "--name", "self", "--baseline", str(legacy),
                 *common[3:]]) == 0
    selfe = lb.validate(out / "digits" / "cifar10-corruptions" / "self.json")
    assert selfe.results.metrics["mCE"] == pytest.approx(100.0)
    assert selfe.results.metrics["relative_mCE"] == pytest.approx(100.0)
    assert all(e.schema_version == "2" for e in lb.load_entries(out))  # nothing writes schema 1
    assert lb.render_all(out)  # tables render from these entries
    # regress leaves a tier made from command-line options to its command, with the reason (not a crash)
    from robust_ens.bench.regress import RegressReport, _groups

    files = lb.entry_files(out)
    report = RegressReport()
    assert _groups(files, lb.validate_tree(files), None, report) == {}
    assert len(report.skipped) == len(files) and all("tier 'custom' is not one of the suite's" in r
                                                     for r in report.skipped)
    capsys.readouterr()
    assert main(["--quiet", "regress", "--root", str(out)]) == 2
    assert "no entry to re-run" in capsys.readouterr().err


def test_the_options_of_a_suite_tier_write_that_tiers_entry(tmp_path: Path, cifar10_available: None) -> None:
    """With the smoke tier's options the command writes the entry bench run writes (cost and provenance aside)."""
    from robust_ens.bench import get_suite

    smoke = get_suite("cifar10-corruptions").tier("smoke")
    spec = "tests.bench_models:tiny_cifar"
    assert main(["--quiet", "bench", "run", "cifar10-corruptions", "--tier", "smoke", "--target", spec, "--device", "cpu",
                 "--entries", "--out", str(tmp_path / "run")]) == 0
    assert main(["--quiet", "corruptions", "evaluate", "--model", spec, "--n", str(smoke.n), "--batch-size",
                 str(smoke.batch_size), "--corruptions", ",".join(smoke.corruptions), "--severities",
                 ",".join(map(str, smoke.severities)), "--device", "cpu", "--out", str(tmp_path / "lb")]) == 0
    (engine,) = (tmp_path / "run" / "entries").glob("*.json")
    (command,) = (tmp_path / "lb").glob("*/cifar10-corruptions/*.json")
    a, b = (json.loads(p.read_text()) for p in (engine, command))
    for d in (a, b):
        d.pop("cost"), d.pop("provenance")
    assert a == b and a["protocol"]["tier"] == "smoke"


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--quiet", "corruptions", "evaluate", "--model", "zoo:digits_small_cnn_s0", "--data", "digits",
            "--out", str(tmp_path)]
    assert main([*base, "--severities", "0-7"]) == 2
    assert "severities" in capsys.readouterr().err
    assert main([*base, "--corruptions", "nope"]) == 2
    assert "unknown corruption" in capsys.readouterr().err
    assert main([*base, "--upscale", "x"]) == 2
    assert "--upscale" in capsys.readouterr().err
    assert main([*base, "--upscale", "2"]) == 2  # 8 px digits x 2 = 16 px: below the corruptions' 32
    assert "32 px" in capsys.readouterr().err
    assert main([*base, "--data-seed", "3"]) == 2  # dropped: the protocol seed picks the examples too
    err = capsys.readouterr().err
    assert "--data-seed is gone" in err and "--seed" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(legacy_payload("other", 0.9, {"fog": {1: 0.5}})))
    assert main([*base, "--baseline", str(other), "--corruptions", "contrast"]) == 2
    assert "--baseline" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*/cifar10-corruptions/*.json"))


def test_parse_severities() -> None:
    from robust_ens.commands.corruptions import parse_severities

    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("3") == [3] and parse_severities("5,1,3") == [1, 3, 5]
    assert torch.equal(torch.tensor(parse_severities("2-3")), torch.tensor([2, 3]))

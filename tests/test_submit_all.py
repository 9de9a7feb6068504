"""``robust-ens submit --suite all``: one entry per suite that ranks defenses and takes the model, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robust_ens import cli
from robust_ens import leaderboard as lb
from robust_ens.bench import protocol
from robust_ens.bench import submit as sub
from robust_ens.errors import RobustEnsError
from tests.cli_helpers import one_error_line

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "zoo:digits_small_cnn_s2"


@pytest.fixture
def two_digit_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A second registered suite on the digits (a copy of digits-transfer), so the model fits two."""
    src = (ROOT / "robust_ens" / "bench" / "protocols" / "digits-transfer.toml").read_text()
    assert 'suite = "digits-transfer"' in src
    toml = tmp_path / "digits-copy.toml"
    toml.write_text(src.replace('suite = "digits-transfer"', 'suite = "digits-copy"'))
    monkeypatch.setitem(protocol.SUITES._entries, "digits-copy", toml)
    monkeypatch.setitem(protocol.SUITES._meta, "digits-copy", {})
    return ["digits-copy", "digits-transfer"]


def test_every_fitting_suite_gets_an_entry_and_a_killed_run_resumes(tmp_path: Path, two_digit_suites: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    opts = {"root": tmp_path / "lb", "out": tmp_path / "all", "store": tmp_path / "store", "progress": False}
    real = sub.submit
    calls: list[str] = []

    def dies_on_the_second_suite(model: str, suite: str, *args: object, **kwargs: object) -> sub.Submission:
        calls.append(suite)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while evaluating the second suite
        return real(model, suite, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sub, "submit", dies_on_the_second_suite)
    with pytest.raises(KeyboardInterrupt):
        sub.submit_all(DIGITS, "smoke", "cnn-s2", **opts)  # type: ignore[arg-type]
    assert calls == two_digit_suites
    state = json.loads((tmp_path / "all" / "submit-all.json").read_text())
    assert state["suites"] == {"digits-copy": "finished", "digits-transfer": "started"}

    calls.clear()
    monkeypatch.setattr(sub, "submit", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    res = sub.submit_all(DIGITS, "smoke", "cnn-s2", **opts)  # type: ignore[arg-type]
    assert calls == ["digits-transfer"]  # the finished suite is skipped
    assert [s.entry.protocol.suite for s in res.submitted] == ["digits-transfer"] and list(res.finished) == ["digits-copy"]
    assert set(res.skipped) >= {"cifar10-attacks", "cifar10-transfer", "kitti-c"}  # a digits model takes no CIFAR-10
    assert "ranks attacks" in res.skipped["cifar10-attacks"]
    entries = {e.protocol.suite: e for e in lb.load_entries(tmp_path / "lb")}
    assert set(entries) == set(two_digit_suites) and all(e.name == "cnn-s2" for e in entries.values())
    first, second = (entries[s].results for s in two_digit_suites)
    assert first == second  # the same protocol under two names: the same numbers
    assert sum(s.advsets_made for s in res.submitted) == 0  # the first run's sets, from the store

    calls.clear()
    assert cli.main(["--quiet", "submit", "--model", DIGITS, "--suite", "all", "--tier", "smoke", "--name", "cnn-s2",
                     "--root", str(tmp_path / "lb"), "--out", str(tmp_path / "all"),
                     "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert calls == [] and "0 suites evaluated, 2 already finished" in out
    assert "digits-copy: finished by an earlier run" in out and "cifar10-attacks: skipped (ranks attacks" in out


def test_an_existing_entry_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = {"root": tmp_path / "lb", "store": tmp_path / "store", "progress": False}
    sub.submit(DIGITS, "digits-transfer", "smoke", "cnn-s2", out=tmp_path / "one", **opts)  # type: ignore[arg-type]
    monkeypatch.setattr(sub, "submit", lambda *a, **k: pytest.fail("no work before the refusal"))
    with pytest.raises(RobustEnsError, match="already holds an entry of that name; give --replace"):
        sub.submit_all(DIGITS, "smoke", "cnn-s2", out=tmp_path / "all", **opts)  # type: ignore[arg-type]
    assert not (tmp_path / "all").exists()


def test_another_submission_in_the_same_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "submit-all.json").write_text(json.dumps(
        {"model": "zoo:other", "weights": None, "tier": "smoke", "name": "cnn-s2", "suites": {}}))
    with pytest.raises(RobustEnsError, match="another model, tier or name; pick a new --out"):
        sub.submit_all(DIGITS, "smoke", "cnn-s2", root=tmp_path / "lb", out=tmp_path / "all", progress=False)


def test_a_model_no_suite_takes_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--quiet", "submit", "--model", "tests.bench_models:ramp_depth", "--suite", "all", "--tier",
                   "smoke", "--name", "depth", "--root", str(tmp_path / "lb"), "--out", str(tmp_path / "all")])
    line = one_error_line(capsys)
    assert rc == 2 and "--suite all: no suite takes --model tests.bench_models:ramp_depth" in line
    assert "digits-transfer:" in line and "kitti-c: ranks defenses (depth)" in line
    assert not (tmp_path / "all").exists() and not (tmp_path / "lb").exists()


def test_a_bad_tier_with_all_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--quiet", "submit", "--model", DIGITS, "--suite", "all", "--tier", "huge", "--name", "x",
                   "--out", str(tmp_path / "all")])
    assert rc == 2 and "--tier 'huge': use smoke, demo, small, full" in one_error_line(capsys)

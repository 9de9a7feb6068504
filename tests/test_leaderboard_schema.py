"""Leaderboard schema 2: entries made from a real engine run, the exported schema, every rejection."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.errors import RobustEnsError
from tests.cli_helpers import write_legacy

ROOT = Path(__file__).resolve().parent.parent
DIGITS = "zoo:digits_small_cnn_s2"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One smoke run of digits-transfer (a few seconds) and its folder."""
    from robust_ens.bench.runner import run_suite

    out = tmp_path_factory.mktemp("lb2") / "run"
    return run_suite("digits-transfer", "smoke", [DIGITS], out, progress=False), out


@pytest.fixture()
def payload(run: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import TargetArg

    summary, out = run
    (entry,) = to_entries(summary, "test", run_dir=out, targets=[TargetArg(DIGITS)])
    return entry.model_dump(mode="json")


def test_entry_from_a_run_records_cells_worst_case_per_class_and_provenance(run, payload) -> None:
    summary, _ = run
    e = lb.validate(payload)
    assert isinstance(e, lb.Entry) and e.kind == "defense" and e.schema_version == "2"
    row = summary["targets"][DIGITS]
    assert len(e.results.cells) == len(row["cells"]) == 4
    assert {(c.attack, c.surrogate, c.eps) for c in e.results.cells} == {
        (a, "zoo2", eps) for a in ("mifgsm", "cwa") for eps in (0.1, 0.2)}
    for w in e.results.worst_case:
        at_eps = [c.robust_acc for c in e.results.cells if c.eps == w.eps]
        assert w.min_cell_acc == min(at_eps) and w.robust_acc <= min(at_eps)
        assert w.robust_acc == row["worst_case"][lb.eps_key(w.eps)]["acc"] and len(w.per_class) == 10
    assert e.results.clean.k == row["clean"]["k"] and e.protocol.tier == "smoke" and e.protocol.suite_version == 1
    assert e.model.target is not None and e.model.target.spec == DIGITS
    assert e.model.checkpoint_sha256 == row["model"]["sha256"]
    assert e.results_sha256 is not None and len(e.results_sha256) == 64
    assert e.provenance is not None and e.provenance.torch_version
    assert lb.validate(json.loads(lb.dumps(e))) == e  # JSON round trip


def test_results_sha256_follows_the_per_example_files(run, payload) -> None:
    from robust_ens.bench.report import results_sha256

    _, out = run
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    assert payload["results_sha256"] == results_sha256(cells, [DIGITS])
    cells[DIGITS]["clean"] = "0" * 64
    assert results_sha256(cells, [DIGITS]) != payload["results_sha256"]


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DELETE = object()


@pytest.mark.parametrize("path,value,needle", [
    ("results.clean.acc", "1.0", r"results\.clean\.acc"),                          # a string, RobustBench-style
    ("results.cells.1.robust_acc", 1.5, r"results\.cells\[1\]\.robust_acc"),       # outside [0, 1]
    ("results.cells.1.robust_acc", -0.1, r"results\.cells\[1\]\.robust_acc"),
    ("results.cells.0.robust_acc", math.nan, r"results\.cells\[0\]\.robust_acc.*finite"),
    ("results.worst_case.0.robust_acc", math.inf, r"results\.worst_case\[0\]\.robust_acc"),
    ("results.cells.0.k", 5, r"robust_acc.*not k/n"),                               # acc and k disagree
    ("model", _DELETE, r"\bmodel: Field required"),                                 # missing field
    ("results.clean.k", _DELETE, r"results\.clean\.k"),
    ("results.cells.0.colour", "red", r"results\.cells\[0\]\.colour: Extra inputs"),  # unknown field
    ("kind", "ensemble", r"\bkind\b"),
    ("protocol.eps", [0.1, 0.3], r"protocol\.eps: .* does not match the eps of results\.cells"),
    ("results.worst_case.1.min_cell_acc", 0.3, r"results\.worst_case\[1\]\.min_cell_acc: .*not the minimum"),
    ("results.cells.0.n", 41, r"results\.cells\[0\]\.robust_acc: accuracy 0\.975 is not k/n = 39/41"),
    ("name", "bad name/x", r"\bname\b"),
    ("results_sha256", "abc", r"results_sha256"),
])
def test_every_rejection_names_file_and_field(tmp_path: Path, payload, path, value, needle) -> None:
    bad = copy.deepcopy(payload)
    _set(bad, path, value)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))  # NaN and Infinity are written as JSON's non-standard constants
    with pytest.raises(RobustEnsError, match=needle) as err:
        lb.validate(f)
    msg = str(err.value)
    assert str(f) in msg and "\n" not in msg


def test_worst_case_above_its_cells_is_refused(payload) -> None:
    bad = copy.deepcopy(payload)
    w = bad["results"]["worst_case"][1]  # eps 0.2: raise it above the weakest cell (k/n kept consistent)
    w["k"], w["robust_acc"] = 39, 39 / 40
    with pytest.raises(RobustEnsError, match=r"worst_case\[1\]\.robust_acc: .* above the minimum of its cells"):
        lb.validate(bad)


@pytest.mark.parametrize("blob", [b"\xff\xfe\x00garbage\x80\x81", bytes(range(256)) * 3, b'{"name": "caf\xe9"}'])
def test_random_bytes_and_invalid_utf8_are_one_line(tmp_path: Path, blob: bytes, capsys) -> None:
    f = tmp_path / "entry.json"
    f.write_bytes(blob)
    with pytest.raises(RobustEnsError, match="not UTF-8") as err:
        lb.validate(f)
    assert str(f) in str(err.value)
    assert main(["leaderboard", "validate", str(f)]) == 2
    e = capsys.readouterr().err.strip()
    assert len(e.splitlines()) == 1 and "Traceback" not in e and str(f) in e


def test_duplicate_name_within_a_suite_is_refused(tmp_path: Path, payload, capsys) -> None:
    a = tmp_path / "digits" / "digits-transfer" / "a.json"
    b = tmp_path / "digits" / "digits-transfer" / "b.json"
    a.parent.mkdir(parents=True)
    a.write_text(json.dumps(payload))
    b.write_text(json.dumps(payload))
    with pytest.raises(RobustEnsError, match=r"b\.json: name: 'zoo_digits_small_cnn_s2' is already the name of .*a\.json"):
        lb.load_entries(tmp_path)
    assert main(["leaderboard", "validate", "--root", str(tmp_path)]) == 2
    assert "b.json: name:" in capsys.readouterr().err
    other = json.loads(json.dumps(payload))
    other["protocol"]["suite"] = "another-suite"  # the same name in another suite is fine
    b.write_text(json.dumps(other))
    assert len(lb.load_entries(tmp_path)) == 2


def test_schema_1_entries_still_validate_beside_schema_2(tmp_path: Path, payload) -> None:
    v1 = {"name": "old", "model": {"name": "old", "architecture": "resnet20", "n_members": 3},
          "protocol": {"suite": "digits-transfer", "suite_version": "1", "dataset": "digits", "n_examples": 40, "seed": 0,
                       "eps": [0.2], "attacks": ["pgd"]},
          "results": {"clean_accuracy": 0.9, "robust_accuracy": {"pgd": {"0.2": 0.25}}, "worst_case": {"0.2": 0.25}}}
    e1 = lb.validate(v1)
    assert isinstance(e1, lb.EntryV1) and e1.schema_version == "1.0"
    write_legacy(e1, tmp_path)
    lb.write(lb.validate(payload), tmp_path)
    table = lb.render(lb.load_entries(tmp_path))
    assert "old" in table and "zoo_digits_small_cnn_s2" in table and "25.00" in table
    with pytest.raises(RobustEnsError, match=r"schema 1\.0: results\.clean_accuracy"):
        lb.validate({**v1, "results": {"clean_accuracy": math.nan}})
    with pytest.raises(RobustEnsError, match="schema_version: '3'"):
        lb.validate({**payload, "schema_version": "3"})


def test_exported_schemas_are_committed_and_current() -> None:
    for path, schema in lb.schema_files(ROOT / "leaderboards").items():
        assert json.loads(path.read_text()) == schema, "run: robust-ens leaderboard render"
    s2 = lb.json_schema("2")
    assert s2["$id"].endswith("entry-2.json") and "results_sha256" in s2["properties"]


def test_committed_entries_validate() -> None:
    entries = lb.load_entries(ROOT / "leaderboards")
    assert all(isinstance(e, lb.Entry | lb.EntryV1) for e in entries)


def test_root_is_option_then_environment_then_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(lb.ENV_ROOT, raising=False)
    assert lb.leaderboard_root() == tmp_path / "leaderboards"
    monkeypatch.setenv(lb.ENV_ROOT, str(tmp_path / "env"))
    assert lb.leaderboard_root() == tmp_path / "env"
    assert lb.leaderboard_root(tmp_path / "opt") == tmp_path / "opt"


def test_attack_suite_entries_rank_attacks_with_a_cell_per_target(tmp_path: Path) -> None:
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import run_suite

    src = (ROOT / "robust_ens" / "bench" / "protocols" / "digits-transfer.toml").read_text()
    toml = tmp_path / "digits-attacks.toml"
    toml.write_text(src.replace('suite = "digits-transfer"', 'suite = "digits-attacks"')
                    .replace('kind = "defense"', 'kind = "attack"')
                    .replace('surrogates = ["zoo2", "cnn3"]', 'surrogates = ["zoo2"]'))  # one surrogate per attack
    targets = [DIGITS, "zoo:digits_small_cnn_s1"]
    summary = run_suite(str(toml), "smoke", targets, tmp_path / "run", progress=False)
    entries = {e.name: e for e in to_entries(summary, "test", run_dir=tmp_path / "run")}
    assert set(entries) == {"mifgsm", "cwa"}
    for e in entries.values():
        lb.validate(e.model_dump(mode="json"))
        assert e.kind == "attack" and {c.target for c in e.results.cells} == set(targets) and len(e.results.cells) == 4
        assert all(c.success_rate is not None for c in e.results.cells) and "mean_success@0.2" in e.results.metrics
        for w in e.results.worst_case:
            assert w.robust_acc == min(c.robust_acc for c in e.results.cells if c.eps == w.eps)
    headers, rows = lb.table_rows(list(entries.values()))
    mean = {k: (e.results.metrics["mean_success@0.1"] + e.results.metrics["mean_success@0.2"]) / 2
            for k, e in entries.items()}
    assert rows[0][1] == max(mean, key=mean.__getitem__)  # the attack that transfers best ranks first
    assert "mean_success@0.2" in headers


def test_corruption_suite_entries_keep_a_cell_per_corruption_and_severity(tmp_path: Path, monkeypatch) -> None:
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import run_suite
    from tests.conftest import require_cifar10

    shared = ROOT.parent / "shared" / "data"
    if "ROBUST_ENS_DATA" not in __import__("os").environ and shared.is_dir():
        monkeypatch.setenv("ROBUST_ENS_DATA", str(shared))
    require_cifar10()  # the corruptions need images of 32x32 or more
    summary = run_suite("cifar10-corruptions", "smoke", ["tests.bench_models:tiny_cifar"], tmp_path / "run",
                        progress=False)
    (e,) = to_entries(summary, "test", run_dir=tmp_path / "run")
    e = lb.validate(e.model_dump(mode="json"))
    assert isinstance(e, lb.Entry) and not e.results.cells and not e.results.worst_case and e.protocol.eps == []
    assert {(c.corruption, c.severity) for c in e.results.corruptions} == {("gaussian_noise", 3), ("brightness", 3)}
    accs = [c.acc for c in e.results.corruptions]
    assert e.results.metrics["mean_corruption_accuracy"] == pytest.approx(sum(accs) / len(accs))
    assert "gaussian_noise@3" in e.numbers()  # regress compares these too
    assert "mean_corruption_accuracy" in lb.render([e])

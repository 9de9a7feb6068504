import json
from pathlib import Path

import pytest

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.errors import RobustEnsError
from tests.cli_helpers import write_legacy

COMMITTED = Path(__file__).resolve().parent.parent / "leaderboards"


def sample(**results):
    return {
        "name": "r20x3-baseline",
        "model": {"name": "r20x3", "architecture": "resnet20", "n_members": 3},
        "protocol": {"suite": "transfer", "suite_version": "1", "dataset": "cifar10-jpeg", "n_examples": 500,
                     "seed": 0, "eps": [0.01, 0.02], "attacks": ["mifgsm", "pgd"]},
        "results": {"clean_accuracy": 0.9, **results},
    }


def test_worst_case_is_min_over_attacks():
    e = lb.validate(sample(robust_accuracy={"mifgsm": {"0.01": 0.5, "0.02": 0.3}, "pgd": {"0.01": 0.4, "0.02": 0.35}}))
    assert e.with_worst_case().results.worst_case == {"0.01": 0.4, "0.02": 0.3}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"results": {"clean_accuracy": "0.9"}}, "clean_accuracy"),  # numbers are numbers, not strings
        ({"results": {"clean_accuracy": 1.5}}, "clean_accuracy"),
        ({"name": "bad name/with slash"}, "name"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_entries_are_refused_with_the_field_named(change, needle):
    with pytest.raises(RobustEnsError, match=needle):
        lb.validate({**sample(), **change})


def test_write_render_and_cli_validate(tmp_path, capsys):
    e = lb.validate(sample(robust_accuracy={"pgd": {"0.01": 0.4}})).with_worst_case()
    with pytest.raises(RobustEnsError, match="schema 1 is read-only legacy"):
        lb.write(e, tmp_path)
    path = write_legacy(e, tmp_path)
    assert path == tmp_path / "cifar10-jpeg" / "transfer" / "r20x3-baseline.json"
    written = lb.render_all(tmp_path)
    md = (tmp_path / "README.md").read_text()
    assert "r20x3-baseline" in md and "40.00" in md
    assert tmp_path / "pages" / "transfer.html" in written
    assert main(["leaderboard", "validate", str(tmp_path)]) == 0
    assert "1 entries valid" in capsys.readouterr().out
    path.write_text(json.dumps({**json.loads(path.read_text()), "results": {"clean_accuracy": "high"}}))
    assert main(["leaderboard", "validate", str(path)]) == 2
    assert "clean_accuracy" in capsys.readouterr().err


def test_committed_schema_is_current_and_entries_validate():
    committed = json.loads((COMMITTED / "schema" / "entry-1.json").read_text())
    assert committed == lb.json_schema("1.0"), "run: robust-ens leaderboard render"
    for entry in lb.load_entries(COMMITTED):
        assert entry.schema_version in lb.SCHEMA_VERSIONS


def test_suites_without_eps_show_and_rank_by_headline_metrics():
    def corr(name, mca, clean):
        d = sample()
        d.update(name=name)
        d["protocol"].update(suite="cifar10-corruptions", eps=[], attacks=[])
        d["results"] = {"clean_accuracy": clean, "metrics": {"mean_corruption_accuracy": mca, "relative_mCE": 80.0,
                                                             "acc/fog/3": 0.5}}
        return lb.validate(d)

    table = lb.render([corr("a", 0.60, 0.95), corr("b", 0.70, 0.90)])
    lines = [line for line in table.splitlines() if line.startswith("|") and line.split("|")[1].strip().isdigit()]
    assert "mean_corruption_accuracy" in table and "acc/fog/3" not in table
    assert lines[0].split("|")[2].strip() == "b" and "70.00" in lines[0] and "80.00" in lines[0]


def test_write_entries_is_all_or_nothing_in_either_layout(tmp_path):
    good = lb.validate(Path(__file__).resolve().parents[1] / "leaderboards" / "digits" / "digits-transfer" / "cnn-s2.json")
    flat = lb.write_entries([good], tmp_path / "run" / "entries", flat=True)
    assert flat == [tmp_path / "run" / "entries" / "cnn-s2.json"]
    (tree,) = lb.write_entries([good], tmp_path / "board")
    assert tree == lb.entry_path(good, tmp_path / "board") and tree.read_text() == flat[0].read_text() == lb.dumps(good)
    bad = good.model_copy(update={"name": "bad name/x"})  # model_copy skips validation; the writer does not
    with pytest.raises(RobustEnsError, match="name"):
        lb.write_entries([good.model_copy(update={"name": "other"}), bad], tmp_path / "none")
    assert not (tmp_path / "none").exists()  # nothing written when any entry is invalid
    with pytest.raises(RobustEnsError, match="would both be written"):
        lb.write_entries([good, good], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()

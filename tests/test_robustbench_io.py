"""RobustBench interop: model_info import and export, and ``robustbench:`` models loaded offline."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.model_info import MISSING_WORDS
from robust_ens.leaderboard.robustbench import (
    ImportResult,
    export_robustbench,
    import_robustbench,
    read_model_info,
    scan_model_info,
)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference" / "robustbench-model-info"
QUIRKS = Path(__file__).resolve().parent / "fixtures" / "robustbench"  # real RobustBench files, see its README
PERCENT = {"clean_acc", "reported", "autoattack_acc", "external", "corruptions_acc", "corruptions_acc_3d",
           "corruptions_mce", "corruptions_mce_3d"}


def _info(**over: Any) -> dict[str, Any]:
    info = {"link": "https://arxiv.org/abs/0000.00000", "name": "A Paper", "authors": "A. Author",
            "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "ICML 2099",
            "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "90.10", "reported": "",
            "autoattack_acc": "60.25", "new_field_from_a_later_robustbench": {"x": 1}}
    info.update(over)
    return info


def _write(root: Path, rel: str, info: Any) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(info))
    return p


def test_import_a_model_info_file_the_test_writes(tmp_path: Path) -> None:
    src = tmp_path / "model_info"
    _write(src, "cifar10/Linf/Mine2099.json", _info())
    (e,) = read_model_info(src)
    assert e.kind == "reference" and e.protocol.suite == "cifar10-whitebox" and e.protocol.dataset == "cifar10"
    assert e.results.clean.acc == pytest.approx(0.901) and e.results.clean.k is None
    (cell,) = e.results.cells
    assert cell.eps == 8 / 255 and cell.robust_acc == pytest.approx(0.6025) and e.worst(8 / 255) is not None
    assert "reported_acc" not in e.results.metrics  # "" stays missing, not 0
    assert e.external and e.external.fields["new_field_from_a_later_robustbench"] == {"x": 1}
    assert e.paper and e.paper.url == "https://arxiv.org/abs/0000.00000"


@pytest.mark.parametrize("over,field,kind", [
    ({"clean_acc": "high"}, "clean_acc", "not a percentage"),
    ({"autoattack_acc": "120.0"}, "autoattack_acc", "not a percentage"),
    ({"reported": True}, "reported", "not a percentage"),
    ({"clean_acc": None}, "clean_acc", "no clean accuracy"),
    ({"clean_acc": "null"}, "clean_acc", "no clean accuracy"),
    ({"corruptions_mce": "lots"}, "corruptions_mce", "not a number"),
    ({"eps": "8/0"}, "eps", "bad eps"),
    ({"eps": "-1"}, "eps", "bad eps"),
    ({"eps": [8, 255]}, "eps", "bad eps"),
    ({"architecture": 5}, "architecture", "not a string"),
    ({"unreliable": "maybe"}, "unreliable", "not true or false"),
])
def test_a_bad_value_skips_its_file_naming_file_and_field(tmp_path: Path, over: dict[str, Any], field: str,
                                                         kind: str, capsys) -> None:
    src = tmp_path / "model_info"
    good = _write(src, "cifar10/Linf/Good2099.json", _info())
    path = _write(src, "cifar10/Linf/Bad.json", _info(**over))
    with pytest.raises(RobustEnsError, match=f"{path}: {field}"):  # the all-or-nothing reader refuses
        read_model_info(src)
    got = import_robustbench(src, tmp_path / "lb")
    assert got.imported == [good] and [(s.path, s.kind) for s in got.skipped] == [(path, kind)]
    assert got.skipped[0].reason.startswith(f"{path}: {field}") and "\n" not in got.skipped[0].reason
    assert main(["leaderboard", "import-robustbench", str(src), "--root", str(tmp_path / "lb2")]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and err == ""
    assert f"imported 1 of 2 RobustBench model_info files into {tmp_path / 'lb2'}" in out
    assert f"skipped 1 files that cannot be imported:\n  {kind}: 1\n    {path}: {field}" in out
    assert main(["leaderboard", "import-robustbench", str(src), "--root", str(tmp_path / "lb3"), "--strict"]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "--strict: 1 of 2" in err and "Traceback" not in err
    assert str(path) in out and not any((tmp_path / "lb3").rglob("*.json"))  # --strict: all or nothing
    # the one file asked for cannot be skipped: it is an error, one line naming file and field
    assert main(["leaderboard", "import-robustbench", str(path), "--root", str(tmp_path / "lb4")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and field in err and "Traceback" not in err


def test_random_bytes_in_a_model_info_file_are_one_line(tmp_path: Path, capsys) -> None:
    p = tmp_path / "cifar10" / "Linf" / "X.json"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(200)))
    assert main(["leaderboard", "import-robustbench", str(p), "--root", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8" in err and str(p) in err
    assert main(["leaderboard", "import-robustbench", str(tmp_path), "--root", str(tmp_path / "lb")]) == 0
    out, err = capsys.readouterr()
    assert "imported 0 of 1" in out and "  not UTF-8: 1" in out and str(p) in out and err == ""
    assert main(["leaderboard", "import-robustbench", str(tmp_path), "--root", str(tmp_path / "lb"), "--strict"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"no RobustBench reference files at {REFERENCE}")
def test_import_the_reference_files_with_their_quirks(tmp_path: Path) -> None:
    got = import_robustbench(REFERENCE, tmp_path / "lb")
    assert isinstance(got, ImportResult) and not got.skipped and not got.warnings
    assert len(got.written) == len(got.imported) == len(list(REFERENCE.rglob("*.json"))) == 8
    entries = {e.name: e for e in lb.load_entries(tmp_path / "lb")}
    a = entries["Alayrac2019Labels"]
    assert a.protocol.suite == "cifar10-whitebox" and a.results.clean.acc == pytest.approx(0.8646)
    assert a.worst(8 / 255).robust_acc == pytest.approx(0.5603) and a.results.metrics["reported_acc"] == pytest.approx(0.563)
    alex = entries["AlexNet"]  # eps null, reported null, corruptions fields
    assert alex.protocol.eps == [] and not alex.results.cells and alex.results.metrics["mCE"] == 100.0
    assert alex.results.metrics["mean_corruption_accuracy"] == pytest.approx(0.2112)
    assert "reported_acc" not in entries["Hendrycks2020AugMix"].results.metrics  # reported ""
    assert entries["Augustin2020Adversarial"].protocol.eps == [0.5]  # L2, eps "0.5"
    assert entries["Amini2024MeanSparse_Swin-L"].results.metrics["external_acc"] == pytest.approx(0.5892)
    assert entries["Wong2020Fast"].protocol.n_examples == 5000
    lb.render_all(tmp_path / "lb")
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "Alayrac2019Labels (imported)" in readme and "worst @ 8/255 %" in readme


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"no RobustBench reference files at {REFERENCE}")
def test_export_round_trip_gives_back_robustbench_files(tmp_path: Path, capsys) -> None:
    assert main(["leaderboard", "import-robustbench", str(REFERENCE), "--root", str(tmp_path / "lb")]) == 0
    assert main(["leaderboard", "export", "--format", "robustbench", "--out", str(tmp_path / "out"),
                 "--root", str(tmp_path / "lb")]) == 0
    for original in REFERENCE.rglob("*.json"):
        rel = original.relative_to(REFERENCE)
        want = json.loads(original.read_text())
        got = json.loads((tmp_path / "out" / rel).read_text())
        assert set(got) == set(want), rel
        for k, v in want.items():
            if k in PERCENT and isinstance(v, str) and v != "":
                assert isinstance(got[k], str) and float(got[k]) == pytest.approx(float(v)), (rel, k)  # percent strings
            else:
                assert got[k] == v, (rel, k)


# --------------------------------------------------------------------------- RobustBench's quirks


def _import_one(tmp_path: Path, rel: str, info: Any) -> lb.Entry:
    src = tmp_path / "model_info"
    _write(src, rel, info)
    got = import_robustbench(src, tmp_path / "lb")
    assert not got.skipped, got.skipped
    (entry,) = lb.load_entries(tmp_path / "lb")
    assert isinstance(entry, lb.Entry)
    return entry


@pytest.mark.parametrize("missing", [None, *sorted(MISSING_WORDS), "None", "N/A", "NaN", " NULL "])
def test_robustbench_spellings_of_a_missing_value_are_missing_never_zero(tmp_path: Path, missing: Any) -> None:
    e = _import_one(tmp_path, "cifar10/Linf/M.json", _info(reported=missing, external=missing, footnote=missing,
                                                           venue=missing, authors=missing, unreliable=missing))
    assert "reported_acc" not in e.results.metrics and "external_acc" not in e.results.metrics
    assert e.model.description == "" and e.paper and e.paper.venue is None and e.paper.authors is None
    assert not e.results.flags
    assert e.results.clean.acc == pytest.approx(0.901)  # the rest of the file is imported as usual
    assert e.external and e.external.fields["reported"] == missing  # the original value is kept as written


@pytest.mark.parametrize("field,value", [("clean_acc", "NaN"), ("eps", "null"), ("corruptions_mce", "N/A")])
def test_nan_and_words_in_numeric_fields_are_missing(tmp_path: Path, field: str, value: Any) -> None:
    info = _info(**{"corruptions_mce": "50.0", field: value})
    src = tmp_path / "model_info"
    _write(src, "cifar10/Linf/M.json", info)
    got = scan_model_info(src)
    if field == "clean_acc":  # the one field every entry needs: missing means the file is skipped
        assert [s.kind for s in got.skipped] == ["no clean accuracy"]
        return
    ((_, e),) = got.entries
    assert (e.protocol.eps == [] and not e.results.cells) if field == "eps" else "mCE" not in e.results.metrics


def test_a_nan_literal_is_missing_and_the_entry_stays_valid_json(tmp_path: Path) -> None:
    p = tmp_path / "model_info" / "cifar10" / "Linf" / "M.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(_info(reported="__R__", extra=[1.0, "__R__"])).replace('"__R__"', "NaN"))
    got = import_robustbench(tmp_path / "model_info", tmp_path / "lb")
    assert not got.skipped
    (e,) = lb.load_entries(tmp_path / "lb")
    assert "reported_acc" not in e.results.metrics and e.external.fields["extra"] == [1.0, None]


@pytest.mark.parametrize("rel,eps,want_eps,suite", [
    ("cifar10/Linf/M.json", "8/255", 8 / 255, "cifar10-whitebox"),
    ("cifar10/Linf/M.json", " 8 / 255 ", 8 / 255, "cifar10-whitebox"),
    ("cifar10/Linf/M.json", 8 / 255, 8 / 255, "cifar10-whitebox"),  # a JSON number, as RobustBench's update_json writes
    ("cifar10/Linf/M.json", "0.031", 0.031, "robustbench-cifar10-Linf"),  # 7.9/255: not the 8/255 leaderboard
    ("cifar10/L2/M.json", "0.5", 0.5, "robustbench-cifar10-L2"),
    ("cifar10/L2/M.json", 0.5, 0.5, "robustbench-cifar10-L2"),
    ("imagenet/Linf/M.json", "4/255", 4 / 255, "robustbench-imagenet-Linf"),
    ("cifar100/Linf/M.json", "8/255", 8 / 255, "robustbench-cifar100-Linf"),
])
def test_eps_in_every_spelling_robustbench_uses(tmp_path: Path, rel: str, eps: Any, want_eps: float,
                                                suite: str) -> None:
    e = _import_one(tmp_path, rel, _info(eps=eps, dataset=rel.split("/")[0]))
    assert e.protocol.suite == suite and e.protocol.eps == [pytest.approx(want_eps, abs=1e-15)]
    (cell,) = e.results.cells
    assert cell.eps == pytest.approx(want_eps, abs=1e-15) and cell.robust_acc == pytest.approx(0.6025)
    assert e.protocol.threat_model == rel.split("/")[1]


def test_a_whitebox_file_without_eps_has_no_cell(tmp_path: Path) -> None:
    e = _import_one(tmp_path, "cifar10/Linf/M.json", _info(eps=None))
    assert e.protocol.eps == [] and not e.results.cells and e.protocol.suite == "robustbench-cifar10-Linf"


@pytest.mark.parametrize("eps", ["8/255", "0.5", None])
def test_the_eps_of_a_corruptions_file_is_a_training_eps_kept_aside(tmp_path: Path, eps: Any) -> None:
    info = _info(eps=eps, corruptions_acc="81.5", corruptions_mce="55.5")
    del info["autoattack_acc"]
    e = _import_one(tmp_path, "cifar10/corruptions/M.json", info)
    assert e.protocol.suite == "cifar10-corruptions" and e.protocol.task == "corruptions"
    assert e.protocol.eps == [] and not e.results.cells
    assert e.results.metrics["mean_corruption_accuracy"] == pytest.approx(0.815) and e.results.metrics["mCE"] == 55.5
    assert e.external and e.external.fields["eps"] == eps


@pytest.mark.parametrize("value,acc", [("0.00", 0.0), ("0.0", 0.0), (60.25, 0.6025), (0, 0.0), ("60.25%", 0.6025),
                                       (" 60.25 ", 0.6025), ("100", 1.0)])
def test_percentages_as_strings_numbers_and_zeros(tmp_path: Path, value: Any, acc: float) -> None:
    e = _import_one(tmp_path, "cifar10/Linf/M.json", _info(autoattack_acc=value))
    assert e.worst(8 / 255).robust_acc == pytest.approx(acc)


@pytest.mark.parametrize("value,flagged", [(True, True), ("true", True), ("True", True), (False, False),
                                           ("false", False), (None, False)])
def test_unreliable_as_a_boolean_or_a_boolean_string(tmp_path: Path, value: Any, flagged: bool) -> None:
    e = _import_one(tmp_path, "cifar10/Linf/M.json", _info(unreliable=value))
    assert bool(e.results.flags) is flagged


def test_titles_lose_surrounding_blanks_and_export_gives_them_back(tmp_path: Path) -> None:
    e = _import_one(tmp_path, "cifar10/Linf/M.json", _info(name=" A Paper\n", venue="N/A", authors=""))
    assert e.paper and e.paper.title == "A Paper" and e.paper.venue is None and e.paper.authors is None
    written, _ = export_robustbench([e], tmp_path / "out")
    info = json.loads(written[0].read_text())
    assert info["name"] == " A Paper\n" and info["venue"] == "N/A" and info["authors"] == ""


def test_a_byte_order_mark_is_not_content(tmp_path: Path) -> None:
    p = tmp_path / "model_info" / "cifar10" / "Linf" / "M.json"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_info()).encode())
    (e,) = read_model_info(tmp_path / "model_info")
    assert e.results.clean.acc == pytest.approx(0.901)


DUPLICATE = """{"clean_acc": "90.10", "eps": "8/255", "dataset": "cifar10", "autoattack_acc": "50.00",
 "reported": "50.00", "autoattack_acc": "55.00", "architecture": "WRN", "reported": "51.00", "reported": "52.00"}"""


def test_a_key_written_twice_keeps_the_last_value_with_a_warning(tmp_path: Path, capsys) -> None:
    p = tmp_path / "model_info" / "cifar10" / "Linf" / "Dup.json"
    p.parent.mkdir(parents=True)
    p.write_text(DUPLICATE)
    got = import_robustbench(tmp_path / "model_info", tmp_path / "lb")
    assert got.imported == [p] and not got.skipped
    assert got.warnings == [f"{p}: autoattack_acc: written 2 times; the last value '55.00' is used (earlier: '50.00')",
                            f"{p}: reported: written 3 times; the last value '52.00' is used (earlier: '50.00', '51.00')"]
    (e,) = lb.load_entries(tmp_path / "lb")
    assert e.worst(8 / 255).robust_acc == pytest.approx(0.55) and e.results.metrics["reported_acc"] == pytest.approx(0.52)
    with pytest.warns(UserWarning) as caught:  # the all-or-nothing reader warns the usual way
        read_model_info(p)
    assert [str(w.message) for w in caught] == got.warnings
    assert main(["leaderboard", "import-robustbench", str(tmp_path / "model_info"), "--root", str(tmp_path / "lb")]) == 0
    out, err = capsys.readouterr()
    warned = [ln for ln in err.splitlines() if "written" in ln]
    assert len(warned) == 2 and all(ln.startswith("WARNING ") and str(p) in ln for ln in warned)
    assert "imported 1 of 1" in out and "skipped" not in out


@pytest.mark.skipif(not QUIRKS.is_dir(), reason=f"no RobustBench quirk fixtures at {QUIRKS}")
def test_the_real_files_with_robustbench_quirks(tmp_path: Path, capsys) -> None:
    got = import_robustbench(QUIRKS, tmp_path / "lb")
    files = sorted(QUIRKS.rglob("*.json"))
    assert len(files) == 6 and sorted(got.imported) == files and not got.skipped
    entries = {(e.protocol.dataset, e.name): e for e in lb.load_entries(tmp_path / "lb")}
    assert len(entries) == 6
    # "reported": "null" is missing, and "corruptions_acc" written twice (both "92.78") is imported once, warned
    card = entries["cifar10", "Diffenderfer2021Winning_LRR_CARD_Deck"]
    assert "reported_acc" not in card.results.metrics and card.protocol.suite == "cifar10-corruptions"
    assert card.results.metrics["mean_corruption_accuracy"] == pytest.approx(0.9278)
    assert card.results.clean.acc == pytest.approx(0.9656)
    (dup,) = [w for w in got.warnings if "written" in w]
    assert "Diffenderfer2021Winning_LRR_CARD_Deck.json: corruptions_acc: written 2 times" in dup and "(all equal)" in dup
    # a cifar100 file that says "dataset": "cifar10" is filed under cifar100, beside (not over) the cifar10 model
    c100, c10 = entries["cifar100", "Hendrycks2019Using"], entries["cifar10", "Hendrycks2019Using"]
    assert c100.protocol.suite == "robustbench-cifar100-Linf" and c100.results.clean.acc == pytest.approx(0.5923)
    assert c10.protocol.suite == "cifar10-whitebox" and c10.results.clean.acc == pytest.approx(0.8711)
    assert c100.external and c100.external.path == "cifar100/Linf/Hendrycks2019Using.json"
    (ds,) = [w for w in got.warnings if "dataset" in w]
    assert "cifar100/Linf/Hendrycks2019Using.json: dataset: the file says 'cifar10' but lies in cifar100/" in ds
    # eps "0.031" stays 0.031, so TRADES is not ranked on the 8/255 board
    trades = entries["cifar10", "Zhang2019Theoretically"]
    assert trades.protocol.eps == [0.031] and trades.protocol.suite == "robustbench-cifar10-Linf"
    # a title ending in a newline, a robust accuracy of "0.00"; venue "N/A" and authors ""
    clustr = entries["cifar10", "Alfarra2020ClusTR"]
    assert clustr.paper and clustr.paper.title == "ClusTR: Clustering Training for Robustness"
    assert clustr.worst(8 / 255).robust_acc == 0.0
    std = entries["cifar10", "Standard"]
    assert std.paper and std.paper.venue is None and std.paper.authors is None and std.protocol.eps == [0.5]
    # the command: warnings on stderr, the summary on stdout, exit 0
    assert main(["leaderboard", "import-robustbench", str(QUIRKS), "--root", str(tmp_path / "lb2"), "--strict"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"imported 6 of 6 RobustBench model_info files into {tmp_path / 'lb2'}"
    assert len([ln for ln in err.splitlines() if ln.startswith("WARNING")]) == 2 and "Traceback" not in err
    # and export gives RobustBench its files back (the dataset field corrected to the folder's)
    written, _ = export_robustbench(lb.load_entries(tmp_path / "lb"), tmp_path / "out")
    for original in files:
        rel = original.relative_to(QUIRKS)
        want, back = json.loads(original.read_text()), json.loads((tmp_path / "out" / rel).read_text())
        assert set(back) == set(want), rel
        for k, v in want.items():
            if k == "dataset":
                assert back[k] == rel.parts[0]
            elif k in PERCENT and v not in ("", "null", None):
                assert float(back[k]) == pytest.approx(float(v)), (rel, k)
            else:
                assert back[k] == v, (rel, k)


def test_broken_files_are_skipped_the_rest_imported_and_the_summary_groups_reasons(tmp_path: Path, capsys) -> None:
    src = tmp_path / "model_info"
    good = [_write(src, "cifar10/Linf/A.json", _info()), _write(src, "cifar10/L2/B.json", _info(eps="0.5"))]
    not_json = src / "cifar10" / "Linf" / "NotJson.json"
    not_json.write_text('{"clean_acc": "90.1",')
    not_object = _write(src, "cifar10/Linf/List.json", [1, 2])
    high = _write(src, "cifar10/Linf/High.json", _info(clean_acc="high"))
    high2 = _write(src, "cifar100/Linf/High2.json", _info(autoattack_acc="-3", dataset="cifar100"))
    (src / "cifar10" / "corruptions").mkdir()
    (src / "cifar10" / "corruptions" / "unaggregated_results.csv").write_text("a,b\n")  # RobustBench's CSVs: not read
    got = import_robustbench(src, tmp_path / "lb")
    assert got.imported == sorted(good) and len(got.written) == 2 and all(p.is_file() for p in got.written)
    assert len(got.files) == 6
    assert {(s.path, s.kind) for s in got.skipped} == {
        (not_json, "not valid JSON"), (not_object, "not a JSON object"), (high, "not a percentage"),
        (high2, "not a percentage")}
    assert list(got.skipped_by_kind()) == ["not a percentage", "not a JSON object", "not valid JSON"]
    assert main(["leaderboard", "import-robustbench", str(src), "--root", str(tmp_path / "lb2")]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:8] == [
        f"imported 2 of 6 RobustBench model_info files into {tmp_path / 'lb2'}",
        "skipped 4 files that cannot be imported:",
        "  not a percentage: 2",
        f"    {high}: clean_acc: 'high' is not a percentage",  # in file order within a reason
        f"    {high2}: autoattack_acc: '-3' is outside 0..100",
        "  not a JSON object: 1",
        f"    {not_object}: a RobustBench model_info file is a JSON object, got list",
        "  not valid JSON: 1",
    ]
    assert lines[8].startswith(f"    RobustBench model_info file {not_json} is not valid JSON: Expecting ")
    assert all(ln.startswith("wrote ") for ln in lines[9:]) and err == ""
    assert len(lb.entry_files(tmp_path / "lb2")) == 2
    # --strict: the same summary, one error line, exit 2, and nothing imported
    assert main(["leaderboard", "import-robustbench", str(src), "--root", str(tmp_path / "lb3"), "--strict"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "imported 0 of 6 RobustBench model_info files (--strict: a file cannot be imported)"
    assert "  not valid JSON: 1" in out
    assert err.strip() == ("robust-ens leaderboard: error: --strict: 4 of 6 RobustBench model_info files cannot be "
                           "imported (listed above); nothing was imported")
    assert not any((tmp_path / "lb3").rglob("*.json"))


def test_two_files_that_would_be_one_entry_import_the_first(tmp_path: Path) -> None:
    src = tmp_path / "model_info"
    first = _write(src, "cifar10/Linf/M.json", _info())
    second = _write(src, "other/cifar10/Linf/M.json", _info(clean_acc="10.0"))
    got = import_robustbench(src, tmp_path / "lb")
    assert got.imported == [first] and [(s.path, s.kind) for s in got.skipped] == [(second, "same entry as another file")]
    (e,) = lb.load_entries(tmp_path / "lb")
    assert e.results.clean.acc == pytest.approx(0.901)


def test_outside_robustbench_layout_the_fields_say_dataset_and_threat(tmp_path: Path) -> None:
    p = _write(tmp_path, "mine/M.json", _info(dataset="cifar100", threat_model="Linf"))
    (e,) = read_model_info(p)
    assert e.protocol.dataset == "cifar100" and e.protocol.suite == "robustbench-cifar100-Linf"
    q = _write(tmp_path, "mine/N.json", _info())
    with pytest.raises(RobustEnsError, match=f"{q}: threat_model: not in a folder named after one"):
        read_model_info(q)


def _ours_whitebox(name: str, clean: int, robust: int) -> dict[str, Any]:
    n = 100
    from robust_ens.bench.aggregate import wilson

    ci = list(wilson(robust, n))
    return {
        "schema_version": "2", "kind": "defense", "name": name,
        "model": {"name": name, "architecture": "resnet20", "n_members": 3},
        "protocol": {"suite": "cifar10-whitebox", "suite_version": 1, "tier": "small", "task": "whitebox",
                     "dataset": "cifar10-jpeg", "n_examples": n, "seed": 0, "eps": [8 / 255]},
        "results": {"clean": {"acc": clean / n, "k": clean, "n": n, "ci95": list(wilson(clean, n))},
                    "cells": [{"attack": "autoattack-standard", "surrogate": "white-box", "eps": 8 / 255,
                               "robust_acc": robust / n, "k": robust, "n": n, "ci95": ci}],
                    "worst_case": [{"eps": 8 / 255, "robust_acc": robust / n, "k": robust, "n": n, "ci95": ci,
                                    "min_cell_acc": robust / n}]},
    }


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"no RobustBench reference files at {REFERENCE}")
def test_imported_references_sit_beside_ours_in_the_whitebox_table(tmp_path: Path) -> None:
    root = tmp_path / "lb"
    lb.write(lb.validate(_ours_whitebox("r20x3-at", 80, 45)), root)
    import_robustbench(REFERENCE / "cifar10" / "Linf", root)
    readme = (lb.render_all(root), (root / "README.md").read_text())[1]
    section = readme.split("### cifar10-whitebox, tier small")[1].split("\n## ")[0]
    assert "r20x3-at " in section and "Alayrac2019Labels (imported)" in section
    assert "Datasets as measured: cifar10, cifar10-jpeg" in readme  # each suite says what data its numbers are on
    # ours is never replaced by an import of the same name
    (root / "cifar10" / "cifar10-whitebox" / "Alayrac2019Labels.json").unlink()
    ours = lb.write(lb.validate(_ours_whitebox("Alayrac2019Labels", 80, 45)), root)
    before = ours.read_bytes()
    got = import_robustbench(REFERENCE / "cifar10" / "Linf", root)  # the other file is still imported
    (skip,) = got.skipped
    assert skip.path.name == "Alayrac2019Labels.json" and skip.kind == "name taken by one of our entries"
    assert "already one of our entries" in skip.reason and ours.read_bytes() == before
    assert [p.name for p in got.imported] == ["Addepalli2021Towards_RN18.json"]
    with pytest.raises(RobustEnsError, match="already one of our entries"):  # asked for by name: an error
        import_robustbench(REFERENCE / "cifar10" / "Linf" / "Alayrac2019Labels.json", root)


def test_export_of_our_entries_uses_robustbench_names_and_percent_strings(tmp_path: Path) -> None:
    ours = lb.validate(_ours_whitebox("r20x3-at", 80, 45))
    transfer = dict(_ours_whitebox("t", 80, 45))
    transfer["protocol"] = {**transfer["protocol"], "suite": "cifar10-transfer", "task": "transfer"}
    written, skipped = export_robustbench([ours, lb.validate(transfer)], tmp_path)
    (path,) = written
    info = json.loads(path.read_text())
    assert path == tmp_path / "cifar10-jpeg" / "Linf" / "r20x3-at.json"
    assert info["clean_acc"] == "80.00" and info["autoattack_acc"] == "45.00" and info["eps"] == "8/255"
    assert skipped and "transfer" in skipped[0]


# --------------------------------------------------------------------------- robustbench: models, offline

RB_NAME = "Addepalli2021Towards_RN18"


def _robustbench_or_skip() -> None:
    from robust_ens.models.robustbench import import_robustbench

    try:
        import_robustbench()
    except RobustEnsError as err:
        pytest.skip(str(err))


def test_robustbench_model_loads_offline_from_a_checkpoint_the_test_makes(tmp_path: Path, monkeypatch) -> None:
    _robustbench_or_skip()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from robust_ens import models
    from robust_ens.bench.targets import resolve_target
    from robust_ens.models.checkpoint import sha256_file
    from robust_ens.models.robustbench import ENV_DIR

    torch.manual_seed(0)
    ref = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][RB_NAME]["model"]().eval()
    ckpt = tmp_path / "models" / "cifar10" / "Linf" / f"{RB_NAME}.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)  # DataParallel keys
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "models"))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("robustbench: tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    m = models.load(f"robustbench:cifar10/Linf/{RB_NAME}")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    assert m.checkpoint["sha256"] == sha256_file(ckpt)
    t = resolve_target(f"robustbench:cifar10/Linf/{RB_NAME}", dataset="cifar10")
    assert t.sha256s == [sha256_file(ckpt)]
    with pytest.raises(RobustEnsError, match=r"no checkpoint at .*Standard\.pt; robust-ens does not download"):
        models.load("robustbench:cifar10/Linf/Standard")
    with pytest.raises(RobustEnsError, match="no model 'Nope'"):
        models.load("robustbench:cifar10/Linf/Nope")
    torch.save(ref, ckpt)  # a pickled module, not tensors: never unpickled
    with pytest.raises(RobustEnsError, match="not a tensors-only checkpoint"):
        models.load(f"robustbench:cifar10/Linf/{RB_NAME}")


def test_a_missing_robustbench_dependency_says_what_to_install(monkeypatch) -> None:
    from robust_ens.models.robustbench import import_robustbench

    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "geotorch", None)  # as if geotorch were not installed
    with pytest.raises(RobustEnsError) as err:
        import_robustbench()
    msg = str(err.value)
    assert "pip install 'robust-ens[robustbench]'" in msg
    assert "pip install geotorch" in msg or "pip install robustbench" in msg  # robustbench itself may be absent
    assert "\n" not in msg

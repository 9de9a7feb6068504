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
from robust_ens.robustbench_io import export_robustbench, import_robustbench, read_model_info

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference" / "robustbench-model-info"
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


@pytest.mark.parametrize("over,field", [
    ({"clean_acc": "high"}, "clean_acc"),
    ({"autoattack_acc": "120.0"}, "autoattack_acc"),
    ({"clean_acc": None}, "clean_acc"),
    ({"eps": "8/0"}, "eps"),
    ({"eps": "-1"}, "eps"),
    ({"architecture": 5}, "architecture"),
])
def test_bad_model_info_values_name_file_and_field(tmp_path: Path, over: dict[str, Any], field: str, capsys) -> None:
    src = tmp_path / "model_info"
    path = _write(src, "cifar10/Linf/Bad.json", _info(**over))
    with pytest.raises(RobustEnsError, match=f"{path}: {field}"):
        read_model_info(src)
    assert main(["leaderboard", "import-robustbench", str(src), "--root", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and field in err and "Traceback" not in err


def test_random_bytes_in_a_model_info_file_are_one_line(tmp_path: Path, capsys) -> None:
    p = tmp_path / "cifar10" / "Linf" / "X.json"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(200)))
    assert main(["leaderboard", "import-robustbench", str(tmp_path), "--root", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8" in err and str(p) in err


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"no RobustBench reference files at {REFERENCE}")
def test_import_the_reference_files_with_their_quirks(tmp_path: Path) -> None:
    written = import_robustbench(REFERENCE, tmp_path / "lb")
    assert len(written) == len(list(REFERENCE.rglob("*.json"))) == 8
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
    lb.write(lb.validate(_ours_whitebox("Alayrac2019Labels", 80, 45)), root)
    (root / "cifar10" / "cifar10-whitebox" / "Alayrac2019Labels.json").unlink()
    with pytest.raises(RobustEnsError, match="already one of our entries"):
        import_robustbench(REFERENCE / "cifar10" / "Linf", root)


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

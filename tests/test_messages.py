"""Messages that fit the command they come from (issue 28, item 5).

* a missing dataset names ``ROBUST_ENS_DATA``, where it looked and the layout expected, and only
  options the running command has (a Python caller gets ``root=`` and ``download=True``);
* an unwritable ``--out`` folder is named as the user gave it, never an internal probe file;
* a state dict that does not fit its model names the first missing and unexpected keys, their
  counts, and the first key of another shape with both shapes, in one line;
* ``robust-ens --quiet regress`` prints one summary line when all is well.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from robust_ens import data, models
from robust_ens.cli import build_parser, main
from robust_ens.errors import CheckpointError, DatasetNotFoundError, RobustEnsError
from tests.cli_helpers import one_error_line

REPO = Path(__file__).resolve().parent.parent
BOARD = REPO / "leaderboards"
ZOO_CIFAR = "zoo:baseline-r20x3-5k"
DOWNLOAD_COMMAND = "'robust-ens data cifar10 --download'"


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


OPTIONS = {cmd: set(p._option_string_actions) for cmd, p in _leaves(build_parser())}


def _named_options(line: str) -> set[str]:
    """The ``--options`` a message names, the quoted ``robust-ens data`` command left out."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line.replace(DOWNLOAD_COMMAND, "")))


@pytest.fixture
def no_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No CIFAR-10 anywhere: ``ROBUST_ENS_DATA`` unset and an empty cache."""
    monkeypatch.delenv("ROBUST_ENS_DATA", raising=False)
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    assert data.find_cifar10(split="test")[0] is None
    return tmp_path


def _regress_board(tmp: Path) -> list[str]:
    root = tmp / "lb"
    dst = root / "cifar10-jpeg" / "cifar10-transfer" / "baseline-r20x3-5k.json"
    dst.parent.mkdir(parents=True)
    shutil.copy(BOARD / "cifar10-jpeg" / "cifar10-transfer" / "baseline-r20x3-5k.json", dst)
    return ["regress", "--root", str(root), "--out", str(tmp / "re")]


# Every command that loads a dataset, run where CIFAR-10 is missing (each fails before any real work).
DATA_COMMANDS = {
    ("train",): lambda t: ["train", "--data", "cifar10", "--arch", "small_cnn", "--members", "1", "--epochs", "1",
                           "--out", str(t / "train")],
    ("attack",): lambda t: ["attack", "--attack", "pgd", "--surrogate", ZOO_CIFAR, "--data", "cifar10", "--n", "4",
                            "--out", str(t / "adv.safetensors")],
    ("bench", "run"): lambda t: ["bench", "run", "cifar10-transfer", "--tier", "smoke", "--target",
                                 "tests.bench_models:tiny_cifar", "--out", str(t / "bench")],
    ("submit",): lambda t: ["submit", "--model", "tests.bench_models:tiny_cifar", "--suite", "cifar10-transfer",
                            "--tier", "smoke", "--name", "tiny", "--root", str(t / "board"), "--out", str(t / "sub")],
    ("corruptions", "evaluate"): lambda t: ["corruptions", "evaluate", "--model", ZOO_CIFAR, "--data", "cifar10",
                                            "--n", "4", "--out", str(t / "corr")],
    ("data",): lambda t: ["data", "cifar10"],
    ("zoo",): lambda t: ["zoo", "rebuild", "--dataset", "cifar10", "--only", "baseline-r20x3-5k", "--out",
                         str(t / "zoo")],
    ("regress",): _regress_board,
}


@pytest.mark.parametrize("cmd", list(DATA_COMMANDS), ids=" ".join)
def test_a_missing_dataset_names_only_the_commands_own_options(cmd, no_cifar: Path, capsys) -> None:
    assert main(["--quiet", *DATA_COMMANDS[cmd](no_cifar)]) == 2
    line = one_error_line(capsys)
    assert "CIFAR-10" in line and "not found" in line, line
    assert "ROBUST_ENS_DATA is not set" in line and "set ROBUST_ENS_DATA to a folder" in line
    assert "cifar10-jpeg/{train,test}/<class>/*.jpg" in line and "cifar-10-batches-py" in line  # the layout
    assert str(no_cifar / "cache" / "data") in line  # where it looked
    assert "root=" not in line and "download=True" not in line  # a Python caller's words, not a command's
    assert _named_options(line) <= OPTIONS[cmd], (cmd, _named_options(line) - OPTIONS[cmd], line)
    if cmd == ("train",):
        assert "--data-root FOLDER" in line
    elif cmd == ("data",):
        assert "--root FOLDER" in line and "add --download" in line and DOWNLOAD_COMMAND not in line
    else:
        assert DOWNLOAD_COMMAND in line and "--data-root" not in line


def test_commands_without_cifar10_fall_back_or_never_need_it(no_cifar: Path) -> None:
    from robust_ens import demo

    assert not demo.cifar10_available()  # ``demo`` then runs the digits demo instead of failing
    assert data.load_uint8("digits", "test")[1].numel() == data.DIGITS_TEST  # ``quickstart``'s data is embedded


def test_the_looked_in_list_names_the_env_folder_and_a_given_root(no_cifar: Path, monkeypatch) -> None:
    monkeypatch.setenv("ROBUST_ENS_DATA", str(no_cifar / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        data.load_uint8("cifar10", "test", root=no_cifar / "mine")
    msg = str(info.value)
    assert f"ROBUST_ENS_DATA={no_cifar / 'nowhere'}" in msg
    assert str(no_cifar / "mine" / "cifar10-jpeg" / "test") in msg and str(no_cifar / "nowhere" / "test") in msg
    # a Python caller is told about its own arguments
    assert "root=FOLDER" in msg and "download=True" in msg and "--" not in msg


def test_a_missing_split_names_split_only_where_the_command_has_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(RobustEnsError, match=r"split=") as info:
        data.check_split("digits", "val")
    assert "--split" not in str(info.value)
    assert main(["--quiet", "attack", "--attack", "pgd", "--surrogate", "zoo:digits_small_cnn_s0", "--data", "digits",
                 "--split", "val", "--n", "4", "--out", str(tmp_path / "adv.safetensors")]) == 2
    line = one_error_line(capsys)
    assert "no split 'val'" in line and "pass one with --split" in line
    flat = tmp_path / "flat"  # an image folder without split folders: only a test split, so train cannot use it
    (flat / "a").mkdir(parents=True)
    (flat / "b").mkdir()
    assert main(["--quiet", "train", "--data", f"imagefolder:{flat}", "--out", str(tmp_path / "tr")]) == 2
    line = one_error_line(capsys)
    assert "no split 'train'" in line and "--split" not in line and "split=" not in line, line
    assert _named_options(line) <= OPTIONS[("train",)]


def test_a_missing_image_folder_names_the_option_it_came_from(tmp_path: Path, capsys) -> None:
    assert main(["--quiet", "data", f"imagefolder:{tmp_path / 'gone'}"]) == 2
    line = one_error_line(capsys)
    assert f"image folder {tmp_path / 'gone'} does not exist" in line and "--data" not in line
    assert main(["--quiet", "train", "--data", f"imagefolder:{tmp_path / 'gone'}", "--out", str(tmp_path / "t")]) == 2
    assert one_error_line(capsys).startswith("robust-ens train: error: --data: image folder")


# ------------------------------------------------------------------------------------- --out


@pytest.mark.parametrize("argv", [["quickstart"], ["demo"], ["regress", "--tier", "smoke"]], ids=lambda a: a[0])
def test_an_unwritable_out_folder_is_named_as_given(argv, tmp_path: Path, monkeypatch, capsys) -> None:
    from robust_ens.commands import common

    def refuse(folder: Path) -> OSError:
        return PermissionError(13, "Permission denied", str(folder / ".robust-ens-probe-x"))

    monkeypatch.setattr(common, "_probe", refuse)  # root may write anywhere, so refuse as a read-only disk would
    out = tmp_path / "runs" / "mine"
    assert main(["--quiet", *argv, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"--out {out}: cannot create this folder inside {tmp_path} (Permission denied)" in line, line
    assert "probe" not in line
    out.mkdir(parents=True)
    assert main(["--quiet", *argv, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"--out {out}: cannot write into this folder (Permission denied)" in line and "probe" not in line


def test_an_out_folder_below_a_file_names_both(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    assert main(["--quiet", "quickstart", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"--out {out}: {tmp_path / 'afile'} is a file, so the folder cannot be created there" in line
    assert "probe" not in line


# ------------------------------------------------------------------------------- state dicts


def _wrong_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with 5 keys dropped, 4 foreign ones added and one reshaped."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    keys = list(state)
    for k in keys[-5:]:
        del state[k]
    for i in range(4):
        state[f"extra.{i}"] = torch.zeros(1)
    state[keys[0]] = torch.zeros(3, *state[keys[0]].shape[1:])
    return state


def test_state_mismatch_names_keys_counts_and_the_first_shape() -> None:
    from robust_ens.models.weights_io import state_mismatch

    model = models.create("small_cnn", num_classes=10, in_chans=3, width=8)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    keys = list(own)
    why = state_mismatch(own, {k: tuple(v.shape) for k, v in _wrong_state(model).items()})
    assert why.startswith(f"5 missing ({keys[-5]}, {keys[-4]}, {keys[-3]}, ... 2 more); ")
    assert "4 unexpected (extra.0, extra.1, extra.2, ... 1 more)" in why
    assert f"1 with other shapes (first: {keys[0]}: model {list(own[keys[0]])}, file [3, " in why
    assert state_mismatch(own, own) == ""


def test_weights_that_do_not_fit_a_factory_model_are_one_line(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    from tests.bench_models import tiny_cifar

    path = tmp_path / "w.safetensors"
    save_file(_wrong_state(tiny_cifar()), str(path))
    assert main(["--quiet", "bench", "run", "digits-transfer", "--target", "tests.bench_models:tiny_cifar",
                 "--weights", str(path), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert f"--weights {path} does not fit the model: 5 missing (" in line, line
    assert "4 unexpected (extra.0" in line and "1 with other shapes (first: " in line


def test_a_checkpoint_whose_weights_do_not_fit_its_record_names_the_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from robust_ens.models.checkpoint import load_checkpoint, save_checkpoint, sha256_file

    model = models.create("small_cnn", num_classes=10, in_chans=3, width=8)
    weights = save_checkpoint(model, tmp_path / "m")
    save_file(_wrong_state(model), str(weights))
    record = json.loads((tmp_path / "m.json").read_text())
    record["sha256"] = sha256_file(weights)  # a consistent record: only the keys tell
    (tmp_path / "m.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "m")
    msg = str(info.value)
    assert "\n" not in msg and "do not fit the architecture 'small_cnn'" in msg
    assert "5 missing (net." in msg and "... 2 more" in msg and "4 unexpected (extra.0" in msg
    assert "1 with other shapes (first: net." in msg and "record [" in msg and "file [3, " in msg


# ---------------------------------------------------------------------------------- regress


@pytest.fixture
def smoke_board(tmp_path: Path) -> Path:
    """One committed digits smoke entry, one small-tier CIFAR-10 entry and one imported reference entry."""
    root = tmp_path / "lb"
    for rel in ("digits/digits-transfer/cnn-s2.json", "cifar10-jpeg/cifar10-transfer/baseline-r20x3-5k.json",
                "imagenet/robustbench-imagenet-Linf/Wong2020Fast.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BOARD / rel, root / rel)
    return root


def test_quiet_regress_prints_one_summary_line_when_all_is_well(smoke_board: Path, capsys) -> None:
    assert main(["--quiet", "regress", "--tier", "smoke", "--device", "cpu", "--root", str(smoke_board)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert re.fullmatch(r"regress: 1 entries re-run, 7 numbers within tolerance "
                        r"\((all exact: same device and seed|across devices: a binomial bound"
                        r"(; 1 recorded on a CPU the entry does not name and not exact here, so held to the bound)?)\); "
                        r"2 skipped \(1 at other tiers, 1 imported reference entries\) \(\d+\.\d s\)", out[0]), out


def test_regress_without_quiet_lists_each_skipped_entry(smoke_board: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("ROBUST_ENS_QUIET", raising=False)
    assert main(["regress", "--tier", "smoke", "--device", "cpu", "--root", str(smoke_board)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("skipped ") for line in out) == 2
    assert any("Wong2020Fast.json: an imported reference entry" in line for line in out)
    assert any("baseline-r20x3-5k.json: tier small, not smoke" in line for line in out)
    assert out[-1].startswith("regress: 1 entries re-run")


def test_quiet_regress_shows_what_moved_and_not_the_skipped(smoke_board: Path, capsys) -> None:
    from robust_ens.bench.runner import _device_name

    path = smoke_board / "digits" / "digits-transfer" / "cnn-s2.json"
    d = json.loads(path.read_text())
    cells = d["results"]["cells"]
    cell = next(c for c in cells if c["k"] < c["n"]
                and c["robust_acc"] > min(x["robust_acc"] for x in cells if x["eps"] == c["eps"]))
    cell["k"] += 1
    cell["robust_acc"] = cell["k"] / cell["n"]
    d["cost"]["device"] = _device_name(torch.device("cpu"))  # this machine: the tolerance is 0
    path.write_text(json.dumps(d, indent=2))
    assert main(["--quiet", "regress", "--tier", "smoke", "--device", "cpu", "--root", str(smoke_board)]) == 1
    out = capsys.readouterr().out
    assert "skipped" not in out.splitlines()[0] and "| entry" in out.splitlines()[0]
    assert out.splitlines()[-1].startswith("regress: 1 numbers moved out of their tolerance (1 entries re-run")
    assert "2 skipped (" in out.splitlines()[-1] and not any(ln.startswith("skipped ") for ln in out.splitlines())

"""``robust-ens submit`` and ``robust-ens regress`` on the digits suite's smoke tier (seconds each)."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.errors import RobustEnsError

DIGITS = "zoo:digits_small_cnn_s2"
FACTORY = "tests.test_submit_regress:digits_cnn"


def digits_cnn() -> nn.Module:
    """A user's model: the zoo's digits architecture built from scratch (weights come from --weights)."""
    from robust_ens import models

    return models.create("small_cnn", num_classes=10, in_chans=1, mean=(0.30000001192092896,),
                         std=(0.3799999952316284,))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    from robust_ens import models

    path = tmp_path_factory.mktemp("weights") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in models.load(DIGITS).state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A leaderboard holding one submitted smoke entry."""
    from robust_ens.bench.submit import submit

    root = tmp_path_factory.mktemp("board") / "leaderboards"
    submit(DIGITS, "digits-transfer", "smoke", "cnn-s2", root=root, out=root.parent / "run", progress=False)
    return root


def test_submit_a_factory_model_with_weights(tmp_path: Path, weights: Path, capsys) -> None:
    from robust_ens.models.checkpoint import sha256_file

    root = tmp_path / "lb"
    rc = main(["--quiet", "submit", "--model", FACTORY, "--weights", str(weights), "--suite", "digits-transfer",
               "--tier", "smoke", "--name", "my-cnn", "--root", str(root), "--out", str(tmp_path / "run"),
               "--paper-url", "https://example.org/paper", "--paper-title", "A CNN"])
    out = capsys.readouterr().out
    assert rc == 0
    path = root / "digits" / "digits-transfer" / "my-cnn.json"
    e = lb.validate(path)
    assert isinstance(e, lb.Entry) and e.model.target is not None
    assert e.model.target.spec == FACTORY and e.model.target.weights_sha256 == sha256_file(weights)
    assert e.model.target.weights == "cnn.safetensors" and str(weights.parent) not in path.read_text()
    assert e.model.checkpoint_sha256 == [sha256_file(weights)] and e.paper and e.paper.url == "https://example.org/paper"
    # the same weights as the zoo checkpoint: the same numbers as the zoo model's run
    zoo = json.loads((tmp_path / "run" / "summary.json").read_text())["targets"]["my-cnn"]
    assert e.results.clean.k == zoo["clean"]["k"] and "my-cnn" in out and "git add" in out and str(path) in out
    assert "my-cnn" in (root / "README.md").read_text()
    assert (root / "pages" / "digits-transfer.html").is_file()
    # an existing name is refused before any work, unless --replace
    rc = main(["--quiet", "submit", "--model", FACTORY, "--weights", str(weights), "--suite", "digits-transfer",
               "--tier", "smoke", "--name", "my-cnn", "--root", str(root), "--out", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds an entry" in err and "--replace" in err and not (tmp_path / "run2").exists()
    rc = main(["--quiet", "submit", "--model", FACTORY, "--weights", str(weights), "--suite", "digits-transfer",
               "--tier", "smoke", "--name", "my-cnn", "--root", str(root), "--out", str(tmp_path / "run"), "--replace"])
    assert rc == 0


def test_submit_refuses_pickled_code_and_a_model_of_another_dataset_before_any_work(tmp_path: Path, capsys) -> None:
    pickled = tmp_path / "model.pt"
    torch.save(digits_cnn(), pickled)  # a whole pickled module, not tensors: never unpickled
    for argv, needle in [
        (["--model", FACTORY, "--weights", str(pickled)], "not a tensors-only checkpoint"),
        (["--model", "tests.bench_models:tiny_cifar"], "3-channel"),
        (["--model", DIGITS, "--suite", "cifar10-attacks"], "ranks attacks"),
        (["--model", DIGITS, "--name", "bad/name"], "--name"),
    ]:
        base = {"--suite": "digits-transfer", "--name": "x", "--tier": "smoke"}
        extra = dict(zip(argv[::2], argv[1::2], strict=True))
        args = [a for kv in {**base, **extra}.items() for a in kv]
        rc = main(["--quiet", "submit", *args, "--root", str(tmp_path / "lb"), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not (tmp_path / "run").exists() and not (tmp_path / "lb").exists()


def test_regress_passes_on_unchanged_code(board: Path, capsys) -> None:
    assert main(["--quiet", "regress", "--root", str(board)]) == 0
    out = capsys.readouterr().out
    assert "1 entries re-run" in out and "7 numbers within tolerance" in out


def _hand_edit(path: Path) -> str:
    """Raise a cell that is not its eps' minimum by one example (k and k/n kept consistent); return its id."""
    d = json.loads(path.read_text())
    cells = d["results"]["cells"]
    for c in cells:
        at = [x["robust_acc"] for x in cells if x["eps"] == c["eps"]]
        if c["robust_acc"] > min(at) and c["k"] < c["n"]:
            c["k"] += 1
            c["robust_acc"] = c["k"] / c["n"]
            path.write_text(json.dumps(d, indent=2))
            lb.validate(path)  # still a valid entry: only the re-run can tell
            return f"{c['attack']}@{c['surrogate']}@{c['eps']:.6g}"
    raise AssertionError("no cell to edit")


def test_regress_fails_with_a_table_when_a_committed_number_is_edited(board: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "lb"
    shutil.copytree(board, root)
    path = root / "digits" / "digits-transfer" / "cnn-s2.json"
    cell = _hand_edit(path)
    assert main(["--quiet", "regress", str(path)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if cell in line)
    assert "cnn-s2" in row and "exact (same device and seed)" in row
    assert [h.strip() for h in out.splitlines()[0].split("|")[1:6]] == ["entry", "cell", "recorded", "now", "tolerance"]
    # across devices the same one-example move is inside the binomial bound
    d = json.loads(path.read_text())
    d["cost"]["device"] = "NVIDIA H200"
    path.write_text(json.dumps(d))
    assert main(["--quiet", "regress", str(path)]) == 0
    # recorded on a CPU it does not name (entries before the model was recorded): exact if it can, else the bound
    d["cost"]["device"] = "cpu (x86_64)"
    path.write_text(json.dumps(d))
    capsys.readouterr()
    assert main(["--quiet", "regress", "--device", "cpu", str(path)]) == 0
    assert "1 recorded on a CPU the entry does not name and not exact here, so held to the bound" in capsys.readouterr().out


def test_an_entry_from_an_unnamed_cpu_that_reproduces_exactly_counts_as_exact(board: Path, tmp_path: Path,
                                                                              capsys) -> None:
    root = tmp_path / "lb"
    shutil.copytree(board, root)
    path = root / "digits" / "digits-transfer" / "cnn-s2.json"
    d = json.loads(path.read_text())
    d["cost"]["device"] = "cpu (x86_64)"
    path.write_text(json.dumps(d))
    assert main(["--quiet", "regress", "--device", "cpu", str(path)]) == 0
    assert "(all exact: same device and seed)" in capsys.readouterr().out


def test_runs_name_the_cpu_model_and_its_vector_instructions() -> None:
    from robust_ens.bench.craft import device_name, names_the_cpu

    name = device_name(torch.device("cpu"))
    assert name.startswith(f"cpu ({platform.machine()}; ") and torch.backends.cpu.get_cpu_capability() in name
    assert names_the_cpu(name) and names_the_cpu("NVIDIA H200")
    assert not names_the_cpu("cpu (x86_64)") and not names_the_cpu("cpu")


def test_regress_fails_when_an_attack_step_size_is_zero(board: Path, monkeypatch, capsys) -> None:
    from robust_ens.attacks.base import Attack
    from robust_ens.bench import craft

    monkeypatch.setattr(Attack, "step_size", property(lambda self: 0.0))
    # an edit to the attack's source changes the library's digest, so the shared store serves no old set
    monkeypatch.setattr(craft, "_SOURCE_DIGEST", "e" * 64)
    assert main(["--quiet", "regress", "--root", str(board)]) == 1
    out = capsys.readouterr().out
    moved = [line for line in out.splitlines() if line.startswith("| cnn-s2")]
    assert any("mifgsm@zoo2@0.2" in line for line in moved) and any("worst@0.2" in line for line in moved)
    mif = next(line for line in moved if "mifgsm@zoo2@0.2" in line).split("|")
    assert float(mif[4]) > float(mif[3])  # without steps the attack barely moves the images: accuracy rises


def test_tolerance_is_zero_on_the_same_device_and_binomial_across() -> None:
    from robust_ens.bench.regress import tolerance

    assert tolerance(0.5, 40, same_device=True) == 0
    assert 1 / 40 < tolerance(0.5, 40, same_device=False) < 0.4
    assert tolerance(0.5, 10000, same_device=False) < tolerance(0.5, 100, same_device=False)


def test_regress_refuses_a_folder_without_rerunnable_entries(tmp_path: Path, capsys) -> None:
    (tmp_path / "x").mkdir()
    assert main(["--quiet", "regress", str(tmp_path / "x")]) == 2
    assert "no entry to re-run" in capsys.readouterr().err
    with pytest.raises(RobustEnsError, match="does not exist"):
        from robust_ens.bench.regress import regress

        regress([tmp_path / "missing"])


def test_submit_on_the_jpeg_cifar10_copies_is_labelled_cifar10_jpeg(tmp_path: Path, monkeypatch) -> None:
    from tests.conftest import require_cifar10

    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if "ROBUST_ENS_DATA" not in __import__("os").environ and shared.is_dir():
        monkeypatch.setenv("ROBUST_ENS_DATA", str(shared))
    require_cifar10()
    from robust_ens.bench.runner import dataset_label
    from robust_ens.bench.submit import submit

    res = submit("tests.bench_models:tiny_cifar", "cifar10-transfer", "smoke", "tiny", root=tmp_path / "lb",
                 out=tmp_path / "run", progress=False)
    label = dataset_label("cifar10")
    assert res.entry.protocol.dataset == label and res.path.parent.parent.name == label
    if "jpeg" in str(__import__("robust_ens").data.find_cifar10(split="test")[1]).lower():
        assert label == "cifar10-jpeg"  # never "cifar10" for the JPEG copies


@pytest.mark.cifar
def test_regress_reruns_attack_entries_and_catches_an_edited_success_rate(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.conftest import require_cifar10

    require_cifar10()
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import run_suite

    summary = run_suite("cifar10-attacks", "smoke", [], tmp_path / "run", progress=False)
    root = tmp_path / "lb"
    paths = [lb.write(e, root) for e in to_entries(summary, "test", run_dir=tmp_path / "run")]
    assert {lb.validate(p).kind for p in paths} == {"attack"} and len(paths) == 3
    vit = lb.validate(next(p for p in paths if p.stem == "vit_ensemble"))
    assert vit.protocol.surrogates == ["vitx2-smoke"] and {c.surrogate for c in vit.results.cells} == {"vitx2-smoke"}
    assert all(c.success_rate is not None for c in vit.results.cells)
    assert main(["--quiet", "regress", "--root", str(root)]) == 0
    assert f"{len(paths)} entries re-run" in capsys.readouterr().out
    d = json.loads(paths[0].read_text())
    c = d["results"]["cells"][0]
    c["k"] = c["k"] + 1 if c["k"] < c["n"] else c["k"] - 1
    c["robust_acc"] = c["k"] / c["n"]
    for w in d["results"]["worst_case"]:  # keep the entry valid: only the re-run can tell
        lo = min((x for x in d["results"]["cells"] if x["eps"] == w["eps"]), key=lambda x: x["robust_acc"])
        w.update(robust_acc=lo["robust_acc"], k=lo["k"], n=lo["n"], ci95=lo["ci95"], min_cell_acc=lo["robust_acc"])
    paths[0].write_text(json.dumps(d))
    lb.validate(paths[0])
    assert main(["--quiet", "regress", str(paths[0])]) == 1
    assert d["name"] in capsys.readouterr().out


def test_leaderboard_add_puts_a_runs_entries_into_the_tree_and_refuses_a_taken_name(board: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    entries = tmp_path / "run" / "entries"
    entries.mkdir(parents=True)
    shutil.copy(board / "digits" / "digits-transfer" / "cnn-s2.json", entries / "cnn-s2.json")
    (tmp_path / "a_file").write_text("x")
    assert main(["--quiet", "leaderboard", "add", str(entries), "--root", str(tmp_path / "a_file")]) == 2
    assert "is a file" in capsys.readouterr().err
    root = tmp_path / "lb"  # a new leaderboard
    assert main(["--quiet", "leaderboard", "add", str(entries), "--root", str(root)]) == 0
    assert "1 entries added" in capsys.readouterr().out
    assert lb.validate(root / "digits" / "digits-transfer" / "cnn-s2.json").name == "cnn-s2"
    assert "cnn-s2" in (root / "README.md").read_text()
    assert main(["--quiet", "leaderboard", "add", str(entries), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds an entry named 'cnn-s2'" in err and "--replace" in err
    assert main(["--quiet", "leaderboard", "add", str(entries), "--root", str(root), "--replace"]) == 0
    (entries / "bad.json").write_text('{"schema_version": "2"}')
    other = tmp_path / "lb2"
    other.mkdir()
    assert main(["--quiet", "leaderboard", "add", str(entries), "--root", str(other)]) == 2
    assert "bad.json" in capsys.readouterr().err and not any(other.iterdir())


def test_regress_finds_submitted_weights_by_name_and_shares_the_store(tmp_path: Path, weights: Path, capsys,
                                                                      monkeypatch) -> None:
    """An entry records its weights by file name: regress looks beside the entry, then in --weights-dir,
    and says so in one line when it cannot find them; a second regress reuses every set."""
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "lb"
    assert main(["--quiet", "submit", "--model", FACTORY, "--weights", str(weights), "--suite", "digits-transfer",
                 "--tier", "smoke", "--name", "mine", "--root", str(root), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    entry = root / "digits" / "digits-transfer" / "mine.json"
    assert main(["--quiet", "regress", str(entry)]) == 2
    err = capsys.readouterr().err
    assert "its weights cnn.safetensors" in err and "--weights-dir" in err and len(err.strip().splitlines()) == 1
    sets = sorted((tmp_path / "cache" / "advsets").rglob("*.safetensors"))
    assert sets  # the submit's sets are in the machine-wide store
    assert main(["--quiet", "regress", str(entry), "--weights-dir", str(weights.parent)]) == 0
    assert "numbers within tolerance" in capsys.readouterr().out
    assert sorted((tmp_path / "cache" / "advsets").rglob("*.safetensors")) == sets  # regress made no new set
    shutil.copy(weights, entry.parent / weights.name)  # beside the entry: found without --weights-dir
    assert main(["--quiet", "regress", str(entry)]) == 0

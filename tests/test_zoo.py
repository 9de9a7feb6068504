"""The reference zoo: recipes, rebuild into a folder, fp16 shipping, sha256 checks, ``zoo:NAME``
ensembles as engine targets, and the shipped cifar10 manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robust_ens import cli, zoo_build
from robust_ens.ensemble import Ensemble
from robust_ens.errors import CheckpointError, RobustEnsError
from robust_ens.models import zoo

RECIPES = """
dataset = "digits"

[base]
defense = "baseline"
arch = "small_cnn"
members = 2
tier = "small"
train_n = 300
epochs = 1

[dv]
defense = "dverge"
arch = "small_cnn"
members = 2
tier = "small"
train_n = 200
epochs = 1
init = "base"
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-entry digits zoo (a baseline and a DVERGE started from it), rebuilt into a folder."""
    out = tmp_path_factory.mktemp("zoo")
    recipes = out / "digits.toml"
    recipes.write_text(RECIPES)
    zoo_build.rebuild_zoo(out / "build", dataset="digits", names=["dv"], device="cpu", progress=False, recipes=recipes)
    return out / "build"


@pytest.fixture()
def shipped(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The rebuilt zoo installed as the shipped one (a copy in tmp_path, with the digits index)."""
    root = tmp_path / "zoo"
    root.mkdir()
    shutil.copy(zoo.ZOO_DIR / "index.json", root / "index.json")
    for f in zoo.ZOO_DIR.glob("digits_*"):
        shutil.copy(f, root / f.name)
    shutil.copytree(built / "digits", root / "digits")
    monkeypatch.setattr(zoo, "ZOO_DIR", root)
    return root


def test_rebuild_trains_what_an_entry_starts_from_and_ships_fp16(built: Path) -> None:
    manifest = json.loads((built / "digits" / "manifest.json").read_text())
    assert manifest["format"] == zoo.MANIFEST_FORMAT
    assert list(manifest["entries"]) == ["base", "dv"]  # "dv" asked for, "base" trained first
    dv = manifest["entries"]["dv"]
    assert dv["init"] == "base" and dv["recipe"]["defense"] == "dverge" and dv["recipe"]["train_n"] == 200
    for name, e in manifest["entries"].items():
        assert set(e["files"]) == {"member0.safetensors", "member1.safetensors"}
        for f in e["files"]:
            tensors = load_file(str(built / "digits" / name / f))
            assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
        assert 0.0 <= e["accuracy"]["test_acc"] <= 1.0 and e["accuracy"]["eval_n"] > 0
    assert (built / "train" / "base" / "member0.safetensors").is_file()  # full-precision training output


def test_zoo_name_loads_an_ensemble_checked_against_the_manifest(shipped: Path) -> None:
    from robust_ens import data
    from robust_ens.bench.targets import resolve_target
    from robust_ens.evaluation import accuracy

    assert {"base", "dv", "digits_small_cnn_s0"} <= set(zoo.list_zoo())
    ens = zoo.load("zoo:dv")
    assert isinstance(ens, Ensemble) and len(ens) == 2
    e = zoo.entry("dv")
    x, y = data.load_uint8("digits", "test")
    n = e["accuracy"]["eval_n"]
    idx = data.subset_indices(y, n, seed=0) if n < len(y) else torch.arange(len(y))
    assert accuracy(ens, x[idx], y[idx]) == pytest.approx(e["accuracy"]["test_acc"], abs=1e-6)
    t = resolve_target("zoo:dv")
    assert t.name == "zoo:dv" and resolve_target("zoo:dv", name="mine").name == "mine"
    assert t.n_members == 2
    assert t.files == {f"zoo:dv/{f}": sha for f, sha in e["files"].items()}


def test_a_changed_zoo_file_is_refused(shipped: Path) -> None:
    f = shipped / "digits" / "base" / "member1.safetensors"
    state = load_file(str(f))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1
    from safetensors.torch import save_file

    save_file(state, str(f))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        zoo.load("zoo:base")


def test_rebuild_never_writes_into_the_shipped_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    for out in (zoo.ZOO_DIR, zoo.ZOO_DIR / "cifar10"):
        with pytest.raises(RobustEnsError, match="is the shipped zoo"):
            zoo_build.rebuild_zoo(out)
        assert cli.main(["--quiet", "zoo", "rebuild", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "shipped zoo" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["zoo", "rebuild"], "needs --out"),
    (["zoo", "list", "--out", "x"], "--out applies to 'zoo rebuild'"),
    (["zoo", "rebuild", "--out", "{tmp}", "--dataset", "mnist"], "no zoo recipes for dataset 'mnist'"),
    (["zoo", "rebuild", "--out", "{tmp}", "--dataset", "cifar10", "--only", "nope"], "unknown zoo entry 'nope'"),
])
def test_zoo_command_errors(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert cli.main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


PROTOCOL_MODEL = """
dataset = "digits"

[sur]
protocol = "digits-transfer"
role = "surrogate"
tier = "small"
train = { arch = "small_cnn", members = 2, seed = 1000, train_n = 200, epochs = 1 }
"""


def test_a_protocols_model_is_trained_from_its_train_table_and_shipped_fp16(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_ens import train

    recipes = tmp_path / "digits.toml"
    recipes.write_text(PROTOCOL_MODEL)
    r = zoo_build.zoo_recipes("digits", recipes)["sur"]
    assert (r.defense, r.arch, r.members, r.seed, r.train_n, r.epochs) == ("baseline", "small_cnn", 2, 1000, 200, 1)
    first = zoo_build.rebuild_zoo(tmp_path / "a", dataset="digits", device="cpu", progress=False, recipes=recipes)["sur"]
    assert (first["protocol"], first["role"], first["members"], first["recipe"]["train_n"]) == ("digits-transfer", "surrogate", 2, 200)
    assert [m["seed"] for m in first["recipe"]["members"]] == [1000, 1001]
    for f in first["files"]:
        assert all(v.dtype == torch.float16 for v in load_file(tmp_path / "a" / "digits" / "sur" / f).values()
                   if v.is_floating_point())
    # members already trained (a protocol's surrogate cache, copied in) are shipped as they are, not retrained
    shutil.copytree(tmp_path / "a" / "train" / "sur", tmp_path / "b" / "train" / "sur")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained a member that was already trained")

    monkeypatch.setattr(train, "train_epoch", refuse)  # every epoch of the one loop runs through it
    again = zoo_build.rebuild_zoo(tmp_path / "b", dataset="digits", device="cpu", progress=False, recipes=recipes)["sur"]
    assert again["files"] == first["files"]


@pytest.mark.parametrize(("table", "message"), [
    ('protocol = "p"\nrole = "surrogate"\ntier = "small"\n', r"\[m\] is a protocol's model but lacks train"),
    ('protocol = "p"\nrole = "judge"\ntier = "small"\ntrain = { members = 1 }\n', r"role = 'judge'; expected one of surrogate, target"),
    ('protocol = "p"\nrole = "target"\ntier = "small"\ntrain = { members = 1 }\ndefense = "adp"\n', r"unknown keys \['defense'\]"),
    ('protocol = "p"\nrole = "target"\ntier = "small"\ntrain = { recipe = "nope" }\n', r"\[m\]: unknown recipe 'nope'"),
])
def test_bad_protocol_model_entries_are_one_line(table: str, message: str, tmp_path: Path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text("[m]\n" + table)
    with pytest.raises(RobustEnsError, match=message):
        zoo_build.zoo_recipes("digits", bad)


def test_a_zoo_ensemble_surrogate_crafts_in_fp32(shipped: Path, tmp_path: Path) -> None:
    from robust_ens.bench import load_protocol
    from robust_ens.bench.runner import Engine

    text = (Path(__file__).resolve().parent.parent / "robust_ens/bench/protocols/digits-transfer.toml").read_text()
    toml = tmp_path / "p.toml"
    toml.write_text(text.replace('members = ["zoo:digits_small_cnn_s0", "zoo:digits_small_cnn_s1"]', 'members = ["zoo:base"]'))
    engine = Engine(load_protocol(toml), "smoke", tmp_path / "run", progress=False)
    sur = engine.surrogate("zoo2")
    assert isinstance(sur.module, Ensemble) and sur.module.precision == "fp32"  # a zoo load alone is "auto"
    assert isinstance(zoo.load("zoo:base"), Ensemble) and zoo.load("zoo:base").precision == "auto"


def test_bad_recipe_files_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('[a]\ndefense = "baseline"\narch = "small_cnn"\nmembers = 2\ntier = "small"\nlr = 1\n')
    with pytest.raises(RobustEnsError, match=r"\[a\] has unknown keys \['lr'\]"):
        zoo_build.zoo_recipes("digits", bad)
    bad.write_text('[a]\ndefense = "dverge"\narch = "small_cnn"\nmembers = 2\ntier = "small"\ninit = "b"\n')
    with pytest.raises(RobustEnsError, match="init = 'b' names no entry above it"):
        zoo_build.zoo_recipes("digits", bad)


CIFAR = zoo.ZOO_DIR / "cifar10" / zoo.MANIFEST


@pytest.mark.skipif(not CIFAR.is_file(), reason="no shipped cifar10 zoo")
def test_the_shipped_cifar10_zoo_matches_its_manifest_and_recipes() -> None:
    from robust_ens.models.checkpoint import sha256_file

    entries = json.loads(CIFAR.read_text())["entries"]
    recipes = zoo_build.zoo_recipes("cifar10")
    total = 0
    for name, e in entries.items():
        r = recipes[name]
        assert (e["defense"], e["arch"], e["members"], e["tier"], e["init"]) == (r.defense, r.arch, r.members, r.tier, r.init)
        assert (e.get("protocol"), e.get("role")) == (r.protocol, r.role)
        if r.train is not None:
            assert e["recipe"]["train"] == r.train
        for f, sha in e["files"].items():
            path = CIFAR.parent / e["folder"] / f
            assert sha256_file(path) == sha, path
            total += path.stat().st_size
            sidecar = json.loads(path.with_suffix(".json").read_text())
            assert sidecar["sha256"] == sha and sidecar["stored_dtype"] == "float16"
        assert abs(e["accuracy"]["test_acc"] - e["accuracy"]["test_acc_fp32"]) < 0.02  # fp16 costs next to nothing
    assert total < 40 * 2**20


def test_every_suite_names_zoo_models_that_exist_and_belong_to_it() -> None:
    from robust_ens.bench import get_suite, list_suites

    entries = zoo.index()
    named = 0
    for suite in list_suites():
        for sur in get_suite(suite).surrogates.values():
            for spec in sur.members:
                for part in spec.split(","):
                    if part.startswith(("timm:", "torchvision:", "timm-random:", "robustbench:")):
                        continue  # imagenet-transfer: pretrained tags, random-weight test models, RobustBench's
                    assert part.startswith(zoo.ZOO_PREFIX), (suite, sur.name, part)
                    e = entries[part[len(zoo.ZOO_PREFIX):]]  # KeyError: a suite names a model the zoo lacks
                    assert e.get("protocol") in (None, suite), (suite, part, e.get("protocol"))
                    named += e.get("protocol") == suite
    assert named >= 8  # cifar10-transfer's two small surrogates, cifar10-attacks' two and its four targets

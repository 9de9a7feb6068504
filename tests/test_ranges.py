"""Ranges beside types: every numeric option declares its meaningful values where it is defined,
and one check refuses a value outside them in one line, before any work, whichever way it came
(``--set``, command flags, a recipe file, Python).
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from robust_ens import data
from robust_ens import train as train_mod
from robust_ens.attacks import DIFGSM, PGD, SGM, SI, AugmentParams, create_attack, list_attacks
from robust_ens.bench.protocol import get_suite, list_suites
from robust_ens.cli import main
from robust_ens.defenses import (
    DEFENSES,
    defense_plan,
    list_defenses,
    recipe_registry,
    resolve_recipe,
    train_defense,
)
from robust_ens.defenses.dverge import DVERGEParams
from robust_ens.defenses.gal import GALParams
from robust_ens.defenses.recipe_registry import RECIPES, TIERS, list_recipes, load_recipe
from robust_ens.defenses.trs import TRSParams
from robust_ens.errors import RobustEnsError
from robust_ens.models import zoo as zoo_mod
from robust_ens.overrides import (
    COUNT,
    PIXEL_BUDGET,
    PROBABILITY,
    OutOfRange,
    Range,
    check_call,
    ranges_of,
)
from robust_ens.train import TrainConfig
from robust_ens.zoo_build import zoo_recipes
from tests.cli_helpers import one_error_line

BUDGET = "a pixel budget in (0, 1] on images in [0, 1]; 8/255 is 0.0314"
PIXEL_STEP = "a step size in (0, 1] on images in [0, 1]; 2/255 is 0.00784"

# (defense, --set option, value, what the message says after "is out of range: ")
BAD_SETS = [
    ("dverge", "defense.eps", "7", BUDGET),
    ("trs", "defense.adv_eps", "3", BUDGET),
    ("dverge", "defense.alpha", "-0.01", PIXEL_STEP),
    ("gal", "defense.noise_p", "2", "a probability in [0, 1]"),
    ("adp", "train.lr", "-0.1", "a learning rate > 0"),
    ("dverge", "warmup.momentum", "1.5", "an SGD momentum in [0, 1)"),
]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading training data or entering the training loop fails the test: refusals come first."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the bad value was refused")

    monkeypatch.setattr(data, "load_uint8", refuse)
    monkeypatch.setattr(train_mod, "fit", refuse)
    monkeypatch.setattr("robust_ens.defenses.train.fit", refuse)
    monkeypatch.setattr("robust_ens.defenses.train.train_classifier", refuse)


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- the mechanism


def test_range_describes_itself_and_checks_numbers_only():
    assert PIXEL_BUDGET.describe() == BUDGET
    assert COUNT.interval() == ">= 1" and Range(0, None, low_open=True).interval() == "> 0"
    assert Range(None, 1, high_open=True).interval() == "< 1" and PROBABILITY.interval() == "in [0, 1]"
    assert PIXEL_BUDGET.check(8 / 255, "eps") == 8 / 255 and PIXEL_BUDGET.check(1, "eps") == 1
    for ok in (None, True, "text"):  # types are coerce's job
        assert PIXEL_BUDGET.check(ok, "eps") is ok
    for bad in (0, 0.0, -1, 1.5, float("nan"), float("inf")):
        with pytest.raises(OutOfRange, match=r"^eps=.* is out of range: a pixel budget in \(0, 1\]"):
            PIXEL_BUDGET.check(bad, "eps")
    with pytest.raises(OutOfRange, match=r"^milestones=1,-2 is out of range: an epoch >= 0$"):
        TrainConfig(milestones=(1, -2))
    err = OutOfRange("eps", 7, PIXEL_BUDGET)
    assert isinstance(err, RobustEnsError) and str(err.renamed("--eps")).startswith("--eps 7 is out of range")
    assert str(err.renamed("--set defense.eps")).startswith("--set defense.eps=7 is out of range")


def test_ranges_are_declared_where_the_options_are_defined():
    assert ranges_of(DVERGEParams)["eps"] is PIXEL_BUDGET and ranges_of(TRSParams)["adv_eps"] is PIXEL_BUDGET
    assert ranges_of(GALParams)["noise_p"] is PROBABILITY and ranges_of(TrainConfig)["epochs"] is COUNT
    assert {"steps", "alpha", "decay"} <= set(ranges_of(DIFGSM)) and ranges_of(DIFGSM)["diversity_prob"] is PROBABILITY
    assert ranges_of(SI)["m"] is COUNT and "gamma" in ranges_of(SGM)

    def f(*, n: Any = 1) -> None: ...

    check_call(f, {"n": -5})  # no declared range: nothing to check


# --------------------------------------------------------------------------- what ships still passes


@pytest.mark.parametrize("name", list_defenses())
def test_every_shipped_defense_recipe_is_in_range(name: str):
    spec = DEFENSES.get(name)
    doc = tomllib.loads(resources.files("robust_ens.defenses").joinpath("recipes", f"{name}.toml").read_text())
    tiers = [t for t in doc if t != "meta"]
    assert set(TIERS) <= set(tiers)
    for tier in tiers:
        load_recipe(name, tier)
        for packed in (False, True):
            rec = resolve_recipe(name, tier, packed=packed)
            TrainConfig(**rec["train"])
            if rec["warmup"]:
                TrainConfig(**rec["warmup"])
            spec.params_cls(**rec["defense"])
        assert defense_plan(name, recipe=tier, dataset="digits").startswith(name)
    spec.params_cls()  # the defaults too


def test_every_named_recipe_and_zoo_entry_is_in_range():
    for name in list_recipes():
        TrainConfig(**dataclasses.asdict(RECIPES.get(name).config))
    tomls = sorted(Path(zoo_mod.ZOO_DIR).glob("*.toml"))
    assert tomls
    for path in tomls:
        for r in zoo_recipes(path.stem, path).values():
            if r.protocol is None:
                defense_plan(r.defense, arch=r.arch, n_members=r.members, dataset=path.stem, recipe=r.tier,
                             epochs=r.epochs, train_n=r.train_n, warmup_epochs=0 if r.init else None)


@pytest.mark.parametrize("suite", list_suites())
def test_every_suite_protocol_builds_its_attacks_in_range(suite: str):
    proto = get_suite(suite)
    for tier in proto.tiers:
        proto.digest(tier)  # builds every attack of the tier at every eps
        for surrogate in proto.surrogates.values():
            surrogate.config()


@pytest.mark.parametrize("name", list_attacks())
def test_every_registered_attack_builds_with_its_defaults(name: str):
    atk = create_attack(name)
    assert create_attack(**atk.config()) == atk


# --------------------------------------------------------------------------- refused from the command line


@pytest.mark.parametrize("defense, option, value, says", BAD_SETS)
def test_train_set_out_of_range_is_one_line_before_any_work(defense, option, value, says, tmp_path, capsys, no_work):
    out = tmp_path / "o"
    rc = main(["--quiet", "train", "--defense", defense, "--tier", "small", "--arch", "small_cnn", "--data",
               "digits", "--members", "2", "--set", f"{option}={value}", "--out", str(out)])
    line = one_error_line(capsys)
    assert rc == 2 and line.endswith(f"--set {option}={value} is out of range: {says}"), line
    assert not out.exists()


@pytest.mark.parametrize("option, says", [("lr=-1", "a learning rate > 0"), ("train.batch_size=0", "a count >= 1"),
                                          ("label_smoothing=1", "a label smoothing in [0, 1)")])
def test_plain_train_set_out_of_range_is_one_line(option, says, tmp_path, capsys, no_work):
    out = tmp_path / "o"
    rc = main(["--quiet", "train", "--arch", "small_cnn", "--data", "digits", "--members", "1", "--set", option,
               "--out", str(out)])
    line = one_error_line(capsys)
    assert rc == 2 and line.endswith(f"--set {option} is out of range: {says}"), line
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--attack", "pgd", "--eps", "7"], f"--eps 7 is out of range: {BUDGET}"),
        (["--attack", "pgd", "--eps=-8/255"], "--eps -0.0313725 is out of range: a pixel budget in (0, 1]"),
        (["--attack", "pgd", "--param", "alpha=-0.01"], "--param alpha=-0.01 is out of range: a step size > 0"),
        (["--attack", "pgd", "--param", "steps=0"], "--param steps=0 is out of range: a count >= 1"),
        (["--attack", "difgsm", "--param", "diversity_prob=2"],
         "--param diversity_prob=2 is out of range: a probability in [0, 1]"),
        (["--attack", "mifgsm", "--param", "decay=-1"], "--param decay=-1 is out of range: a momentum (decay) factor"),
    ],
)
def test_attack_flags_out_of_range_are_one_line_before_any_work(extra, says, tmp_path, capsys, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the bad value was refused")

    monkeypatch.setattr("robust_ens.bench.targets.resolve_target", refuse)
    monkeypatch.setattr(data, "load_uint8", refuse)
    out = tmp_path / "x.safetensors"
    rc = main(["--quiet", "attack", "--surrogate", "zoo:whatever", "--data", "digits", "--n", "4",
               "--out", str(out), *extra])
    line = one_error_line(capsys)
    assert rc == 2 and says in line, line
    assert not out.exists()


# --------------------------------------------------------------------------- refused from a recipe file


def _patched_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, section: str, key: str,
                    value: Any) -> None:
    """Make ``recipes/<name>.toml`` read as a copy with ``[small.<section>] key = value``."""
    doc = tomllib.loads(resources.files("robust_ens.defenses").joinpath("recipes", f"{name}.toml").read_text())
    doc["small"].setdefault(section, {})[key] = value
    lines = []
    for tier, table in doc.items():
        for sub, body in ((k, v) for k, v in table.items() if isinstance(v, dict)):
            lines.append(f"[{tier}.{sub}]")
            lines += [f"{k} = {_toml(v)}" for k, v in body.items() if not isinstance(v, dict)]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    original = recipe_registry._defense_file
    monkeypatch.setattr(recipe_registry, "_defense_file",
                        lambda n: tomllib.loads(path.read_text()) if n == name else original(n))


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


@pytest.mark.parametrize("name, section, key, value, says", [
    ("dverge", "defense", "eps", 7, BUDGET),
    ("trs", "defense", "adv_eps", 3, BUDGET),
    ("dverge", "defense", "alpha", -0.01, PIXEL_STEP),
    ("gal", "defense", "noise_p", 2, "a probability in [0, 1]"),
])
def test_recipe_file_out_of_range_is_one_line_before_any_work(name, section, key, value, says, tmp_path,
                                                               monkeypatch, capsys, no_work):
    _patched_recipe(monkeypatch, tmp_path, name, section, key, value)
    expected = f"recipe {name}:small {section}.{key}={value} is out of range: {says}"
    with pytest.raises(OutOfRange) as err:
        train_defense(name, recipe="small", dataset="digits", arch="small_cnn", n_members=2, progress=False)
    assert _one_line(err.value) == expected
    out = tmp_path / "o"
    rc = main(["--quiet", "train", "--defense", name, "--tier", "small", "--arch", "small_cnn", "--data", "digits",
               "--members", "2", "--out", str(out)])
    line = one_error_line(capsys)
    assert rc == 2 and line.endswith(expected), line
    assert not out.exists()


def test_train_table_file_out_of_range_is_one_line(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text('dataset = "digits"\n\n[m]\nprotocol = "p"\nrole = "surrogate"\ntier = "small"\n'
                    'train = { arch = "small_cnn", members = 1, lr = -0.5 }\n')
    with pytest.raises(RobustEnsError, match=r"bad train setting: lr=-0.5 is out of range: a learning rate > 0$"):
        zoo_recipes("digits", path)


# --------------------------------------------------------------------------- refused from Python


@pytest.mark.parametrize("build, expected", [
    (lambda: DVERGEParams(eps=7), f"eps=7 is out of range: {BUDGET}"),
    (lambda: TRSParams(adv_eps=3), f"adv_eps=3 is out of range: {BUDGET}"),
    (lambda: dataclasses.replace(DVERGEParams(), alpha=-0.01), "alpha=-0.01 is out of range: " + PIXEL_STEP),
    (lambda: GALParams(noise_p=2), "noise_p=2 is out of range: a probability in [0, 1]"),
    (lambda: TrainConfig().replace(lr=-1), "lr=-1 is out of range: a learning rate > 0"),
    (lambda: PGD(eps=7), f"eps=7 is out of range: {BUDGET}"),
    (lambda: PGD().replace(eps=7), f"eps=7 is out of range: {BUDGET}"),
    (lambda: PGD(alpha=-2 / 255), "alpha=-0.00784314 is out of range: a step size > 0"),
    (lambda: create_attack("pgd", steps=0), "steps=0 is out of range: a count >= 1"),
    (lambda: DIFGSM(diversity_prob=2), "diversity_prob=2 is out of range: a probability in [0, 1]"),
    (lambda: create_attack("sgm", gamma=2), "gamma=2 is out of range: a residual-gradient decay in (0, 1]"),
    (lambda: create_attack("pgdl2", eps=-1), "eps=-1 is out of range: an L2 budget > 0"),
    (lambda: AugmentParams(p_h=1.0), "p_h=1 is out of range: a head drop rate in [0, 1)"),
])
def test_python_construction_out_of_range_is_one_line(build, expected):
    with pytest.raises(OutOfRange) as err:
        build()
    assert _one_line(err.value) == expected


@pytest.mark.parametrize("defense, option, value, says", BAD_SETS)
def test_python_overrides_out_of_range_before_any_work(defense, option, value, says, no_work):
    with pytest.raises(OutOfRange) as err:
        train_defense(defense, recipe="small", dataset="digits", arch="small_cnn", n_members=2, progress=False,
                      overrides={option: float(value)})
    assert _one_line(err.value) == f"{option}={float(value):g} is out of range: {says}"
    with pytest.raises(OutOfRange, match=r"recipe gal:<dict> defense\.noise_p=2 is out of range"):
        train_defense("gal", recipe={"defense": {"noise_p": 2}}, dataset="digits", arch="small_cnn", n_members=2)

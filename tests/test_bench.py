"""The benchmark engine: protocols, the adversarial-set store, resume, sharding, flags, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_ens import cli
from robust_ens.attacks import MIFGSM, create_attack
from robust_ens.bench import ProtocolError, get_suite, list_suites, load_protocol, transfer_task
from robust_ens.bench import aggregate as agg
from robust_ens.bench.advsets import AdvSetStore, enforced_eps, quantize
from robust_ens.bench.evaluate import RunResult
from robust_ens.bench.runner import TargetArg, run_suite
from robust_ens.errors import RobustEnsError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "zoo:digits_small_cnn_s2"


def _numbers(summary: dict) -> dict:
    """What must be identical between two runs: every accuracy, cell and flag (not timings)."""
    return {t: {"clean": r["clean"], "cells": r["cells"], "worst": r["worst_case"], "flags": r["flags"],
                "sanity": r.get("sanity")} for t, r in summary["targets"].items()}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "run"  # a store of its own: the counts below start from nothing
    return out, run_suite("digits-transfer", "smoke", [DIGITS], out, store=out / "advsets", progress=False)


# --------------------------------------------------------------------------- protocols


def test_every_suite_loads_with_three_tiers() -> None:
    assert set(list_suites()) >= {"cifar10-transfer", "cifar10-attacks", "cifar10-whitebox", "cifar10-corruptions",
                                  "kitti-c", "digits-transfer"}
    for name in list_suites():
        p = get_suite(name)
        assert p.suite == name and {"smoke", "small", "full"} <= set(p.tiers) <= {"smoke", "demo", "small", "full"}
        assert p.tier("smoke").n <= p.tier("small").n <= p.tier("full").n
        assert p.digest("smoke") != p.digest("small")
    t = get_suite("cifar10-transfer").tier("small")
    assert t.eps == (0.01, 0.02, 0.03) and set(t.attacks) == {"mpgd", "mdi2fgsm", "sgm", "mifgsm", "cwa", "svre"}


def test_a_tiers_steps_reach_every_attack_even_one_registered_as_a_factory() -> None:
    # mdi2fgsm is registered as a factory (mdi2fgsm(**kw)): its signature hides `steps`, and the small
    # tier of cifar10-transfer v1-v2 ran it at its own 50 steps where the tier said 10
    for name in list_suites():
        p = get_suite(name)
        for tier_name, t in p.tiers.items():
            if t.steps is None:
                continue
            for a in t.attacks:
                built = p.attacks[a].build(t.eps[0], steps=t.steps).config()
                if "steps" in built:
                    assert built["steps"] == t.steps, (name, tier_name, a)
    assert get_suite("cifar10-transfer").attacks["mdi2fgsm"].build(0.03, steps=10).config()["steps"] == 10


def test_attack_surrogates_give_an_attack_its_own_surrogates_and_leave_the_rest(tmp_path: Path) -> None:
    src = (ROOT / "robust_ens" / "bench" / "protocols" / "digits-transfer.toml").read_text()
    toml = tmp_path / "own.toml"
    toml.write_text(src.replace('surrogates = ["zoo2"]\n', 'surrogates = ["zoo2"]\n'
                                'attack_surrogates = { cwa = ["cnn3"] }\n', 1))
    own, plain = load_protocol(toml), get_suite("digits-transfer")
    t = own.tier("smoke")
    assert t.surrogates_for("cwa") == ("cnn3",) and t.surrogates_for("mifgsm") == ("zoo2",)
    assert t.all_surrogates == ("zoo2", "cnn3")
    assert own.digest("smoke") != plain.digest("smoke") and own.digest("small") == plain.digest("small")
    s = run_suite(str(toml), "smoke", [DIGITS], tmp_path / "r", progress=False)
    cells = {(c["attack"], c["surrogate"]) for c in s["targets"][DIGITS]["cells"]}
    assert cells == {("mifgsm", "zoo2"), ("cwa", "cnn3")} and s["surrogates"] == ["zoo2", "cnn3"]
    ref = run_suite("digits-transfer", "smoke", [DIGITS], tmp_path / "ref", progress=False)
    mif = {c["id"]: c["k"] for c in ref["targets"][DIGITS]["cells"] if c["attack"] == "mifgsm"}
    assert {c["id"]: c["k"] for c in s["targets"][DIGITS]["cells"] if c["attack"] == "mifgsm"} == mif


def test_unknown_suite_and_tier_list_what_exists() -> None:
    with pytest.raises(UnknownNameError, match="digits-transfer"):
        get_suite("digits-transfr")
    with pytest.raises(UnknownNameError, match="smoke, small, full"):
        get_suite("digits-transfer").tier("huge")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('seed = 0\n', 'seed = 0\nsede = 1\n', 1), r"sede: unknown key"),
    (lambda s: s.replace('seed = 0\n', 'seed = "zero"\n', 1), r"seed: must be int"),
    (lambda s: s.replace('n = 40\n', 'n = 40\nbatchsize = 3\n', 1), r"tiers.smoke.batchsize: unknown key"),
    (lambda s: s.replace('attacks = ["mifgsm", "cwa"]', 'attacks = ["mifgsm", "nope"]', 1), r"names 'nope'"),
    (lambda s: s.replace('attack = "cwa"', 'attack = "cwb"', 1), r"attacks.cwa.attack: unknown attack 'cwb'"),
    (lambda s: s.replace('[tiers.smoke]', '[tiers.tiny]', 1), r"tiers.tiny: unknown tier"),
    (lambda s: s.replace('params = { steps = 10, decay = 1.0 }', 'params = { steps = 10, decoy = 1.0 }', 1),
     r"attacks.mifgsm: unknown hyperparameter\(s\) decoy"),
    (lambda s: s + "\n[[broken", r"not valid TOML"),
    (lambda s: s.replace('eps = [0.1, 0.2]', 'eps = [0.1, 8]', 1), r"tiers.smoke.eps: holds 8: a pixel budget in \(0, 1\]"),
    (lambda s: s.replace('eps = [0.1, 0.2]', 'eps = [0, 0.2]', 1), r"tiers.smoke.eps: holds 0: a pixel budget in \(0, 1\]"),
    (lambda s: s.replace('surrogates = ["zoo2"]\n', 'surrogates = ["zoo2"]\nattack_surrogates = { pgd = ["zoo2"] }\n', 1),
     r"tiers.smoke.attack_surrogates.pgd: 'pgd' is not one of this tier's attacks \(mifgsm, cwa\)"),
    (lambda s: s.replace('surrogates = ["zoo2"]\n', 'surrogates = ["zoo2"]\nattack_surrogates = { cwa = ["zoo3"] }\n', 1),
     r"tiers.smoke.attack_surrogates.cwa: names 'zoo3', which \[surrogates\] does not define"),
    (lambda s: s.replace('surrogates = ["zoo2"]\n', 'surrogates = ["zoo2"]\nattack_surrogates = { cwa = [] }\n', 1),
     r"tiers.smoke.attack_surrogates.cwa: give at least one surrogate"),
    (lambda s: s.replace('kind = "defense"', 'kind = "attack"', 1).replace('surrogates = ["zoo2", "cnn3"]', 'surrogates = ["zoo2"]')
     .replace('surrogates = ["zoo2"]\n', 'surrogates = ["zoo2"]\nattack_surrogates = { cwa = ["zoo2", "cnn3"] }\n', 1),
     r"tiers.smoke.surrogates: an attack suite crafts each attack on exactly one surrogate; 'cwa' has 2"),
])
def test_bad_protocol_file_names_file_and_key(tmp_path: Path, edit, message: str) -> None:
    src = (ROOT / "robust_ens" / "bench" / "protocols" / "digits-transfer.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(edit(src))
    with pytest.raises(ProtocolError, match=message) as err:
        load_protocol(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- attack config


def test_attack_config_is_canonical_and_rebuilds_every_registered_attack() -> None:
    from robust_ens.attacks import DI, SGM, TI, list_attacks

    for name in list_attacks():
        atk = create_attack(name)
        cfg = json.loads(json.dumps(atk.config()))
        assert create_attack(**cfg) == atk, name
    a = MIFGSM(eps=4 / 255, transforms=[DI(), TI(len_kernel=5), SGM(gamma=0.5)])
    again = create_attack(**json.loads(json.dumps(a.config())))
    assert again == a and again.transforms == a.transforms
    assert a != a.replace(eps=5 / 255) and a.replace(eps=5 / 255).config()["eps"] == 5 / 255


# --------------------------------------------------------------------------- the store


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1 / 255, 0.01, 0.02, 0.03, 8 / 255, 0.1, 16 / 255]), st.integers(0, 2**31 - 1))
def test_quantization_keeps_the_budget(eps: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    xf = x.float() / 255
    adv = (xf + (torch.rand(xf.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    q = quantize(x, adv, eps)
    assert q.dtype == torch.uint8
    d = (q.double() / 255 - x.double() / 255).abs().max()
    assert float(d) <= enforced_eps(eps) + 1e-15 and enforced_eps(eps) <= eps + 1e-12
    assert enforced_eps(8 / 255) == 8 / 255 and enforced_eps(0.03) == 7 / 255


def _fields(**over: object) -> dict:
    base = {"attack": MIFGSM(eps=0.1).config(), "code_version": 1, "surrogate": ["a" * 64], "eps": 0.1,
            "norm": "Linf", "data": "f" * 64, "indices": [0, 1, 2], "seed": 7, "targeted": False}
    return {**base, **over}


def test_store_hit_miss_and_invalidation_on_every_key_field(tmp_path: Path) -> None:
    store = AdvSetStore(tmp_path)
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    calls = []

    def make() -> tuple[torch.Tensor, dict]:
        calls.append(1)
        return (x.float() / 255 + 0.05).clamp(0, 1), {}

    first = store.get_or_make(_fields(), x, make, 0.1)
    again = store.get_or_make(_fields(), x, make, 0.1)
    assert not first.hit and again.hit and len(calls) == 1 and torch.equal(first.x_adv, again.x_adv)
    changes = {"attack": MIFGSM(eps=0.1, steps=11).config(), "code_version": 2, "surrogate": ["b" * 64], "eps": 0.2,
               "norm": "L2", "data": "e" * 64, "indices": [0, 1, 3], "seed": 8, "targeted": True}
    for k, v in changes.items():
        assert not store.get_or_make(_fields(**{k: v}), x, make, 0.1).hit, k
    assert len(calls) == 1 + len(changes)


@pytest.mark.parametrize("damage", ["images", "record", "truncate"])
def test_corrupt_store_file_is_recomputed_with_a_warning(tmp_path: Path, damage: str) -> None:
    store = AdvSetStore(tmp_path)
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    make = lambda: ((x.float() / 255 + 0.05).clamp(0, 1), {})  # noqa: E731
    good = store.get_or_make(_fields(), x, make, 0.1)
    data_path = next(tmp_path.rglob("*.safetensors"))
    rec_path = data_path.with_suffix(".json")
    if damage == "images":
        blob = bytearray(data_path.read_bytes())
        blob[-1] ^= 0xFF
        data_path.write_bytes(bytes(blob))
    elif damage == "record":
        rec_path.write_bytes(os.urandom(64))
    else:
        data_path.write_bytes(data_path.read_bytes()[:20])
    with pytest.warns(RuntimeWarning, match="corrupt adversarial set"):
        again = store.get_or_make(_fields(), x, make, 0.1)
    assert not again.hit and torch.equal(again.x_adv, good.x_adv)


# --------------------------------------------------------------------------- running


def test_digits_smoke_run_end_to_end(smoke_run: tuple[Path, dict]) -> None:
    out, s = smoke_run
    row = s["targets"][DIGITS]
    assert s["dataset"] == "digits" and s["n"] == 40 and len(row["cells"]) == 4
    assert row["clean"]["acc"] > 0.9
    for e, w in row["worst_case"].items():
        cells = [c["acc"] for c in row["cells"] if f"{c['eps']:.6g}" == e]
        assert w["acc"] <= min(cells) and w["ci95"][0] <= w["acc"] <= w["ci95"][1]
    assert row["worst_case"]["0.2"]["acc"] < row["worst_case"]["0.1"]["acc"]
    assert json.loads((out / "summary.json").read_text())["targets"][DIGITS]["cells"] == row["cells"]
    rec = next((out / "advsets").rglob("*.json"))
    r = json.loads(rec.read_text())
    assert r["enforced_eps"] <= r["eps"] and "surrogate_acc_uint8" in r and "surrogate_acc_float" in r


def test_adding_a_target_costs_forward_passes_only(smoke_run: tuple[Path, dict]) -> None:
    out, first = smoke_run
    s = run_suite("digits-transfer", "smoke", [DIGITS, "zoo:digits_small_cnn_s1"], out, store=out / "advsets",
                  progress=False)
    assert s["cost"]["advsets_made"] == 0 and s["cost"]["advsets_reused"] > 0
    assert _numbers(s)[DIGITS] == _numbers(first)[DIGITS]


def test_resume_after_a_kill_gives_identical_numbers(tmp_path: Path, smoke_run: tuple[Path, dict],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = transfer_task.advset

    def dying(ctx, cell, b: int, sl: slice) -> torch.Tensor:  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 4:  # cell 1 finished, batch 0 of cell 2 finished, batch 1 of cell 2 killed
            raise KeyboardInterrupt
        return real(ctx, cell, b, sl)

    monkeypatch.setattr(transfer_task, "advset", dying)
    with pytest.raises(KeyboardInterrupt):
        run_suite("digits-transfer", "smoke", [DIGITS], tmp_path / "run", store=tmp_path / "store", progress=False)
    monkeypatch.setattr(transfer_task, "advset", real)
    resumed = run_suite("digits-transfer", "smoke", [DIGITS], tmp_path / "run", store=tmp_path / "store",
                        progress=False)
    total = smoke_run[1]["cost"]["advsets_made"]
    assert total == 8 and resumed["cost"]["advsets_made"] == total - 3  # nothing finished is made again
    assert _numbers(resumed) == _numbers(smoke_run[1])


def test_run_folder_of_another_protocol_is_refused(smoke_run: tuple[Path, dict]) -> None:
    out, _ = smoke_run
    with pytest.raises(RobustEnsError, match="pick a new --out"):
        run_suite("digits-transfer", "small", [DIGITS], out, progress=False)


def test_torchrun_two_processes_equal_one(tmp_path: Path, smoke_run: tuple[Path, dict]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUST_ENS_QUIET": "1"}
    with socket.socket() as probe:  # a free port: two test runs on one machine must not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "robust_ens.cli", "bench", "run", "digits-transfer", "--tier", "smoke", "--target", DIGITS,
           "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=850, cwd=ROOT)  # a hang guard only
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert _numbers(two) == _numbers(smoke_run[1])


# --------------------------------------------------------------------------- sanity flags


def test_randomized_forward_is_flagged(tmp_path: Path) -> None:
    s = run_suite("digits-transfer", "smoke", [TargetArg("tests.bench_models:randomized_digits", name="noisy")],
                  tmp_path / "r", progress=False)
    assert any(f.startswith("randomized_forward") for f in s["targets"]["noisy"]["flags"])


def test_gradient_masking_is_flagged(tmp_path: Path) -> None:
    s = run_suite("digits-transfer", "smoke", [TargetArg("tests.bench_models:masked_digits", name="masked")],
                  tmp_path / "r", progress=False)
    flags = s["targets"]["masked"]["flags"]
    assert any(f.startswith("zero_gradients") for f in flags), flags
    assert any(f.startswith("transfer_below_whitebox") for f in flags), flags


def test_a_clean_model_raises_no_flag(smoke_run: tuple[Path, dict]) -> None:
    assert smoke_run[1]["targets"][DIGITS]["flags"] == []


def test_eps_and_steps_flags_trip_on_their_cases() -> None:
    assert agg.eps_flags({0.1: 0.5, 0.2: 0.3}, 200) == []
    assert agg.eps_flags({0.1: 0.3, 0.2: 0.6}, 200)[0].startswith("accuracy_rises_with_eps")
    ok = {"n": 200, "whitebox_acc": 0.2, "whitebox_acc_2x": 0.18}
    assert agg.whitebox_flags(ok, 0.4) == []
    more = agg.whitebox_flags({**ok, "whitebox_acc_2x": 0.5}, 0.6)
    assert more and more[0].startswith("more_steps_raise_accuracy")
    assert agg.whitebox_flags({**ok, "nonfinite_grad": True}, 0.4)[0].startswith("nonfinite_gradients")


def test_wilson_interval() -> None:
    lo, hi = agg.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert agg.wilson(0, 10)[0] == 0.0 and agg.wilson(10, 10)[1] == 1.0 and agg.wilson(10, 10)[0] > 0.69


@pytest.mark.parametrize(("only_a", "only_b", "both"), [(10, 2, 30), (0, 0, 5), (7, 7, 1), (40, 21, 200), (0, 9, 0)])
def test_the_paired_test_agrees_with_scipys_binomial_test(only_a: int, only_b: int, both: int) -> None:
    from scipy.stats import binomtest

    a = torch.tensor([True] * only_a + [False] * only_b + [True] * both + [False] * 3)
    b = torch.tensor([False] * only_a + [True] * only_b + [True] * both + [False] * 3)
    got = agg.mcnemar_exact(a, b)
    assert (got["only_a"], got["only_b"], got["n"]) == (only_a, only_b, len(a))
    assert got["diff"] == pytest.approx((only_a - only_b) / len(a))
    want = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert got["p"] == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="same examples"):
        agg.mcnemar_exact(a, b[:-1])


def test_holm_adjusts_in_order_and_stays_monotone() -> None:
    assert agg.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert agg.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


# --------------------------------------------------------------------------- targets and the CLI


@pytest.mark.parametrize("spec, message", [
    ("tests.bench_models:tiny_cifar", r"takes 3-channel images but digits has 1 \(1x8x8\)"),
    ("zoo:nope", r"unknown zoo checkpoint 'nope'"),
    ("no/such/checkpoint", r"does not resolve: not zoo:NAME, timm:NAME or pkg.module:factory"),
    ("tests.bench_models:nothing", r"has no callable 'nothing'"),
    ("timm:resnet18", r"needs --weights"),
])
def test_bad_targets_are_one_line_errors(tmp_path: Path, spec: str, message: str, capsys: pytest.CaptureFixture) -> None:
    rc = cli.main(["--quiet", "bench", "run", "digits-transfer", "--target", spec, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_cli_list_show_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["bench", "list"]) == 0
    assert "cifar10-transfer" in capsys.readouterr().out
    assert cli.main(["bench", "show", "cifar10-transfer"]) == 0
    assert "r20x3-small" in capsys.readouterr().out
    rc = cli.main(["--quiet", "bench", "run", "digits-transfer", "--target", DIGITS, "--out", str(tmp_path / "r"),
                   "--entries"])
    out = capsys.readouterr().out
    assert rc == 0 and "worst eps 0.2 %" in out and DIGITS in out
    from robust_ens.leaderboard import validate

    entry = validate(tmp_path / "r" / "entries" / "zoo_digits_small_cnn_s2.json")
    assert entry.protocol.suite == "digits-transfer" and entry.worst(0.2).robust_acc < 1


def test_whitebox_task_on_digits(tmp_path: Path) -> None:
    pytest.importorskip("pyautoattack")
    src = (ROOT / "robust_ens" / "bench" / "protocols" / "cifar10-whitebox.toml").read_text()
    toml = tmp_path / "digits-whitebox.toml"
    toml.write_text(src.replace('suite = "cifar10-whitebox"', 'suite = "digits-whitebox"')
                    .replace('dataset = "cifar10"', 'dataset = "digits"').replace('eps = ["8/255"]', 'eps = [0.2]', 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = run_suite(str(toml), "smoke", [DIGITS], tmp_path / "r", progress=False)
    row = s["targets"][DIGITS]
    assert row["cells"][0]["attack"] == "autoattack-custom"
    assert row["worst_case"]["0.2"]["acc"] < row["clean"]["acc"]


SMOKE_TARGETS = {
    "digits-transfer": [DIGITS],
    "cifar10-transfer": ["tests.bench_models:tiny_cifar"],
    "cifar10-attacks": [],  # its own target panel
    "cifar10-whitebox": ["tests.bench_models:tiny_cifar"],
    "cifar10-corruptions": ["tests.bench_models:tiny_cifar"],
    "imagenet-transfer": [],  # its own panel of random-weight tiny timm models, on images made here
}


@pytest.mark.parametrize("suite", [s for s in list_suites() if get_suite(s).task != "depth"])
def test_every_suite_smoke_tier_runs_end_to_end(suite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import require_cifar10

    proto = get_suite(suite)
    if proto.dataset == "cifar10":
        require_cifar10()
    if proto.dataset == "imagenet-compatible":  # TransferAttack's layout, written here (random PNGs)
        from tests.imagenet_transfer_data import make_folder

        monkeypatch.setenv("ROBUST_ENS_DATA", str(make_folder(tmp_path / "data", proto.tier("smoke").n)))
    if proto.task == "whitebox":
        pytest.importorskip("pyautoattack")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = run_suite(suite, "smoke", SMOKE_TARGETS[suite], tmp_path / "r", progress=False)
    assert s["suite"] == suite and s["tier"] == "smoke" and s["targets"]
    for row in s["targets"].values():
        assert 0 <= row["clean"]["acc"] <= 1 and row["cells"]
        assert all(0 <= c["acc"] <= 1 and c["n"] == proto.tier("smoke").n for c in row["cells"])
    if proto.dataset == "cifar10":
        assert s["dataset"] in ("cifar10", "cifar10-jpeg")
    if proto.kind == "attack":
        assert set(s["attack_view"]) == set(proto.tier("smoke").attacks)


def test_target_that_fails_on_the_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli.main(["--quiet", "bench", "run", "digits-transfer", "--target", "tests.bench_models:flat_cifar",
                   "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "does not take digits images (1x8x8)" in err and "pick a model trained on this dataset" in err
    assert not (tmp_path / "r" / "results").exists()


def test_kittic_smoke_on_a_synthetic_tree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.bench_models import synthetic_kitti_tree

    tree = synthetic_kitti_tree(tmp_path, n=3)
    capsys.readouterr()
    rc = cli.main(["--quiet", "bench", "run", "kitti-c", "--target", "tests.bench_models:ramp_depth", "--data", str(tree),
                   "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "gaussian_noise" in out and "mCE" in out
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    res = s["depth"]["tests.bench_models:ramp_depth"]
    assert s["n"] == 2 and res["clean"]["abs_rel"] < 1e-6  # the smoke tier takes the first 2 images
    assert set(res["corrupted"]) == {"gaussian_noise", "brightness"} and "mCE" in res["summary"]


def test_a_tampered_result_file_is_recomputed_not_trusted(tmp_path: Path, smoke_run: tuple[Path, dict]) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    victim = next((out / "results").rglob("mifgsm@zoo2@0.2.safetensors"))
    from safetensors.torch import load_file, save_file

    t = load_file(str(victim))
    save_file({"correct": torch.ones_like(t["correct"]), "indices": t["indices"]}, str(victim))  # "all robust"
    with pytest.warns(RuntimeWarning, match="does not match the manifest"):
        s = run_suite("digits-transfer", "smoke", [DIGITS], out, store=out / "advsets", progress=False)
    assert _numbers(s) == _numbers(smoke_run[1]) and s["cost"]["advsets_made"] == 0


def test_weights_and_name_belong_to_the_target_before_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from robust_ens.cli import build_parser

    args = build_parser().parse_args(["bench", "run", "digits-transfer", "--target", "zoo:a", "--target", "pkg.m:f",
                                      "--weights", "w.safetensors", "--name", "mine"])
    assert args.targets == [{"spec": "zoo:a", "weights": None, "name": None},
                            {"spec": "pkg.m:f", "weights": "w.safetensors", "name": "mine"}]
    rc = cli.main(["bench", "run", "digits-transfer", "--name", "x", "--target", DIGITS, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--name must follow the --target it belongs to" in err and len(err.splitlines()) == 1


def test_a_packed_checkpoint_is_an_ensemble_target_and_its_costs_reach_the_entry(tmp_path: Path) -> None:
    from robust_ens import models
    from robust_ens.bench.report import to_entries

    torch.manual_seed(0)
    m = models.create("packed:small_cnn", members=3, num_classes=10, in_chans=1)
    models.save_checkpoint(m, tmp_path / "packed", dataset="digits",
                           metrics={"train_seconds_per_epoch": 1.5, "inference_seconds_per_example": 2e-4})
    s = run_suite("digits-transfer", "smoke", [TargetArg(str(tmp_path / "packed"), name="packed3")],
                  tmp_path / "run", progress=False)
    row = s["targets"]["packed3"]
    assert row["model"]["n_members"] == 3
    assert row["model"]["costs"] == {"train_seconds_per_epoch": 1.5, "inference_seconds_per_example": 2e-4}
    (entry,) = to_entries(s, run_dir=tmp_path / "run")
    assert entry.model.n_members == 3 and entry.model.config["costs"]["train_seconds_per_epoch"] == 1.5
    assert entry.model.parameters == sum(p.numel() for p in m.parameters())


def test_a_changed_attack_implementation_changes_the_digest_and_the_run_folder_refuses_it(
        smoke_run: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_ens.attacks import CWA

    before = get_suite("digits-transfer").digest("smoke")
    monkeypatch.setattr(CWA, "code_version", CWA.code_version + 1)
    assert get_suite("digits-transfer").digest("smoke") != before
    with pytest.raises(RobustEnsError, match="pick a new --out"):
        run_suite("digits-transfer", "smoke", [DIGITS], smoke_run[0], progress=False)


# --------------------------------------------------------------------------- typed results and the one seed rule


def test_the_typed_result_is_what_summary_json_holds_and_reads_back(tmp_path: Path,
                                                                    smoke_run: tuple[Path, dict]) -> None:
    from robust_ens.bench.evaluate import AttackCell, Rate, TargetResult

    out = tmp_path / "run"
    s = run_suite("digits-transfer", "smoke", [DIGITS], out, store=smoke_run[0] / "advsets", progress=False)
    assert isinstance(s, RunResult)
    row = s.targets[DIGITS]
    assert isinstance(row, TargetResult) and isinstance(row.clean, Rate) and row.sanity is not None
    assert all(isinstance(c.cell, AttackCell) for c in row.cells) and row.cells[0].id == "mifgsm@zoo2@0.1"
    on_disk = json.loads((out / "summary.json").read_text())
    assert json.loads(json.dumps(s.to_summary())) == on_disk and dict(s)["targets"] == s["targets"]
    again = RunResult.from_summary(on_disk)
    assert again.to_summary() == s.to_summary() and again.targets[DIGITS] == row


def test_one_batch_seed_rule_serves_the_engine_and_the_crafting_route() -> None:
    from robust_ens.bench.examples import attack_cell_id, batch_seed
    from robust_ens.canonical import sha256_json

    # the engine's rule, unchanged: committed entries were made with these seeds
    assert batch_seed(0, "mifgsm@zoo2@0.1", 0) == int(sha256_json({"seed": 0, "cell": "mifgsm@zoo2@0.1", "batch": 0})[:15], 16)
    seeds = {batch_seed(s, c, b) for s in (0, 1) for c in ("a", "b") for b in range(3)}
    assert len(seeds) == 12 and all(0 <= x < 2**60 for x in seeds)
    assert attack_cell_id("mifgsm", "zoo2", 0.1) == "mifgsm@zoo2@0.1"


def test_transfer_table_crafts_through_the_store(tmp_path: Path) -> None:
    from robust_ens import Ensemble, data
    from robust_ens.attacks import CWA
    from robust_ens.bench.transfer_task import transfer_table
    from tests.attack_fixtures import load_digits_model
    from tests.fixtures.make_digits_weights import SEEDS

    x, y = data.load("digits", split="test", n=64, seed=0)
    models3 = [load_digits_model(s) for s in SEEDS]
    sur = Ensemble(models3[:2], precision="fp32")
    tgt = models3[2]
    rows = transfer_table(["mifgsm", CWA(steps=3)], sur, {"m2": tgt}, x, y, eps=[0.1, 0.3], steps=3, alpha=0.05,
                          store=tmp_path / "store")
    assert [(r["attack"], r["eps"]) for r in rows] == [("mifgsm", 0.1), ("mifgsm", 0.3), ("CWA", 0.1), ("CWA", 0.3)]
    for r in rows:
        assert r["surrogate"] <= r["clean/m2"] + 1e-9 and 0 <= r["m2"] <= 1
    assert rows[1]["m2"] < rows[1]["clean/m2"]  # eps 0.3 transfers
    made = sorted(p.name for p in (tmp_path / "store").rglob("*.safetensors"))
    assert len(made) == 4  # one uint8 batch per (attack, eps), 64 examples in one batch of 256
    again = transfer_table(["mifgsm", CWA(steps=3)], sur, {"m2": tgt}, x, y, eps=[0.1, 0.3], steps=3, alpha=0.05,
                           store=tmp_path / "store")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert sorted(p.name for p in (tmp_path / "store").rglob("*.safetensors")) == made  # read back, not re-made

"""The engine's FLOP accounting (issue 27): every run's summary records the FLOPs it crafted and the rate.

The expectation is computed here from the counter itself (FlopCounterMode on one image), not from
the code under test: a PGD run on a 2-member surrogate must cost exactly members x images x eps x
steps x (one forward + one input gradient) of what one image costs each member.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from robust_ens import models
from robust_ens.bench import flops
from robust_ens.bench.evaluate import Cost, RunResult
from robust_ens.bench.report import to_entries
from robust_ens.bench.runner import run_suite

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "zoo:digits_small_cnn_s2"
N, EPS, STEPS = 40, (0.1, 0.2), 3  # digits-transfer's smoke tier
DERIVED = ("flops", "gflops_per_s", "eval_flops", "eval_gflops_per_s")


def _counted(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """Forward and input-gradient FLOPs of one image, counted here directly."""
    x = torch.full((1, *shape), 0.5, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        out = m.eval()(x)
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(out.sum(), x)
    return fwd.get_total_flops(), bwd.get_total_flops()


@pytest.fixture(scope="module")
def pgd_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """digits-transfer's smoke tier with PGD alone (a simple attack: one forward and one backward a step)."""
    tmp = tmp_path_factory.mktemp("flops")
    src = (ROOT / "robust_ens" / "bench" / "protocols" / "digits-transfer.toml").read_text()
    smoke = 'attacks = ["mifgsm", "cwa"]\nsurrogates = ["zoo2"]\n'
    assert src.count(smoke) == 1
    toml = tmp / "pgd.toml"
    toml.write_text(src.replace(smoke, 'attacks = ["pgd"]\nsurrogates = ["zoo2"]\n'))
    out = tmp / "run"
    result = run_suite(str(toml), "smoke", [DIGITS], out, store=tmp / "advsets", progress=False)
    return toml, out, json.loads((out / "summary.json").read_text()) | {"_result_cost": result.cost.to_dict()}


def test_summary_records_flops_of_every_member_image_step(pgd_run: tuple[Path, Path, dict]) -> None:
    _, _, summary = pgd_run
    cost = summary["cost"]
    per = [_counted(models.load(f"zoo:digits_small_cnn_s{k}"), (1, 8, 8)) for k in (0, 1)]  # zoo2's members
    assert all(f > 0 and b > 0 for f, b in per)
    expected = N * len(EPS) * STEPS * sum(f + b for f, b in per)  # members x images x steps x (fwd + bwd)
    assert cost["forward"] == cost["backward"] == N * len(EPS) * STEPS * 2
    assert cost["flops"] > 0 and cost["flops"] == pytest.approx(expected, rel=1e-12)
    assert cost["gflops_per_s"] == pytest.approx(cost["flops"] / cost["attack_seconds"] / 1e9)
    assert set(DERIVED) <= set(cost) and cost == summary["_result_cost"]
    # evaluation: the target's forward on every adversarial image of every cell (plus nothing else counted)
    target = _counted(models.load(DIGITS), (1, 8, 8))[0]
    assert cost["eval_flops"] == pytest.approx(N * len(EPS) * target, rel=1e-12)


def test_input_gradient_is_measured_not_assumed() -> None:
    """An attack's backward is the input gradient only: about one forward for a conv net, not two."""
    m = models.create("resnet20", num_classes=10)
    f, b = _counted(m, (3, 32, 32))
    got = flops.model_flops(m, (3, 32, 32))
    assert (got.forward, got.backward) == (f, b) and got.step == f + b
    assert 0.9 < b / f < 1.1 and 70e6 < f < 90e6  # ResNet-20: about 41 M multiply-adds


def test_measuring_leaves_the_model_and_random_state_alone() -> None:
    m = models.create("resnet20", num_classes=10).train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    flops.model_flops(m, (3, 16, 16))
    assert m.training and all(mod.training for mod in m.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())  # BatchNorm statistics included


def test_a_model_the_counter_cannot_follow_costs_zero_flops_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    class NoGrad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.detach().flatten(1)

    assert flops.model_flops(NoGrad(), (1, 4, 4)) == flops.PassFlops(0.0, 0.0)
    assert "not measured" in caplog.text


def test_ensemble_member_flops_are_the_mean_and_evaluation_the_sum() -> None:
    from robust_ens import Ensemble

    a, b = models.create("small_cnn", in_chans=1, width=8), models.create("small_cnn", in_chans=1, width=16)
    fa, fb = _counted(a, (1, 8, 8)), _counted(b, (1, 8, 8))
    ens = Ensemble([a, b])
    mean = flops.member_flops(ens, (1, 8, 8))
    assert (mean.forward, mean.backward) == ((fa[0] + fb[0]) / 2, (fa[1] + fb[1]) / 2)
    assert flops.ensemble_forward_flops(ens, (1, 8, 8)) == fa[0] + fb[0]
    assert flops.pass_flops(ens, (1, 8, 8), 4, 2) == 4 * mean.forward + 2 * mean.backward


def test_an_old_summary_without_flops_still_loads_and_a_resumed_run_writes_them(
        pgd_run: tuple[Path, Path, dict]) -> None:
    toml, out, summary = pgd_run
    old = {k: v for k, v in summary.items() if k != "_result_cost"}
    old["cost"] = {k: v for k, v in old["cost"].items() if k not in DERIVED}
    (out / "summary.json").write_text(json.dumps(old))
    back = RunResult.from_summary(json.loads((out / "summary.json").read_text()))
    assert back.cost.flops == 0 and back.cost.gflops_per_s is None and back.cost.speed_text() == ""
    assert to_entries(back, "test", run_dir=out)  # entries never carried FLOPs: the same entries as before
    again = run_suite(str(toml), "smoke", [DIGITS], out, store=out.parent / "advsets", progress=False)
    cost = json.loads((out / "summary.json").read_text())["cost"]
    assert cost["advsets_made"] == 0 and cost["flops"] == 0 and cost["gflops_per_s"] is None
    assert again["targets"] == old["targets"]


def test_cost_round_trips_and_names_its_rates() -> None:
    c = Cost(attack_seconds=2.0, flops=3e9, eval_seconds=1.0)
    c.add_attack({"seconds": 1.0, "forward": 1, "backward": 1, "flops": 3e9})
    c.add_eval(1.0, 4e9)
    assert Cost.from_dict(c.to_dict()) == c
    assert c.to_dict()["gflops_per_s"] == pytest.approx(2.0) and c.to_dict()["eval_gflops_per_s"] == pytest.approx(2.0)
    assert c.speed_text() == "crafting 6 GFLOP at 2.0 GFLOP/s, evaluation 4 GFLOP at 2.0 GFLOP/s"


def test_a_crafted_sets_record_carries_its_flops(tmp_path: Path) -> None:
    """``robust-ens attack``'s record: the FLOPs each batch cost when it was made (as its attack seconds: a
    batch read back from the store reports what making it cost)."""
    from robust_ens import Ensemble
    from robust_ens.attacks import PGD
    from robust_ens.bench.advsets import AdvSetStore
    from robust_ens.bench.craft import attack_set
    from robust_ens.bench.examples import Examples
    from robust_ens.bench.targets import module_target

    torch.manual_seed(0)
    members = [models.create("small_cnn", in_chans=1, width=8) for _ in range(2)]
    sur = module_target(Ensemble(members).eval(), "surrogate")
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    ex = Examples.of(x, torch.arange(6) % 10, torch.arange(6), "tensors", 10, 4)
    store = AdvSetStore(tmp_path / "store")
    _, rec = attack_set(PGD(eps=0.1, alpha=0.05, steps=3), sur, ex, store=store, device=torch.device("cpu"),
                        progress=False)
    step = sum(f + b for f, b in (_counted(m, (1, 8, 8)) for m in members))  # both members, one image
    assert rec["cost"]["flops"] == pytest.approx(6 * 3 * step) and rec["cost"]["gflops_per_s"] > 0
    _, again = attack_set(PGD(eps=0.1, alpha=0.05, steps=3), sur, ex, store=store, device=torch.device("cpu"),
                          progress=False)
    assert again["cost"]["batches_from_store"] == 2 and again["cost"]["flops"] == rec["cost"]["flops"]

"""Running one protocol under pytest-benchmark: one timed round, numbers in ``extra_info``, entries written.

``bench_protocols.py`` calls :func:`run_protocol` for every registered classifier suite (and
:func:`run_depth_protocol` for depth suites); the run folder is ``<bench-out>/<suite>-<tier>``
(resumable, like ``robust-ens bench run``), entries go to its ``entries/`` folder, and
``benchmark.extra_info`` holds the headline numbers, every cell and the cost, so
``--benchmark-json``, ``--benchmark-autosave`` and ``--benchmark-compare`` carry them.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from robust_ens.bench import get_suite
from robust_ens.bench.evaluate import RunResult
from robust_ens.bench.report import to_entries
from robust_ens.bench.runner import TargetArg, run_suite
from robust_ens.leaderboard import validate, write_entries


def needs_data(dataset: str) -> None:
    """Skip (locally) or fail (under CI) when a protocol's dataset is missing."""
    if dataset == "cifar10":
        from tests.conftest import require_cifar10

        require_cifar10()
    if dataset == "imagenet-compatible":  # not on these machines (tests/test_bench.py runs its smoke tier on images it makes)
        from robust_ens import data
        from robust_ens.errors import RobustEnsError

        try:
            data.load_uint8(dataset, "test")
        except RobustEnsError as err:
            pytest.skip(str(err))


def extra_info(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What pytest-benchmark stores for a protocol run: headline numbers, cells and cost."""
    info: dict[str, Any] = {"suite": summary["suite"], "version": summary["version"], "tier": summary["tier"],
                            "dataset": summary["dataset"], "n": summary["n"], "cost": summary.get("cost", {})}
    targets: dict[str, Any] = {}
    for name, row in summary.get("targets", {}).items():
        targets[name] = {
            "clean": row["clean"]["acc"],
            "worst_case": {e: w["acc"] for e, w in row.get("worst_case", {}).items()},
            "cells": {c["id"]: c["acc"] for c in row.get("cells", [])},
            "flags": row.get("flags", []),
            **({"mean_corruption_accuracy": row["mean_corruption_accuracy"]}
               if "mean_corruption_accuracy" in row else {}),
        }
    info["targets"] = targets
    if "attack_view" in summary:
        info["attacks"] = {a: {e: {"mean": v["mean"], "min": v["min"]} for e, v in per.items()}
                           for a, per in summary["attack_view"].items()}
    return info


def run_protocol(benchmark: Any, suite: str, tier: str, targets: list[str], out: Path) -> RunResult:
    """Run ``suite`` at ``tier`` once under pytest-benchmark and write its summary and entries.

    Returns:
        The engine's result (it reads like its ``summary.json``).
    """
    proto = get_suite(suite)
    needs_data(proto.dataset)
    if proto.task == "whitebox":
        pytest.importorskip("pyautoattack")
    run_dir = out / f"{suite}-{tier}"
    args = [TargetArg(spec=t) for t in targets]
    result: dict[str, Any] = {}

    def once() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # third-party deprecations; the engine's own warnings are tested elsewhere
            result["summary"] = run_suite(suite, tier, args, run_dir, progress=False)

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    summary = result["summary"]
    benchmark.extra_info.update(extra_info(summary))
    for path in write_entries(to_entries(summary, f"pytest suites --tier {tier}", run_dir=run_dir, targets=args),
                              run_dir / "entries", flat=True):
        validate(path)  # what was written reads back as a valid entry
    if os.environ.get("ROBUST_ENS_BENCH_PRINT"):
        print(json.dumps(benchmark.extra_info, indent=1))
    return summary


def run_depth_protocol(benchmark: Any, suite: str, tier: str, targets: list[str], out: Path,
                       tmp: Path) -> dict[str, Any]:
    """Run a depth suite (``kitti-c``) at ``tier`` once under pytest-benchmark.

    Smoke tier: a synthetic KITTI tree in KITTI's layout, corrupted by ``robust-ens corrupt`` and
    scored with a model that predicts the ground truth up to scale. Above it, set
    ``ROBUST_ENS_KITTI_C`` to a real KITTI-C tree (with ``gt_depths.npz``) and give the depth model
    as ``--target pkg.module:factory``.

    Returns:
        The target's results (``clean``, ``corrupted``, ``summary`` with mCE and mRR).
    """
    from robust_ens.bench.depth_task import run_depth

    if tier == "smoke":
        from tests.bench_models import synthetic_kitti_tree

        tree, target = synthetic_kitti_tree(tmp), "tests.bench_models:ramp_depth"
    else:
        real = os.environ.get("ROBUST_ENS_KITTI_C")
        if not real or not targets:
            pytest.skip(f"{suite} beyond smoke needs ROBUST_ENS_KITTI_C=<KITTI-C tree> and --target pkg.module:factory")
        tree, target = Path(real), targets[0]
    result: dict[str, Any] = {}
    benchmark.pedantic(lambda: result.update(run_depth(suite, tier, target, tree, out / f"{suite}-{tier}")),
                       rounds=1, iterations=1)
    res = result["depth"][target]
    benchmark.extra_info.update({"suite": suite, "tier": tier, "clean_abs_rel": res["clean"]["abs_rel"],
                                 "mCE": res["summary"].get("mCE"), "mRR": res["summary"].get("mRR")})
    return res


def check_summary(summary: Mapping[str, Any], tier: str) -> None:
    """What every protocol run must satisfy: accuracies in [0, 1], a worst case at most its weakest cell."""
    assert summary["targets"] and summary["tier"] == tier
    for row in summary["targets"].values():
        assert 0 <= row["clean"]["acc"] <= 1
        assert all(0 <= c["acc"] <= 1 for c in row["cells"])
        for e, w in row.get("worst_case", {}).items():
            assert w["acc"] <= min(c["acc"] for c in row["cells"] if f"{c['eps']:.6g}" == e)


def default_targets(suite: str, tier: str, given: list[str]) -> list[str]:
    """``--target`` when given, else the suite's committed default.

    The untrained test models stand in for the CIFAR-10 zoo only at the smoke tier (seconds); a
    small or full run of a CIFAR-10 defense suite without ``--target`` evaluates the cifar10-jpeg
    zoo's defenses (:data:`ZOO_DEFENSES`), and is skipped when no such entry is shipped.
    """
    if given:
        return given
    targets = DEFAULT_TARGETS.get(suite, [])
    if tier != "smoke" and any(t.startswith("tests.") for t in targets):
        from robust_ens.models.zoo import list_zoo

        shipped = [t for t in ZOO_DEFENSES if t.removeprefix("zoo:") in list_zoo()]
        if not shipped:
            pytest.skip(f"{suite} {tier}: no cifar10-jpeg zoo model is shipped; pass --target SPEC")
        return shipped
    return targets


#: The cifar10-jpeg zoo's defense ensembles (robust_ens/zoo/cifar10.toml), the default targets of
#: the CIFAR-10 defense suites above the smoke tier.
ZOO_DEFENSES = [f"zoo:{d}-r20x3-5k" for d in ("baseline", "adp", "gal", "dverge", "trs")]


#: Targets a defense protocol evaluates when no ``--target`` is given: committed zoo models, or
#: tiny test models for the CIFAR-10 suites at the smoke tier (see :func:`default_targets`).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "digits-transfer": ["zoo:digits_small_cnn_s2", "zoo:digits_small_cnn_s1,zoo:digits_small_cnn_s2"],
    "cifar10-transfer": ["tests.bench_models:tiny_cifar"],
    "cifar10-attacks": [],  # the protocol's own target panel
    "cifar10-whitebox": ["tests.bench_models:tiny_cifar"],
    "cifar10-corruptions": ["tests.bench_models:tiny_cifar"],
}

"""Depth under KITTI-C corruptions (RoboDepth's DES, mCE, mRR) for a depth model.

Smoke tier: a synthetic KITTI tree in KITTI's layout, corrupted by ``robust-ens corrupt`` and
scored with a model that predicts the ground truth up to scale. With ``--benchmark``, set
``ROBUST_ENS_KITTI_C`` to a real KITTI-C tree (with ``gt_depths.npz``) and give the depth model as
``--target pkg.module:factory``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from robust_ens.bench import list_suites
from robust_ens.bench.depth_task import run_depth
from tests.bench_models import synthetic_kitti_tree


@pytest.mark.parametrize("suite", list_suites("kitti-c"))
def test_protocol(benchmark, suite: str, bench_tier: str, bench_targets: list[str], bench_out: Path,  # noqa: ANN001
                  tmp_path: Path) -> None:
    if bench_tier == "smoke":
        tree, target = synthetic_kitti_tree(tmp_path), "tests.bench_models:ramp_depth"
    else:
        real = os.environ.get("ROBUST_ENS_KITTI_C")
        if not real or not bench_targets:
            pytest.skip("kitti-c beyond smoke needs ROBUST_ENS_KITTI_C=<KITTI-C tree> and --target pkg.module:factory")
        tree, target = Path(real), bench_targets[0]
    result: dict = {}
    benchmark.pedantic(lambda: result.update(run_depth(suite, bench_tier, target, tree, bench_out / f"{suite}-{bench_tier}")),
                       rounds=1, iterations=1)
    res = result["depth"][target]
    benchmark.extra_info.update({"suite": suite, "tier": bench_tier, "clean_abs_rel": res["clean"]["abs_rel"],
                                 "mCE": res["summary"].get("mCE"), "mRR": res["summary"].get("mRR")})
    assert res["corrupted"] and "mCE" in res["summary"]

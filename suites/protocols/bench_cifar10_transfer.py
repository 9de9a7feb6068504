"""The defense leaderboard: worst-case transfer robustness after DVERGE's black-box protocol.

``pytest suites/protocols/bench_cifar10_transfer.py`` runs the smoke tier; add ``--benchmark`` for the small
tier, ``--tier full`` for the papers' scale, ``--target SPEC`` to evaluate your own model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_ens.bench import list_suites
from suites.protocols.harness import default_targets, run_protocol

pytestmark = pytest.mark.cifar


@pytest.mark.parametrize("suite", list_suites("cifar10-transfer"))
def test_protocol(benchmark, suite: str, bench_tier: str, bench_targets: list[str], bench_out: Path) -> None:  # noqa: ANN001
    summary = run_protocol(benchmark, suite, bench_tier, default_targets(suite, bench_tier, bench_targets), bench_out)
    assert summary["targets"] and summary["tier"] == bench_tier
    for row in summary["targets"].values():
        assert 0 <= row["clean"]["acc"] <= 1
        assert all(0 <= c["acc"] <= 1 for c in row["cells"])
        for e, w in row.get("worst_case", {}).items():
            assert w["acc"] <= min(c["acc"] for c in row["cells"] if f"{c['eps']:.6g}" == e)

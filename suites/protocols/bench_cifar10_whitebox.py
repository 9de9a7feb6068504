"""White-box robustness with the original AutoAttack (pyautoattack).

``pytest suites/protocols/bench_cifar10_whitebox.py`` runs the smoke tier; add ``--benchmark`` for the small
tier, ``--tier full`` for the papers' scale, ``--target SPEC`` to evaluate your own model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_ens.bench import list_suites
from suites.protocols.harness import check_summary, default_targets, run_protocol

pytestmark = pytest.mark.cifar


@pytest.mark.parametrize("suite", list_suites("cifar10-whitebox"))
def test_protocol(benchmark, suite: str, bench_tier: str, bench_targets: list[str], bench_out: Path) -> None:  # noqa: ANN001
    summary = run_protocol(benchmark, suite, bench_tier, default_targets(suite, bench_tier, bench_targets), bench_out)
    check_summary(summary, bench_tier)

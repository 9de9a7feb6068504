"""Every registered benchmark protocol, collected from the suite registry (timm's habit: the registry is the test list).

A suite registered in ``robust_ens/bench/protocols/`` is a test here with no file of its own:
``test_protocol[<suite>]``. Without ``--benchmark`` each runs its smoke tier (seconds; part of
``make test``); ``--benchmark`` runs the small tier timed, ``--tier full`` the papers' scale, and
``--target SPEC`` evaluates your own model (see ``conftest.py`` at the repository root).

    pytest suites/protocols
    pytest "suites/protocols/bench_protocols.py::test_protocol[digits-transfer]" --benchmark --benchmark-autosave

Suites on CIFAR-10 carry the ``cifar`` mark (skipped locally without the images, failed under CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robust_ens.bench import get_suite, list_suites
from suites.protocols.harness import check_summary, default_targets, run_depth_protocol, run_protocol


def _suites() -> list[Any]:
    """One parameter per registered suite, marked ``cifar`` when it needs the CIFAR-10 images."""
    return [pytest.param(s, id=s, marks=[pytest.mark.cifar] if get_suite(s).dataset == "cifar10" else [])
            for s in list_suites()]


@pytest.mark.parametrize("suite", _suites())
def test_protocol(benchmark, suite: str, bench_tier: str, bench_targets: list[str], bench_out: Path,  # noqa: ANN001
                  tmp_path: Path) -> None:
    if get_suite(suite).task == "depth":
        res = run_depth_protocol(benchmark, suite, bench_tier, bench_targets, bench_out, tmp_path)
        assert res["corrupted"] and "mCE" in res["summary"]
        return
    summary = run_protocol(benchmark, suite, bench_tier, default_targets(suite, bench_tier, bench_targets), bench_out)
    check_summary(summary, bench_tier)


def test_every_registered_suite_is_collected() -> None:
    assert [p.values[0] for p in _suites()] == list_suites() and list_suites()

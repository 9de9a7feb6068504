"""Fixtures of the protocol suites: tier, targets and output folder from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bench_tier(request: pytest.FixtureRequest) -> str:
    """``--tier``, else ``small`` under ``--benchmark`` and ``smoke`` without it."""
    tier = request.config.getoption("--tier")
    return str(tier or ("small" if request.config.getoption("--benchmark") else "smoke"))


@pytest.fixture(scope="session")
def bench_targets(request: pytest.FixtureRequest) -> list[str]:
    """The ``--target SPEC`` options (empty: each suite's default)."""
    return list(request.config.getoption("--target"))


@pytest.fixture(scope="session")
def bench_out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--bench-out``, else a temporary folder for this session."""
    out = request.config.getoption("--bench-out")
    return Path(out) if out else tmp_path_factory.mktemp("bench-out")

"""Repository-wide pytest options.

``pytest suites/ --benchmark`` runs the benchmark suites at full size with pytest-benchmark
timing. Without ``--benchmark`` (as in ``make test``) the suites run once each at smoke size with
timing disabled, so they are still checked for correctness on every change.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run suites/ at full size and time them with pytest-benchmark (slow)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--benchmark") and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True
    os.environ.setdefault("ROBUST_ENS_QUIET", "1")


@pytest.fixture(scope="session")
def full_benchmark(request: pytest.FixtureRequest) -> bool:
    """True under ``--benchmark``: use the protocol's real sizes; False: smoke sizes."""
    return bool(request.config.getoption("--benchmark"))

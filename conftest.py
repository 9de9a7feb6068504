"""Repository-wide pytest options.

``pytest suites/ --benchmark`` runs the benchmark protocols (``suites/protocols/``) at their
``small`` tier and the speed benchmarks (``suites/speed/``) at full size, timed with
pytest-benchmark. Without ``--benchmark`` (as in ``make test``) every protocol runs its ``smoke``
tier and every speed benchmark its smoke size once, with timing disabled, so they are still
checked for correctness on every change.

Our options (clear of pytest-benchmark's ``--benchmark-*``):

* ``--benchmark``: real sizes and timing.
* ``--tier smoke|small|full``: the protocols' tier (default: ``small`` with ``--benchmark``, else ``smoke``).
* ``--target SPEC`` (repeatable): the targets a defense protocol evaluates (default: the suite's
  committed zoo models); any engine target spec.
* ``--bench-out DIR``: where each protocol's run folder and entries go (default: a temporary folder).
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run suites/ at real size and time them with pytest-benchmark (slow)",
    )
    parser.addoption("--tier", default=None, choices=("smoke", "small", "full"),
                     help="tier of the benchmark protocols (default: small with --benchmark, else smoke)")
    parser.addoption("--target", action="append", default=[], metavar="SPEC",
                     help="a target for the defense protocols (repeatable; default: the committed zoo)")
    parser.addoption("--bench-out", default=None, metavar="DIR",
                     help="folder for the protocols' run folders and entries (default: a temporary folder)")


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--benchmark") and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True
    os.environ.setdefault("ROBUST_ENS_QUIET", "1")


@pytest.fixture(scope="session")
def full_benchmark(request: pytest.FixtureRequest) -> bool:
    """True under ``--benchmark``: use the protocol's real sizes; False: smoke sizes."""
    return bool(request.config.getoption("--benchmark"))

"""Fixtures shared by the speed benchmarks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def threads(full_benchmark: bool) -> Iterator[int]:
    """Smoke size runs on one torch thread (tiny work; on a shared CPU OpenMP threads spin);
    full size uses torch's default (``OMP_NUM_THREADS`` chooses). Yields the count in use."""
    before = torch.get_num_threads()
    if not full_benchmark:
        torch.set_num_threads(1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)

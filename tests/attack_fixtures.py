"""Tiny trained digits models for the attack tests (session-scoped, loaded from committed files).

The models are the checkpoints of :mod:`tests.fixtures.make_digits_weights`, not trained at session
start: weights trained on one CPU differ from those trained on another (SIMD kernels, bf16, thread
count), and the attack tests' thresholds (white-box accuracy drops, targeted success above chance)
must not depend on which machine trained them. The test modules import the fixtures they use by
name. ``single_thread`` runs a test with one torch thread: the 8x8 models gain nothing from more,
and on a shared 2-core machine OpenMP threads spinning against other processes made a ResNet-20
step 100x slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from robust_ens import Ensemble, data, models
from tests.fixtures.make_digits_weights import SEEDS, single_path


def load_digits_model(seed: int) -> nn.Module:
    """The committed small_cnn (width 16) of ``seed``, in eval mode (sha256-checked)."""
    return models.load_checkpoint(single_path(seed)).eval()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` torch threads in the calling thread for the duration of the block (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=False)
def single_thread() -> Iterator[None]:
    """One torch thread for the duration of a test (restored afterwards)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """64 digits test images and labels."""
    return data.load("digits", split="test", n=64, seed=0)


@pytest.fixture(scope="session")
def digits_test_256() -> tuple[torch.Tensor, torch.Tensor]:
    """256 digits test images and labels: enough for a binomial test of targeted success against chance."""
    return data.load("digits", split="test", n=256, seed=0)


@pytest.fixture(scope="session")
def digits_models() -> list[nn.Module]:
    """Three independently trained small CNNs (committed weights, the same on every machine)."""
    return [load_digits_model(s) for s in SEEDS]


@pytest.fixture(scope="session")
def digits_model(digits_models: list[nn.Module]) -> nn.Module:
    return digits_models[0]


@pytest.fixture(scope="session")
def digits_ensemble(digits_models: list[nn.Module]) -> Ensemble:
    """The three models as an fp32 logit-averaging Ensemble."""
    return Ensemble(digits_models, combine="logits", precision="fp32").eval()

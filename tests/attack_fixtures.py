"""Tiny trained digits models for the attack tests (session-scoped, a few seconds on a CPU).

The test modules import the fixtures they use by name. ``single_thread`` runs a test with one
torch thread: the 8x8 models gain nothing from more, and on a shared 2-core machine OpenMP
threads spinning against other processes made a ResNet-20 step 100x slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from robust_ens import Ensemble, data, models
from robust_ens.train import TrainConfig, train_classifier


def train_digits_model(seed: int, epochs: int = 5, width: int = 16) -> nn.Module:
    """A small_cnn trained on the digits train split with the project's training loop (1-2 s)."""
    torch.manual_seed(seed)
    x, y = data.load_uint8("digits", split="train")
    m = models.create("small_cnn", in_chans=1, width=width)
    cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=1e-2, weight_decay=0.0,
                      schedule="constant", crop_padding=0, flip=False, precision="fp32", seed=seed)
    train_classifier(m, x, y, cfg, device="cpu", progress=False)
    return m.eval()


@pytest.fixture(autouse=False)
def single_thread() -> Iterator[None]:
    """One torch thread for the duration of a test (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """64 digits test images and labels."""
    return data.load("digits", split="test", n=64, seed=0)


@pytest.fixture(scope="session")
def digits_models() -> list[nn.Module]:
    """Three independently trained small CNNs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            return [train_digits_model(s) for s in range(3)]
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_model(digits_models: list[nn.Module]) -> nn.Module:
    return digits_models[0]


@pytest.fixture(scope="session")
def digits_ensemble(digits_models: list[nn.Module]) -> Ensemble:
    """The three models as an fp32 logit-averaging Ensemble."""
    return Ensemble(digits_models, combine="logits", precision="fp32").eval()

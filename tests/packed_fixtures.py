"""A trained packed ensemble on digits for the contract tests (session-scoped, a few seconds).

``packed:small_cnn`` with three members trained jointly by the baseline defense (shared weights,
per-member adapters and BatchNorm), fp32 so the contract's bit-for-bit checks hold.
"""

from __future__ import annotations

import pytest
import torch

from robust_ens.defenses import train_defense
from robust_ens.ensemble import Ensemble

DIGITS_RECIPE = {
    "train": dict(epochs=6, batch_size=64, optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant",
                  crop_padding=0, flip=False, precision="fp32"),
    "eval_n": 200,
}


def train_digits_packed(members: int = 3, seed: int = 0, defense: str = "baseline") -> Ensemble:
    """A packed small CNN (width 16) trained on the digits train split; returned in eval mode, fp32."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            ens = train_defense(defense, arch="packed:small_cnn", n_members=members, dataset="digits",
                                recipe=DIGITS_RECIPE, seed=seed, progress=False, arch_kwargs={"width": 16})
    finally:
        torch.set_num_threads(before)
    ens.precision = "fp32"
    return ens.eval()


@pytest.fixture(scope="session")
def digits_packed() -> Ensemble:
    """Three packed members of one small CNN, trained jointly on digits."""
    return train_digits_packed()

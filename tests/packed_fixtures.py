"""A trained packed ensemble on digits for the contract tests (session-scoped, loaded from a committed file).

``packed:small_cnn`` with three members trained jointly by the baseline defense (shared weights,
per-member adapters and BatchNorm), written by :mod:`tests.fixtures.make_digits_weights` so that
every machine attacks the same weights; set to fp32 so the contract's bit-for-bit checks hold.
"""

from __future__ import annotations

import pytest

from robust_ens import models
from robust_ens.ensemble import Ensemble
from tests.fixtures.make_digits_weights import PACKED_PATH


def load_digits_packed() -> Ensemble:
    """The committed packed small CNN (width 16, three members), in eval mode and fp32."""
    ens = models.load_checkpoint(PACKED_PATH)
    assert isinstance(ens, Ensemble)
    ens.precision = "fp32"
    return ens.eval()


@pytest.fixture(scope="session")
def digits_packed() -> Ensemble:
    """Three packed members of one small CNN, trained jointly on digits."""
    return load_digits_packed()

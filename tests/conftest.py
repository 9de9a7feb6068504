"""Shared fixtures: CIFAR-10 discovery (skip locally, fail under CI) and tiny trained models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from robust_ens import data


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's dataset cache, but never let tests write elsewhere in $HOME by accident."""
    if "ROBUST_ENS_CACHE" not in os.environ:
        monkeypatch.setenv("ROBUST_ENS_CACHE", str(Path.home() / ".cache" / "robust_ens"))


def require_cifar10() -> None:
    """Skip when CIFAR-10 is absent on a user's machine; fail under CI (CI=true)."""
    kind, where = data.find_cifar10(split="test")
    if kind is None:
        msg = "CIFAR-10 not found (set ROBUST_ENS_DATA); looked in: " + ", ".join(map(str, where))  # type: ignore[arg-type]
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("under CI a missing dataset is a failure, not a skip: " + msg)
        pytest.skip(msg)


@pytest.fixture
def cifar10_available() -> None:
    require_cifar10()

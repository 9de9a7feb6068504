"""Ensemble(streams=True): members on parallel single-threaded CPU streams (robust_ens.streams)."""

from __future__ import annotations

import copy
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.attacks import PGD
from robust_ens.errors import RobustEnsError
from robust_ens.streams import stream_groups
from tests.attack_fixtures import torch_threads


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Streams need two or more torch threads in the calling thread (any machine can run two)."""
    with torch_threads(2):
        yield


def _frozen_members(k: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    members = [models.create("small_cnn", in_chans=1).eval() for _ in range(k)]
    for m in members:
        m.requires_grad_(False)
    return members


def _input_grad(ens: Ensemble, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xx = x.clone().requires_grad_()
    logits = ens.member_logits(xx)
    loss = F.cross_entropy(ens.combine_logits(logits), y)
    return logits.detach(), torch.autograd.grad(loss, xx)[0]


def test_groups_are_contiguous_near_equal_and_cover_every_member() -> None:
    assert stream_groups(4, 2) == [[0, 1], [2, 3]]
    assert stream_groups(3, 2) == [[0, 1], [2]]
    assert stream_groups(5, 3) == [[0, 1], [2, 3], [4]]
    assert stream_groups(2, 8) == [[0], [1]]
    assert stream_groups(1, 2) == [[0]]


def test_streamed_logits_and_input_gradient_match_the_plain_path(two_threads: None) -> None:
    members = _frozen_members(3)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    plain = Ensemble(copy.deepcopy(members), precision="fp32")
    streamed = Ensemble(copy.deepcopy(members), precision="fp32", streams=True)
    logits_p, grad_p = _input_grad(plain, x, y)
    logits_s, grad_s = _input_grad(streamed, x, y)
    torch.testing.assert_close(logits_s, logits_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_s, grad_p, rtol=1e-5, atol=1e-7)
    assert grad_s.abs().sum() > 0


def test_members_run_on_one_thread_each_and_the_caller_keeps_its_count(two_threads: None) -> None:
    seen: list[int] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return self.lin(x.flatten(1)[:, :4])

    ens = Ensemble([Recorder(), Recorder()], precision="fp32", streams=True)
    x = torch.rand(2, 1, 2, 2, requires_grad=True)
    ens(x).sum().backward()
    assert seen == [1, 1]
    assert torch.get_num_threads() == 2
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_members_with_parameter_gradients_run_as_usual(two_threads: None) -> None:
    torch.manual_seed(0)
    members = [models.create("small_cnn", in_chans=1) for _ in range(2)]  # parameters require gradients
    ens = Ensemble(members, precision="fp32", streams=True)
    ens(torch.rand(2, 1, 8, 8, requires_grad=True)).sum().backward()
    assert all(p.grad is not None for m in members for p in m.parameters())


def test_a_streamed_attack_is_deterministic_and_inside_its_budget(two_threads: None) -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    ens = Ensemble(_frozen_members(2), precision="fp32", streams=True)
    atk = PGD(eps=0.1, alpha=0.03, steps=3, random_start=True)
    a, b = atk(ens, x, y, seed=0).x_adv, atk(ens, x, y, seed=0).x_adv
    assert torch.equal(a, b)
    assert float((a - x).abs().max()) <= 0.1 + 1e-6
    assert not torch.equal(a, x)


def test_members_with_different_output_shapes_get_a_clear_error(two_threads: None) -> None:
    wide = nn.Sequential(nn.Flatten(), nn.Linear(4, 5)).requires_grad_(False)
    narrow = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).requires_grad_(False)
    ens = Ensemble([wide, narrow], precision="fp32", streams=True, check_inputs=False)
    with pytest.raises(RobustEnsError, match="different output shapes"):
        ens.member_logits(torch.rand(2, 1, 2, 2, requires_grad=True))


def test_the_environment_turns_streams_on_and_a_bad_value_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    members = _frozen_members(2)
    monkeypatch.delenv("ROBUST_ENS_STREAMS", raising=False)
    assert Ensemble(members).streams is False
    monkeypatch.setenv("ROBUST_ENS_STREAMS", "1")
    assert Ensemble(members).streams is True
    assert Ensemble(members, streams=False).streams is False  # an explicit choice wins
    monkeypatch.setenv("ROBUST_ENS_STREAMS", "maybe")
    with pytest.raises(RobustEnsError, match=r"ROBUST_ENS_STREAMS must be 1 \(streams on\) or 0 \(off\), got 'maybe'"):
        Ensemble(members)


def test_streams_are_part_of_an_adversarial_sets_key_and_leave_other_keys_as_they_were() -> None:
    from robust_ens.bench.craft import module_fingerprint

    members = _frozen_members(2)
    plain, streamed = Ensemble(members, streams=False), Ensemble(members, streams=True)
    assert "streams" not in repr(plain)
    assert module_fingerprint(plain) != module_fingerprint(streamed)


def _pools_in_child(queue: Any) -> None:
    from robust_ens import streams

    queue.put(len(streams._POOLS))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_inherit_the_parents_stream_workers(two_threads: None) -> None:
    """A child holds none of the parent's threads: a pool it inherited would take tasks and never run them.

    (The child only reports its pools: torch itself cannot run OpenMP work with 2 threads in a
    forked child of a parent that did, since libgomp does not survive fork.)
    """
    from robust_ens import streams

    ens = Ensemble(_frozen_members(2), precision="fp32", streams=True)
    ens(torch.rand(2, 1, 8, 8, requires_grad=True)).sum().backward()
    assert streams._POOLS  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_pools_in_child, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=10) == 0

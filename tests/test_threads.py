"""The small-work thread policy (robust_ens.threads): one thread inside, restore after, user choices win.

torch's default count is faked as 3 (``get_num_interop_threads`` reports the default), so the tests
see a change on any machine, including one with a single core. No test measures time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from robust_ens import threads
from robust_ens.threads import ENV_THREADS, policy_threads, small_work_threads, use_threads

DEFAULT = 3


@pytest.fixture(autouse=True)
def default_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user choice in the environment, torch at its (faked) default count; restored afterwards."""
    for var in (ENV_THREADS, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: DEFAULT)
    before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT)
    yield
    torch.set_num_threads(before)


def test_one_thread_inside_restored_after() -> None:
    assert policy_threads() == 1
    with small_work_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == DEFAULT
    with small_work_threads("cpu"), small_work_threads(torch.zeros(2)):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == DEFAULT


def test_decorator_and_recursion() -> None:
    @small_work_threads()
    def depth(k: int) -> list[int]:
        return [torch.get_num_threads()] + (depth(k - 1) if k else [])

    assert depth(3) == [1, 1, 1, 1]
    assert torch.get_num_threads() == DEFAULT


def test_decorator_decides_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    @small_work_threads()
    def inside() -> int:
        return torch.get_num_threads()

    monkeypatch.setenv(ENV_THREADS, "2")  # set after decoration: still applies
    assert inside() == 2
    monkeypatch.delenv(ENV_THREADS)
    assert inside() == 1
    assert torch.get_num_threads() == DEFAULT


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_openmp_environment_is_a_user_choice(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(var, str(DEFAULT))
    assert policy_threads() is None
    with small_work_threads():
        assert torch.get_num_threads() == DEFAULT


@pytest.mark.parametrize("value,inside", [("2", 2), ("1", 1), ("0", DEFAULT), ("torch", DEFAULT), ("off", DEFAULT)])
def test_robust_ens_threads(value: str, inside: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_THREADS, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # ROBUST_ENS_THREADS wins over OMP_NUM_THREADS
    with small_work_threads():
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == DEFAULT


def test_bad_robust_ens_threads_warns_and_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_THREADS, "many")
    monkeypatch.setattr(threads, "_warned", set())
    with pytest.warns(RuntimeWarning, match="ROBUST_ENS_THREADS"):
        assert policy_threads() == 1


def test_explicit_set_num_threads_is_respected() -> None:
    torch.set_num_threads(2)  # differs from the default: the user chose
    assert policy_threads() is None
    with small_work_threads():
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_nested_blocks_change_once() -> None:
    with small_work_threads():
        torch_inside = torch.get_num_threads()
        with small_work_threads():
            assert torch.get_num_threads() == torch_inside == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == DEFAULT


def test_use_threads_is_explicit_and_wins_inside() -> None:
    with use_threads(2):
        assert torch.get_num_threads() == 2
        with small_work_threads():
            assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == DEFAULT
    with small_work_threads(), use_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == DEFAULT
    with pytest.raises(ValueError):
        use_threads(0)


def test_exception_restores() -> None:
    with pytest.raises(KeyError), small_work_threads():
        assert torch.get_num_threads() == 1
        raise KeyError("x")
    assert torch.get_num_threads() == DEFAULT
    with pytest.raises(KeyError), use_threads(2), small_work_threads():
        raise KeyError("y")
    assert torch.get_num_threads() == DEFAULT
    assert threads._state.stack == []


def test_not_cpu_is_a_no_op() -> None:
    for dev in ("cuda", torch.device("cuda", 0), torch.zeros(1, device="meta"), "meta"):
        with small_work_threads(dev):
            assert torch.get_num_threads() == DEFAULT


def test_per_python_thread() -> None:
    seen: dict[str, int] = {}

    def work() -> None:
        torch.set_num_threads(DEFAULT)  # torch's count is per OpenMP thread once it ran an op
        with small_work_threads():
            seen["inside"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"inside": 1, "after": DEFAULT}
    assert torch.get_num_threads() == DEFAULT


def test_corrupt_runs_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import robust_ens.corruptions as rc

    counts: list[int] = []
    real = rc.quantize_u8

    def spy(x: torch.Tensor) -> torch.Tensor:
        counts.append(torch.get_num_threads())
        return real(x)

    monkeypatch.setattr(rc, "quantize_u8", spy)
    x = torch.rand(2, 3, 32, 32)
    rc.corrupt(x, "gaussian_noise", 2)
    assert counts and set(counts) == {1}
    assert torch.get_num_threads() == DEFAULT
    monkeypatch.setenv(ENV_THREADS, "2")
    counts.clear()
    rc.corrupt(x, "gaussian_noise", 2)
    assert set(counts) == {2}

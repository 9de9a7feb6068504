"""One adversarial-set store per machine, shared by every command and by runs started together.

* Every command that crafts uses the machine-wide store unless ``--store`` says otherwise, so a
  second command on the same protocol makes nothing.
* The key holds everything that moves a set's pixels: the same checkpoint sha256 behind another
  normalization, combine rule, precision, mode, device or torch version is another set.
* Concurrent runs: a set another process is making is waited for and read (its lock is a kernel
  ``flock``: a holder killed with SIGKILL blocks nobody); two runs started together make each set
  once between them and give identical numbers. A surrogate another run is training into the
  cache is waited for the same way.

Processes synchronise on multiprocessing events, never on timing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from robust_ens import cli, models
from robust_ens.attacks import MIFGSM
from robust_ens.bench.advsets import AdvSetStore, default_store
from robust_ens.bench.runner import run_suite
from robust_ens.bench.targets import Target

DIGITS = "zoo:digits_small_cnn_s2"
SMOKE_SETS = 8  # digits-transfer smoke: 2 attacks x 2 eps on one surrogate, 2 batches of 20
GUARD = 600.0  # a hang guard for a child's wait only (never reached when the test works)


def _numbers(summary: dict) -> dict:
    return {t: {"clean": r["clean"], "cells": r["cells"], "worst": r["worst_case"], "flags": r["flags"]}
            for t, r in summary["targets"].items()}


def _images() -> torch.Tensor:
    return torch.arange(3 * 16, dtype=torch.int64).reshape(3, 1, 4, 4).mul(5).remainder(256).to(torch.uint8)


def _fields() -> dict[str, Any]:
    return {"attack": MIFGSM(eps=0.1).config(), "code_version": 1, "surrogate": ["a" * 64], "eps": 0.1,
            "norm": "Linf", "data": "f" * 64, "indices": [0, 1, 2], "seed": 7, "targeted": False}


def _made() -> tuple[torch.Tensor, dict]:
    return (_images().float() / 255 + 0.05).clamp(0, 1), {"made_by": os.getpid()}


# --------------------------------------------------------------------------- children (spawned processes)


def _child_makes_after_parent_waits(root: str, holding: Any, parent_waiting: Any) -> None:
    def make() -> tuple[torch.Tensor, dict]:
        holding.set()  # the key's lock is held from here
        assert parent_waiting.wait(GUARD)
        return _made()

    AdvSetStore(root).get_or_make(_fields(), _images(), make, 0.1)


def _child_dies_holding_the_lock(root: str, holding: Any) -> None:
    def make() -> tuple[torch.Tensor, dict]:
        holding.set()
        signal.pause()  # killed here, holding the lock
        raise AssertionError("unreachable")

    AdvSetStore(root).get_or_make(_fields(), _images(), make, 0.1)


def _child_runs_the_protocol(out: str, store: str, barrier: Any) -> None:
    torch.set_num_threads(1)
    barrier.wait(GUARD)  # both runs start together
    run_suite("digits-transfer", "smoke", [DIGITS], out, store=store, progress=False)


def _child_holds_the_run_lock(folder: str, holding: Any, release: Any) -> None:
    from robust_ens.train import run_lock

    with run_lock(folder):
        (Path(folder) / "member0.safetensors").write_bytes(b"trained")
        holding.set()
        if release is None:
            signal.pause()  # killed here
        assert release.wait(GUARD)


def _spawn(target: Any, *args: Any) -> Any:
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    return proc


# --------------------------------------------------------------------------- one store by default


def test_every_command_uses_the_machine_wide_store_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from robust_ens.bench.submit import submit

    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    assert default_store() == tmp_path / "cache" / "advsets"
    first = run_suite("digits-transfer", "smoke", [DIGITS], tmp_path / "a", progress=False)
    assert (first.cost.advsets_made, first.cost.advsets_reused) == (SMOKE_SETS, 0)
    assert len(list(default_store().rglob("*.safetensors"))) == SMOKE_SETS and not (tmp_path / "a" / "advsets").exists()
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["cost"]["advsets_made"] == SMOKE_SETS

    sub = submit(DIGITS, "digits-transfer", "smoke", "cnn-s2", root=tmp_path / "lb", out=tmp_path / "b", progress=False)
    assert (sub.advsets_made, sub.advsets_reused) == (0, SMOKE_SETS)  # a submit after the demo crafts nothing

    assert cli.main(["--quiet", "bench", "run", "digits-transfer", "--target", DIGITS, "--out", str(tmp_path / "c")]) == 0
    assert f"0 adversarial sets made, {SMOKE_SETS} reused" in capsys.readouterr().out

    own = run_suite("digits-transfer", "smoke", [DIGITS], tmp_path / "d", store=tmp_path / "own", progress=False)
    assert own.cost.advsets_made == SMOKE_SETS and _numbers(own) == _numbers(first)  # --store: another store


def test_store_help_names_the_machine_wide_default(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["bench", "run", "--help"], ["submit", "--help"]):
        assert cli.main(cmd) == 0
        assert "machine-wide$ROBUST_ENS_CACHE/advsets" in "".join(capsys.readouterr().out.split())  # wrapped anywhere


def test_the_key_holds_everything_that_moves_a_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_ens import Ensemble
    from robust_ens.bench import craft

    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3])
    base = models.create("small_cnn", in_chans=1).eval()
    moved = models.create("small_cnn", in_chans=1, mean=[0.5], std=[0.25]).eval()
    moved.load_state_dict(base.state_dict())  # the same weights file, another normalization (its JSON record)
    training = models.create("small_cnn", in_chans=1)
    training.load_state_dict(base.state_dict())
    same_sha = {"w.safetensors": "a" * 64}  # every surrogate below claims the same checkpoint sha256
    surrogates = {
        "base": base, "normalization": moved, "train mode": training.train(),
        "ensemble": Ensemble([base, base], combine="logits", precision="fp32"),
        "combine": Ensemble([base, base], combine="probs", precision="fp32"),
        "precision": Ensemble([base, base], combine="logits", precision="bf16"),
    }
    store = AdvSetStore(tmp_path)
    atk = MIFGSM(eps=0.1, steps=1)

    def craft_on(module: torch.nn.Module) -> bool:
        got = craft.attack_batch(store, atk, Target("s", "s", module, dict(same_sha)), x, y, torch.arange(4), 0,
                                 "f" * 64, device=torch.device("cpu"))
        return got.hit

    assert [craft_on(m) for m in surrogates.values()] == [False] * len(surrogates)
    assert craft_on(base)  # nothing moved: read back
    monkeypatch.setattr(craft, "device_name", lambda _device: "another device")
    assert not craft_on(base)
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert not craft_on(base)
    monkeypatch.undo()
    monkeypatch.setattr(craft, "_SOURCE_DIGEST", "0" * 64)  # other code (an attack edited, its version not bumped)
    assert not craft_on(base)
    assert store.misses == len(surrogates) + 3 and store.hits == 1


def test_the_source_digest_covers_the_attack_library() -> None:
    from pathlib import Path as _P

    import robust_ens.attacks as attacks_pkg
    from robust_ens.bench import craft

    digest = craft.source_digest()
    assert len(digest) == 64 and digest == craft.source_digest()
    assert (_P(attacks_pkg.__file__).parent / "base.py").is_file()  # the attack loop's file is among those hashed


# --------------------------------------------------------------------------- concurrent runs


def test_a_set_another_process_is_making_is_waited_for_then_read(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    holding, parent_waiting = ctx.Event(), ctx.Event()
    child = _spawn(_child_makes_after_parent_waits, str(tmp_path), holding, parent_waiting)
    try:
        assert holding.wait(GUARD)
        waits: list[str] = []

        def on_wait(what: str) -> None:
            waits.append(what)
            parent_waiting.set()  # only now may the child finish its set

        def never() -> tuple[torch.Tensor, dict]:
            raise AssertionError("the set was being made by the other process; it must be read, not made")

        store = AdvSetStore(tmp_path, on_wait=on_wait)
        got = store.get_or_make(_fields(), _images(), never, 0.1, label="mifgsm on zoo2, eps 0.1, examples 0+")
    finally:
        child.join()
    assert child.exitcode == 0
    assert got.hit and got.record["made_by"] == child.pid and (store.hits, store.misses, store.waited) == (1, 0, 1)
    assert waits == ["adversarial set mifgsm on zoo2, eps 0.1, examples 0+"]


def test_a_holder_killed_with_sigkill_blocks_nobody(tmp_path: Path) -> None:
    holding = mp.get_context("spawn").Event()
    child = _spawn(_child_dies_holding_the_lock, str(tmp_path), holding)
    assert holding.wait(GUARD)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert list(tmp_path.rglob("*.lock")) and not list(tmp_path.rglob("*.safetensors"))  # its lock file stayed
    store = AdvSetStore(tmp_path, on_wait=lambda what: pytest.fail(f"waited for a dead holder: {what}"))
    got = store.get_or_make(_fields(), _images(), _made, 0.1)
    assert not got.hit and got.record["made_by"] == os.getpid() and store.misses == 1


def test_two_runs_started_together_make_each_set_once_and_agree(tmp_path: Path) -> None:
    store = tmp_path / "store"
    barrier = mp.get_context("spawn").Barrier(2)
    children = [_spawn(_child_runs_the_protocol, str(tmp_path / f"run{i}"), str(store), barrier) for i in range(2)]
    for c in children:
        c.join()
    assert [c.exitcode for c in children] == [0, 0]
    a, b = (json.loads((tmp_path / f"run{i}" / "summary.json").read_text()) for i in range(2))
    assert a["cost"]["advsets_made"] + b["cost"]["advsets_made"] == SMOKE_SETS
    assert a["cost"]["advsets_reused"] + b["cost"]["advsets_reused"] == SMOKE_SETS
    assert len(list(store.rglob("*.safetensors"))) == SMOKE_SETS
    alone = run_suite("digits-transfer", "smoke", [DIGITS], tmp_path / "alone", store=tmp_path / "fresh", progress=False)
    assert _numbers(a) == _numbers(b) == _numbers(alone.to_summary())


def test_a_surrogate_another_run_is_training_is_waited_for(tmp_path: Path) -> None:
    from robust_ens.train import run_lock, waiting_for_run_locks

    ctx = mp.get_context("spawn")
    folder = tmp_path / "trained"
    holding, release = ctx.Event(), ctx.Event()
    child = _spawn(_child_holds_the_run_lock, str(folder), holding, release)
    waits: list[str] = []

    def on_wait(what: str) -> None:
        waits.append(what)
        release.set()

    try:
        assert holding.wait(GUARD)
        with waiting_for_run_locks(on_wait), run_lock(folder):
            assert (folder / "member0.safetensors").read_bytes() == b"trained"  # the other run's result, to load
    finally:
        release.set()
        child.join()
    assert child.exitcode == 0 and len(waits) == 1 and f"pid {child.pid}" in waits[0] and str(folder) in waits[0]


def test_a_killed_trainer_leaves_a_lock_file_that_blocks_nobody(tmp_path: Path) -> None:
    from robust_ens.train import LOCK_FILE, run_lock, waiting_for_run_locks

    folder = tmp_path / "trained"
    holding = mp.get_context("spawn").Event()
    child = _spawn(_child_holds_the_run_lock, str(folder), holding, None)
    assert holding.wait(GUARD)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert (folder / LOCK_FILE).read_text() == str(child.pid)  # the stale marker is still there
    with waiting_for_run_locks(lambda what: pytest.fail(f"waited for a dead run: {what}")), run_lock(folder):
        assert (folder / LOCK_FILE).read_text() == str(os.getpid())


def test_the_engine_waits_for_a_surrogate_in_training_instead_of_refusing(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_ens import train
    from robust_ens.bench import runner
    from robust_ens.bench.protocol import get_suite

    seen = []

    def fake_resolve_trained(name: str, *args: Any, **kwargs: Any) -> Target:
        seen.append(train._WAIT_FOR_LOCK.get() is not None)
        return Target(name, f"train:{name}", models.create("small_cnn", in_chans=1).eval(), {"m": "b" * 64})

    monkeypatch.setattr(runner, "resolve_trained", fake_resolve_trained)
    engine = runner.Engine(get_suite("digits-transfer"), "smoke", tmp_path / "run", store=tmp_path / "store",
                           progress=False)
    assert engine.surrogate("cnn3").name == "cnn3" and seen == [True]
    assert train._WAIT_FOR_LOCK.get() is None  # only while the surrogate resolves

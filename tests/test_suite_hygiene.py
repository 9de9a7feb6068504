"""The test suite itself: no test depends on the machine's speed or on which CPU trained its weights.

* No test reads a clock or arms a timer: "refused before any work" is checked by what did not
  happen (tests/test_cli_fuzz.py's ``no_work``), and speed is measured in ``suites/`` benchmarks.
* The trained models the attack tests measure strength on are committed files whose recipes are
  the ones :mod:`tests.fixtures.make_digits_weights` trains, so retraining them is reproducible
  and nobody edits one side alone.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from robust_ens import models
from tests.fixtures import make_digits_weights as mk

TESTS = Path(__file__).resolve().parent
CLOCKS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"), ("time", "process_time"),
          ("signal", "setitimer"), ("signal", "alarm")}


def _clock_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if (node.func.value.id, node.func.attr) in CLOCKS:
                found.append(f"{path.name}:{node.lineno} {node.func.value.id}.{node.func.attr}()")
    return found


def test_no_test_reads_a_clock_or_arms_a_timer() -> None:
    hits = [h for p in sorted(TESTS.rglob("*.py")) for h in _clock_calls(p)]
    assert not hits, f"tests must not time themselves (a busy machine fails them): {hits}"


def test_the_clock_scan_finds_a_timer(tmp_path: Path) -> None:
    bad = tmp_path / "test_bad.py"
    bad.write_text("import signal, time\nt0 = time.perf_counter()\nsignal.setitimer(signal.ITIMER_REAL, 30)\n")
    assert [h.split(" ")[1] for h in _clock_calls(bad)] == ["time.perf_counter()", "signal.setitimer()"]


@pytest.mark.parametrize("seed", mk.SEEDS)
def test_committed_digits_models_match_their_recipe_and_hash(seed: int) -> None:
    m = models.load_checkpoint(mk.single_path(seed))  # checks the sidecar's sha256
    rec = json.loads(mk.single_path(seed).with_suffix(".json").read_text())
    assert rec["recipe"] == {**mk.SINGLE["train"], "seed": seed} and rec["arch_kwargs"]["width"] == 16
    assert rec["metrics"]["test_acc"] > 0.95 and not m.training


def test_committed_packed_model_matches_its_recipe_and_hash() -> None:
    ens = models.load_checkpoint(mk.PACKED_PATH)
    rec = json.loads(mk.PACKED_PATH.with_suffix(".json").read_text())
    assert rec["recipe"] == json.loads(json.dumps(mk.PACKED)) and len(ens.members) == mk.PACKED["members"]
    assert rec["metrics"]["test_acc"] > 0.95

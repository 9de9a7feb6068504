"""The README's generated Results block (``leaderboards/render_readme.py``): every number comes from an
entry, joined by model name, and the committed block is current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from robust_ens import leaderboard as lb

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "leaderboards" / "render_readme.py"


def _load_script():  # a script of the repository, not a module of the package
    spec = importlib.util.spec_from_file_location("render_readme", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rr = _load_script()
BEGIN, END, DATASET, TIER, TRANSFER, WHITEBOX = rr.BEGIN, rr.END, rr.DATASET, rr.TIER, rr.TRANSFER, rr.WHITEBOX
defense_table, replace_block, results_markdown = rr.defense_table, rr.replace_block, rr.results_markdown
ENTRIES = lb.load_entries(ROOT / "leaderboards")


def _ours(suite: str) -> list[lb.Entry]:
    return [e for e in ENTRIES if isinstance(e, lb.Entry) and e.protocol.suite == suite and e.protocol.tier == TIER
            and e.protocol.dataset == DATASET and e.external is None]


def test_committed_readme_block_is_current_and_the_script_runs_as_written(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)  # a hang guard only
    assert out.returncode == 0, f"run: python leaderboards/render_readme.py\n{out.stdout}{out.stderr}"
    assert "is current" in out.stdout


def test_the_script_rewrites_only_the_block_of_the_readme_it_is_given(tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")
    args = ["--root", str(ROOT / "leaderboards"), "--readme", str(readme)]
    assert rr.main([*args, "--check"]) == 1 and "stale" in capsys.readouterr().out
    assert rr.main(args) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n{BEGIN}") and text.endswith(f"{END}\noutro\n") and "stale" not in text
    assert rr.main([*args, "--check"]) == 0
    assert text == f"intro\n{results_markdown(ENTRIES)}\noutro\n"


def test_replace_block_touches_only_the_marked_block() -> None:
    text = f"intro\n{BEGIN}\nold\n{END}\noutro\n"
    assert replace_block(text, f"{BEGIN}\nnew\n{END}") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    assert replace_block("no markers\n", "x") == "no markers\n"


@pytest.mark.skipif(not _ours(TRANSFER), reason="no committed cifar10-jpeg transfer entries")
def test_every_transfer_entry_is_a_row_with_its_own_numbers() -> None:
    headers, rows, ranked = defense_table(ENTRIES)
    assert sorted(r[0] for r in rows) == sorted(e.name for e in _ours(TRANSFER))
    white = {e.name: e for e in _ours(WHITEBOX)}
    col = headers.index(next(h for h in headers if h.startswith("AutoAttack")))
    for row, e in zip(rows, ranked, strict=True):
        lo, hi = e.results.clean.ci95
        assert row[0] == e.name and row[6] == f"{100 * e.results.clean.acc:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"
        top = e.results.worst_case[-1]
        assert row[6 + len(e.results.worst_case)].startswith(f"{100 * top.robust_acc:.1f} ")
        assert row[7 + len(e.results.worst_case)] == f"{100 * top.robust_acc / e.results.clean.acc:.0f}"
        if e.name in white:
            assert row[col].startswith(f"{100 * white[e.name].results.worst_case[0].robust_acc:.1f} ")
    _train_n = rr._train_n
    sizes = [_train_n(e) or 0 for e in ranked]
    assert sizes == sorted(sizes, reverse=True)  # most training images first
    for n in set(sizes):
        worst = [e.worst(e.results.worst_case[-1].eps).robust_acc for e in ranked if (_train_n(e) or 0) == n]
        assert worst == sorted(worst, reverse=True)
    block = results_markdown(ENTRIES)
    assert block.startswith(BEGIN) and block.endswith(END) and all(e.name in block for e in ranked)


@pytest.mark.skipif(not _ours("cifar10-attacks"), reason="no committed cifar10-jpeg attack entries")
def test_every_attack_entry_is_a_row_with_its_mean_success_per_eps() -> None:
    headers, rows = rr.attack_table(ENTRIES)
    entries = {e.name: e for e in _ours("cifar10-attacks")}
    assert sorted(r[0] for r in rows) == sorted(entries)
    assert all("/255" in h for h in headers[3:])  # eps shown exactly, not as rounded metric keys
    for row in rows:
        e = entries[row[0]]
        assert row[1] == ", ".join(e.protocol.surrogates)
        for cell, eps in zip(row[3:], sorted(e.protocol.eps), strict=True):
            key = next(k for k in e.results.metrics if k.startswith("mean_success@") and abs(float(k[13:]) - eps) < 1e-6)
            assert cell.startswith(f"{100 * e.results.metrics[key]:.1f}")


def test_each_defense_is_compared_with_the_baseline_trained_on_as_many_images(monkeypatch) -> None:
    from types import SimpleNamespace as NS

    lr = rr
    def entry(name: str, defense: str, acc: float, ci: tuple[float, float], n_train: int) -> NS:
        w = NS(eps=0.03, robust_acc=acc, ci95=list(ci))
        return NS(name=name, n_train=n_train, model=NS(defense=defense, architecture="resnet20"),
                  results=NS(worst_case=[w]), worst=lambda eps, w=w: w, protocol=NS(n_examples=500))

    ranked = [entry("dverge-5k", "dverge", 0.40, (0.36, 0.44), 5000), entry("base-5k", "baseline", 0.25, (0.21, 0.29), 5000),
              entry("dverge-2k", "dverge", 0.28, (0.24, 0.32), 2000), entry("base-2k", "baseline", 0.27, (0.23, 0.31), 2000)]
    monkeypatch.setattr(lr, "_train_n", lambda e: e.n_train)
    first, _, second, _ = lr._separation(ranked)
    assert "5,000 images" in first and "base-5k's 25.0%" in first and "above its interval: dverge-5k 40.0 (+15.0)" in first
    assert "2,000 images" in second and "base-2k's 27.0%" in second and "overlapping" in second and "dverge-2k" in second
    assert "dverge-2k" not in first and "dverge-5k" not in second


def test_a_submitted_model_is_not_ranked_among_the_reference_zoo() -> None:
    """A ``robust-ens submit`` entry (a target that is not ``zoo:NAME``) leaves the reference table as it
    was and is named, as a submission, under it."""
    ref = next(e for e in _ours(TRANSFER) if e.name == "baseline-r20x3")
    target = ref.model.target.model_copy(update={"spec": "mypkg.models:resnet", "weights": "mine.safetensors"})
    mine = ref.model_copy(update={"name": "my-resnet", "model": ref.model.model_copy(
        update={"name": "my-resnet", "target": target})})
    before = results_markdown(ENTRIES)
    after = results_markdown([*ENTRIES, mine])
    table = [line for line in after.splitlines() if line.startswith("|")]
    assert table == [line for line in before.splitlines() if line.startswith("|")]
    assert "Submitted models (1: my-resnet) are not part of the reference zoo" in after
    assert after.replace(next(x for x in after.splitlines() if x.startswith("Submitted")) + "\n\n", "") == before

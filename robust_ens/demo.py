"""``make demo`` / ``robust-ens demo``: the main job on an embedded default, ending on a leaderboard.

* With CIFAR-10 found (``$ROBUST_ENS_DATA`` holding ``cifar10-jpeg``): a zoo ensemble
  (:data:`CIFAR_TARGET`) is evaluated under the ``cifar10-transfer`` protocol's ``small`` tier by
  the benchmark engine, and the committed leaderboard of that suite and tier is printed with the
  run's row among its entries. On a 2-core CPU the first run crafts the protocol's adversarial sets
  on its committed surrogates into the machine-wide store, ``$ROBUST_ENS_CACHE/advsets`` (about half
  an hour; resumable, interrupt and rerun to continue); a later run of any command (``submit``,
  ``bench run``), from any clone on the machine, reads them back.
* Without it: the digits quickstart (:mod:`robust_ens.quickstart`, about a minute), then its
  target ensemble under ``digits-transfer`` ``smoke``, printed among that leaderboard's entries.

Either way the output ends with the table and the path of the suite's HTML page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from robust_ens import leaderboard as lb

CIFAR_TARGET = "dverge-r20x3-5k"
CIFAR_SUITE, CIFAR_TIER = "cifar10-transfer", "small"
DIGITS_SUITE, DIGITS_TIER = "digits-transfer", "smoke"
THIS_RUN = " (this run)"


def cifar10_available() -> bool:
    """Whether CIFAR-10 test images can be found (``$ROBUST_ENS_DATA`` or torchvision's folder)."""
    from robust_ens import data

    found, _ = data.find_cifar10(split="test")
    return found is not None


def leaderboard_with(run_entries: list[Any], suite: str, tier: str, root: str | Path | None = None) -> str:
    """The committed entries of ``suite`` at ``tier`` and ``run_entries`` (marked "this run") as one table."""
    committed = [e for e in lb.load_entries(root)
                 if getattr(e.protocol, "suite", None) == suite and getattr(e.protocol, "tier", None) == tier]
    mine = [e.model_copy(update={"name": e.name + THIS_RUN}) for e in run_entries]
    return lb.render(committed + mine)


def page_path(suite: str, root: str | Path | None = None) -> Path:
    """Where the suite's rendered HTML page lives (``leaderboard render`` writes it)."""
    return lb.leaderboard_root(root) / "pages" / f"{suite}.html"


def _engine(suite: str, tier: str, spec: str, name: str, out: Path, progress: bool,
            say: Callable[[str], None]) -> list[Any]:
    from robust_ens.bench.advsets import default_store
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import TargetArg, run_suite

    arg = TargetArg(spec, None, name)
    # the machine-wide store (content-addressed, sha256-checked): shared with submit and bench run
    summary = run_suite(suite, tier, [arg], out, progress=progress)
    c = summary.cost
    say(f"{c.advsets_made} adversarial sets made, {c.advsets_reused} reused (store {default_store()})")
    return to_entries(summary, run_dir=out, targets=[arg])


def run(out_dir: str | Path = "runs/demo", *, progress: bool = True, digits: bool | None = None,
        epochs: int | None = None, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo and return ``{"suite", "tier", "table", "page", "quickstart"?}``.

    Args:
        out_dir: Folder for the run folders (resumable).
        progress: Progress bars (one line per update when stdout is not a terminal).
        digits: Force the digits demo (``True``) or the CIFAR-10 one (``False``); default: CIFAR-10
            when its images are found.
        epochs: Digits demo: the quickstart's epochs (default its recipe's).
        echo: Where each stage's text goes as it is ready (the command passes ``print``); the
            returned ``table`` holds the leaderboard either way.
    """
    say = echo or (lambda _text: None)
    from robust_ens.bench.advsets import default_store

    out = Path(out_dir)
    use_digits = (not cifar10_available()) if digits is None else digits
    result: dict[str, Any] = {}
    if use_digits:
        from robust_ens import quickstart

        qs = quickstart.run(out / "quickstart", progress=progress, epochs=epochs)
        say(quickstart.render(qs))
        suite, tier = DIGITS_SUITE, DIGITS_TIER
        say(f"\nEvaluating the quickstart's target ensemble under {suite} ({tier} tier) with the benchmark engine")
        entries = _engine(suite, tier, str(out / "quickstart" / "target"), "quickstart-target", out / f"{suite}-{tier}",
                          progress, say)
        result["quickstart"] = qs
    else:
        suite, tier = CIFAR_SUITE, CIFAR_TIER
        say(f"Evaluating zoo:{CIFAR_TARGET} under {suite} ({tier} tier: 500 cifar10-jpeg test images, 6 attacks x "
            "2 surrogate ensembles x 3 eps) with the benchmark engine.\nThe first run crafts 72 adversarial batches "
            "on the protocol's committed surrogates (about half an hour on 2 CPU cores; interrupt and rerun to "
            f"resume); later runs (demo, submit, bench run) read them back from {default_store()}.")
        entries = _engine(suite, tier, f"zoo:{CIFAR_TARGET}", CIFAR_TARGET, out / f"{suite}-{tier}", progress, say)
    table = leaderboard_with(entries, suite, tier)
    page = page_path(suite)
    say(f"\nLeaderboard: {suite}, {tier} tier (committed entries and this run; accuracies in %, worst case "
        f"over every attack and surrogate)\n{table}\nHTML page: {page}")
    result.update(suite=suite, tier=tier, table=table, page=str(page))
    return result

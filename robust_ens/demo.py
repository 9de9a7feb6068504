"""``make demo`` / ``robust-ens demo``: the main job on an embedded default, ending on a leaderboard.

* With CIFAR-10 found (``$ROBUST_ENS_DATA`` holding ``cifar10-jpeg``): a zoo ensemble
  (:data:`CIFAR_TARGET`) is evaluated under the ``cifar10-transfer`` protocol's ``demo`` tier by
  the benchmark engine, and the committed leaderboard of that suite and tier is printed with the
  run's row among its entries, followed by how the row compares with the committed entry of the same
  model (every number, exact or within the binomial bound :mod:`~robust_ens.bench.regress` uses).

  Why that tier: the ``small`` tier crafts 36 sets (6 attacks x 2 surrogate ensembles x 3 eps, 500
  images, 10 steps), about 40 minutes on 2 CPU cores before anything shows. The ``demo`` tier is the
  small tier cut to one eps (0.03) and one surrogate ensemble (the 3-member one): the same six
  attacks, the same 500 images, batches and seeds, so its 6 sets are the small tier's sets of those
  cells, a few minutes on 2 cores. It is a tier with its own committed entries (one per zoo
  ensemble), so the demo's row is set beside real rows, and what it crafts (in the machine-wide
  store, ``$ROBUST_ENS_CACHE/advsets``) is what a ``submit --tier demo`` of the user's own model, or
  a later small-tier run, reads back instead of crafting.
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
CIFAR_SUITE, CIFAR_TIER = "cifar10-transfer", "demo"
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


def against_committed(run_entries: list[Any], suite: str, tier: str, root: str | Path | None = None) -> str:
    """One line: how this run's entry compares with the committed entry of the same name, suite and tier.

    Every number is compared as ``robust-ens regress`` compares them: exactly (and the per-example
    results' sha256), else within the binomial bound of two measurements on ``n`` images, the
    tolerance across machines (a CPU of another model may classify a borderline image otherwise).
    """
    from robust_ens.bench.regress import compare_entries

    committed = {e.name: e for e in lb.load_entries(root) if isinstance(e, lb.Entry)
                 and e.protocol.suite == suite and e.protocol.tier == tier}
    lines = []
    for e in run_entries:
        old = committed.get(e.name)
        if old is None:
            lines.append(f"{e.name}: no committed {suite} {tier} entry to compare with")
            continue
        exact = compare_entries(old, e, same_device=True)
        if exact.ok:
            lines.append(f"{e.name}: equals the committed entry ({exact.numbers} numbers and the per-example "
                         "results, exactly)")
            continue
        near = compare_entries(old, e, same_device=False)
        moved = len([m for m in exact.moved if "sha256" not in m.cell])
        lines.append(f"{e.name}: {moved} of {exact.numbers} numbers differ from the committed entry, "
                     + ("all within the binomial bound across machines (recorded on "
                        f"{old.cost.device if old.cost else 'another machine'})" if near.ok else
                        f"{len(near.moved)} beyond the binomial bound: run `robust-ens regress --tier {tier}`"))
    return "\n".join(lines)


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
        say(f"Evaluating zoo:{CIFAR_TARGET} under {suite} ({tier} tier: 500 cifar10-jpeg test images, 6 attacks "
            "from the 3-member surrogate ensemble at eps 0.03) with the benchmark engine.\nThe first run crafts 6 "
            "adversarial sets on the protocol's committed surrogate (a few minutes on 2 CPU cores; interrupt and "
            f"rerun to resume); later runs (demo, submit, bench run) read them back from {default_store()}.")
        entries = _engine(suite, tier, f"zoo:{CIFAR_TARGET}", CIFAR_TARGET, out / f"{suite}-{tier}", progress, say)
        result["committed"] = against_committed(entries, suite, tier)
    table = leaderboard_with(entries, suite, tier)
    page = page_path(suite)
    say(f"\nLeaderboard: {suite}, {tier} tier (committed entries and this run; accuracies in %, worst case "
        f"over every attack and surrogate)\n{table}")
    if result.get("committed"):
        say(result["committed"])
    say(f"HTML page: {page}")
    result.update(suite=suite, tier=tier, table=table, page=str(page))
    return result

"""Regression check: re-run committed entries' protocols from their recorded targets and compare.

``robust-ens regress`` only parses arguments and calls :func:`regress`. Entries are grouped by
(suite, tier) and each group is run once with all its targets, on the machine-wide adversarial-set
store (``--store`` names another): a set's key holds the sha256 of the library's source
(:func:`~robust_ens.bench.craft.source_digest`), so a change in an attack's code cannot hide behind a
cached set, and unchanged code reuses what ``make demo`` or an earlier regress made. Attack entries (``cifar10-attacks``)
have no target of their own: their group re-runs the suite on the protocol's target panel and each
attack's cells are compared. Imported entries (measured elsewhere) are skipped. Every recorded number (clean, each
cell, each worst case, each corruption) is compared with the re-run:

- on the same device (the entry's ``cost.device``) and seed the tolerance is 0, and the sha256 of
  the per-example results must match too;
- an entry recorded on a CPU it does not name (``cpu (x86_64)``, written before runs named the CPU's
  model, see :func:`~robust_ens.bench.craft.device_name`) and re-run on a CPU is exact when it
  reproduces exactly, and else held to the binomial bound: two CPU models can round a float32
  kernel one ulp apart, and which model recorded it is unknown. The summary counts these apart;
- across devices the tolerance is a binomial bound from ``n``: ``Z * sqrt(2 p (1 - p) / n) + 1 / n``
  (two independent measurements of a proportion ``p`` on ``n`` examples, ``Z = 3``).

The suite's version and protocol digest must still be the ones recorded (a changed protocol
makes every number incomparable; bump the version and re-submit), and the checkpoint sha256s too.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robust_ens import leaderboard as lb
from robust_ens.bench.craft import names_the_cpu
from robust_ens.bench.protocol import Protocol, get_suite
from robust_ens.device import resolve_device
from robust_ens.errors import RobustEnsError

Z = 3.0


@dataclass
class Moved:
    """One number (or record) that left its tolerance."""

    entry: str
    cell: str
    recorded: str
    now: str
    tolerance: str


@dataclass
class RegressReport:
    """What :func:`regress` found."""

    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    moved: list[Moved] = field(default_factory=list)
    numbers: int = 0
    seconds: float = 0.0
    skip_kinds: dict[str, int] = field(default_factory=dict)
    exact: int = 0
    unnamed_cpu: int = 0  # entries recorded on an unnamed CPU that did not reproduce exactly (held to the bound)

    @property
    def ok(self) -> bool:
        """No number moved."""
        return not self.moved

    def skip(self, path: Path, why: str, kind: str) -> None:
        """Record an entry that is not re-run: ``why`` for the detailed list, ``kind`` for the count."""
        self.skipped.append(f"{path}: {why}")
        self.skip_kinds[kind] = self.skip_kinds.get(kind, 0) + 1

    def summary(self) -> str:
        """One line: what was re-run and how it compared, and what was skipped, by kind.

        Example:
            ``regress: 3 entries re-run, 21 numbers within tolerance (all exact: same device and
            seed); 180 skipped (170 imported reference entries, 10 at other tiers) (12.3 s)``
        """
        if self.moved:
            head = (f"regress: {len(self.moved)} numbers moved out of their tolerance ({len(self.checked)} entries "
                    f"re-run, {self.numbers} numbers compared)")
        else:
            cross = len(self.checked) - self.exact
            how = ("all exact: same device and seed" if not cross else
                   "across devices: a binomial bound" if not self.exact else
                   f"{self.exact} entries exact on the same device, {cross} within a binomial bound")
            if self.unnamed_cpu:
                how += (f"; {self.unnamed_cpu} recorded on a CPU the entry does not name and not exact here, "
                        "so held to the bound")
            head = f"regress: {len(self.checked)} entries re-run, {self.numbers} numbers within tolerance ({how})"
        if self.skipped:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.skip_kinds.items(), key=lambda kn: (-kn[1], kn[0])))
            head += f"; {len(self.skipped)} skipped ({kinds})"
        return f"{head} ({self.seconds:.1f} s)"

    def table(self) -> str:
        """What moved: entry, cell, recorded, now, tolerance (tabulate, GitHub style)."""
        from tabulate import tabulate

        return tabulate([[m.entry, m.cell, m.recorded, m.now, m.tolerance] for m in self.moved],
                        headers=["entry", "cell", "recorded", "now", "tolerance"], tablefmt="github",
                        disable_numparse=True)


def tolerance(p: float, n: int, same_device: bool) -> float:
    """0 on the same device and seed; else a binomial bound on the difference of two measurements."""
    if same_device:
        return 0.0
    return Z * math.sqrt(2 * max(p * (1 - p), 0.25 / n) / n) + 1.0 / n


def _device_name(device: torch.device) -> str:
    from robust_ens.bench.runner import _device_name as name

    return name(device)


def _compare(old: lb.Entry, new: lb.Entry, same: bool, report: RegressReport) -> None:
    rec, now = old.numbers(), new.numbers()
    for label in list(rec) + [k for k in now if k not in rec]:
        if label not in now:
            report.moved.append(Moved(old.name, label, f"{rec[label][0]:.4f}", "(not measured)", "-"))
            continue
        if label not in rec:
            report.moved.append(Moved(old.name, label, "(not recorded)", f"{now[label][0]:.4f}", "-"))
            continue
        (a, n), (b, _) = rec[label], now[label]
        tol = tolerance(a, n, same)
        report.numbers += 1
        if abs(a - b) > tol + 1e-12:
            report.moved.append(Moved(old.name, label, f"{a:.4f}", f"{b:.4f}",
                                      "exact (same device and seed)" if same else f"±{tol:.4f} (binomial, n={n})"))
    if same and old.results_sha256 and new.results_sha256 and old.results_sha256 != new.results_sha256:
        report.moved.append(Moved(old.name, "per-example results (sha256)", old.results_sha256[:16],
                                  new.results_sha256[:16], "exact (same device and seed)"))
    if old.model.checkpoint_sha256 != new.model.checkpoint_sha256:
        report.moved.append(Moved(old.name, "checkpoint sha256", ",".join(s[:12] for s in old.model.checkpoint_sha256),
                                  ",".join(s[:12] for s in new.model.checkpoint_sha256), "exact"))


def compare_entries(recorded: lb.Entry, now: lb.Entry, *, same_device: bool) -> RegressReport:
    """Compare every number of ``now`` with ``recorded`` as :func:`regress` does (exact, or a binomial bound).

    Args:
        recorded: The committed entry.
        now: The same model under the same protocol tier, measured again.
        same_device: Exactness (and equal per-example sha256s) demanded; else the binomial bound.

    Returns:
        A report whose ``moved`` lists the numbers out of tolerance and ``numbers`` counts the compared.
    """
    report = RegressReport()
    _compare(recorded, now, same_device, report)
    return report


def regress(
    paths: Sequence[str | Path] = (),
    *,
    root: str | Path | None = None,
    tier: str | None = None,
    device: str | torch.device | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    store: str | Path | None = None,
    weights_dirs: Sequence[str | Path] = (),
) -> RegressReport:
    """Re-run committed entries and list every number that left its tolerance.

    Args:
        paths: Entry files or folders (default: every entry under ``root``).
        root: The leaderboard folder (see :func:`~robust_ens.leaderboard.leaderboard_root`).
        tier: Only entries recorded at this tier.
        device: Torch device of the re-run (default: cuda if available).
        out: Where the re-runs' folders go (default: a temporary folder, removed afterwards).
        progress: Progress bars.
        store: The adversarial-set store (default: the machine-wide one, shared with every run).
        weights_dirs: Folders to find submitted models' weights in, by the file name the entry records
            (after the entry's own folder); the file must have the recorded sha256.

    Raises:
        RobustEnsError: when no entry can be re-run, or an entry's target does not resolve.
    """
    t0 = time.perf_counter()
    files = list(lb.iter_json(paths)) if paths else lb.entry_files(root)
    for p in paths:
        if not Path(p).exists():
            raise RobustEnsError(f"paths: {p} does not exist (give entry files or folders)")
    report = RegressReport()
    entries = lb.validate_tree(files)
    groups = _groups(files, entries, tier, report)
    homes = {id(e): Path(f).parent for f, e in zip(files, entries, strict=True)}
    if not groups:
        raise RobustEnsError("paths: no entry to re-run (schema-2 attack entries, or defense entries with a recorded target"
                             + (f" at tier {tier}" if tier else "") + ")")
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="robust-ens-regress-") as tmp:
        base = Path(out) if out is not None else Path(tmp)
        for (suite, tier_name, rule), group in sorted(groups.items(), key=lambda kv: (kv[0][:2], kv[0][2] or "")):
            _rerun_group(suite, tier_name, group, base, dev, progress, report,
                         _Where(store, homes, [Path(d) for d in weights_dirs]), rule)
    report.seconds = time.perf_counter() - t0
    return report


def filter_rule(e: lb.Entry) -> str | None:
    """The example filter an entry was measured under (``model.config.filter.rule``), or ``None``."""
    rec = e.model.config.get("filter") if isinstance(e.model.config, dict) else None
    return rec.get("rule") if isinstance(rec, dict) else None


def _groups(files: Sequence[Path], entries: Sequence[object], tier: str | None,
            report: RegressReport) -> dict[tuple[str, str, str | None], list[lb.Entry]]:
    """The entries that can be re-run, by (suite, tier, filter); the others are listed as skipped with the reason."""
    groups: dict[tuple[str, str, str | None], list[lb.Entry]] = {}
    for path, e in zip(files, entries, strict=True):
        if not isinstance(e, lb.Entry):
            report.skip(path, "schema 1 records no target to re-run", "schema-1 entries")
        elif e.external is not None:
            report.skip(path, f"an imported {e.kind} entry (measured elsewhere)", "imported reference entries")
        elif tier is not None and e.protocol.tier != tier and e.kind in ("attack", "defense"):
            report.skip(path, f"tier {e.protocol.tier}, not {tier}", "at other tiers")
        elif e.kind == "attack":  # the protocol's own target panel: re-run the suite, compare per attack
            groups.setdefault((e.protocol.suite, e.protocol.tier, filter_rule(e)), []).append(e)
        elif e.kind != "defense":
            report.skip(path, f"a {e.kind} entry", f"{e.kind} entries")
        elif e.model.target is None:
            report.skip(path, "no recorded target", "without a recorded target")
        elif not _suite_has_tier(e.protocol.suite, e.protocol.tier):
            report.skip(path, f"tier {e.protocol.tier!r} is not one of the suite's (a run made from command-line "
                        "options, e.g. corruptions evaluate); re-run it with its command", "made by another command")
        else:
            groups.setdefault((e.protocol.suite, e.protocol.tier, filter_rule(e)), []).append(e)
    return groups


def _suite_has_tier(suite: str, tier: str) -> bool:
    """Whether a registered suite defines ``tier`` (an unknown suite is left to the re-run's own error)."""
    try:
        return tier in get_suite(suite).tiers
    except RobustEnsError:
        return True


def _runnable(group: list[lb.Entry], proto: Protocol, tier_name: str, report: RegressReport) -> list[lb.Entry]:
    """The entries whose suite version and protocol digest are still this checkout's."""
    runnable = []
    for e in group:
        if e.protocol.suite_version != proto.version:
            report.moved.append(Moved(e.name, "suite version", str(e.protocol.suite_version), str(proto.version),
                                      "exact (re-submit at the new version)"))
        elif e.protocol.digest is not None and e.protocol.digest != proto.digest(tier_name):
            report.moved.append(Moved(e.name, "protocol digest", e.protocol.digest[:16],
                                      proto.digest(tier_name)[:16], "exact (the protocol changed; bump its version)"))
        else:
            runnable.append(e)
    return runnable


@dataclass
class _Where:
    """Where a re-run finds things: the adversarial-set store, each entry's folder, the weights folders."""

    store: str | Path | None
    homes: dict[int, Path]
    weights_dirs: list[Path]

    def weights(self, e: lb.Entry) -> str | None:
        """The file of a submitted model's recorded weights (by name, sha256-checked by the caller)."""
        rec = e.model.target
        if rec is None or not rec.weights:
            return None
        given = Path(rec.weights)
        if given.is_absolute() or given.is_file():  # entries made before weights were recorded by name
            return str(given)
        folders = [self.homes[id(e)]] if id(e) in self.homes else []
        folders += self.weights_dirs
        for folder in folders:
            if (folder / given.name).is_file():
                return str(folder / given.name)
        sha = f" (sha256 {rec.weights_sha256[:16]}...)" if rec.weights_sha256 else ""
        raise RobustEnsError(f"{e.name}: its weights {given.name}{sha} are not in {', '.join(map(str, folders))}; "
                             "pass --weights-dir FOLDER that holds them")


def _rerun_group(suite: str, tier_name: str, group: list[lb.Entry], base: Path, dev: torch.device, progress: bool,
                 report: RegressReport, where: _Where, rule: str | None = None) -> None:
    """Re-run one (suite, tier) with all its targets and compare every entry of the group.

    Entries measured under an example filter (``bench run --filter``) are re-run under the same filter:
    their digest is that of the filtered protocol.
    """
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import TargetArg, run_suite

    try:
        proto = get_suite(suite)
        if rule is not None and proto.tier(tier_name).filter != rule:
            proto = proto.with_filter(tier_name, rule)
    except RobustEnsError as err:
        for e in group:
            report.moved.append(Moved(e.name, "suite", suite, f"unknown ({err})", "-"))
        return
    runnable = _runnable(group, proto, tier_name, report)
    if not runnable:
        return
    args = [] if proto.kind == "attack" else [
        TargetArg(e.model.target.spec, where.weights(e), e.model.name)  # type: ignore[union-attr]
        for e in runnable]
    for e, a in zip(runnable if args else [], args, strict=True):
        rec = e.model.target
        if a.weights and rec is not None and rec.weights_sha256:
            from robust_ens.models.checkpoint import sha256_file

            if not Path(a.weights).is_file():
                raise RobustEnsError(f"{e.name}: model.target.weights {a.weights} does not exist")
            if sha256_file(Path(a.weights)) != rec.weights_sha256:
                report.moved.append(Moved(e.name, "weights sha256", rec.weights_sha256[:16],
                                          sha256_file(Path(a.weights))[:16], "exact"))
    run_dir = base / (f"{suite}-{tier_name}" + (f"-{rule}" if rule else ""))
    result = run_suite(proto, tier_name, args, run_dir, device=dev, store=where.store, progress=progress)
    fresh = {n.model.name: n for n in to_entries(result, "robust-ens regress", run_dir=run_dir, targets=args)}
    here = _device_name(dev)
    for e in runnable:
        same = e.cost is not None and e.cost.device == here
        if e.model.name not in fresh:  # an attack the protocol no longer runs at this tier
            report.moved.append(Moved(e.name, "attack", e.model.name, "not in the re-run", "exact"))
            continue
        if not same and dev.type == "cpu" and e.cost is not None and not names_the_cpu(e.cost.device):
            same = compare_entries(e, fresh[e.model.name], same_device=True).ok  # exact where it can be
            report.unnamed_cpu += not same
        _compare(e, fresh[e.model.name], same, report)
        report.checked.append(e.name)
        report.exact += same

"""RobustBench interop: import its ``model_info`` tree as reference entries, export ours in its layout.

- :func:`import_robustbench` reads such a tree (every file through
  :func:`~robust_ens.leaderboard.model_info.model_info_to_entry`: strings to numbers, eps to floats)
  and writes the reference entries into the leaderboard, so tables show them beside ours, marked as
  imported. A file that cannot be read (not UTF-8, not JSON, a value that is not a percentage, no
  clean accuracy) is skipped with its one-line reason and the import goes on (:class:`ImportResult`),
  unless it was the one file asked for, or ``strict`` is set.
- :func:`export_robustbench` writes entries in RobustBench's field names and percent strings,
  since that is what its tools read. Transfer-suite entries have no RobustBench field and are
  skipped with the reason.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from robust_ens.atomic import atomic_write_text
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.model_info import (
    ModelInfoError,
    SuiteVersion,
    format_eps,
    load_model_info,
    model_info_to_entry,
    parse_eps,
)
from robust_ens.leaderboard.schema import AnyEntry, Entry, Paper
from robust_ens.leaderboard.store import leaderboard_root, load_entries, write_entries


class Skipped(NamedTuple):
    """A ``model_info`` file left out of an import, with its one-line reason and the reason's kind."""

    path: Path
    reason: str
    kind: str


@dataclass
class ModelInfoScan:
    """What :func:`scan_model_info` read: entries, files it could not read, and warnings.

    Attributes:
        files: every ``*.json`` file found.
        entries: ``(file, entry)`` for each file read.
        skipped: the files that could not be read, with why.
        warnings: one line each, naming file and key (keys written twice, dataset field vs folder).
    """

    files: list[Path] = field(default_factory=list)
    entries: list[tuple[Path, Entry]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    """What :func:`import_robustbench` did; the command prints it, the library prints nothing.

    Attributes:
        root: the leaderboard folder written into.
        files: every ``*.json`` file found under the path.
        imported: the ``model_info`` files imported, in order.
        written: the entry file written for each of ``imported``.
        skipped: the files left out, with their one-line reasons.
        warnings: one line each, naming file and key.
        strict: whether any skipped file cancelled the import (then nothing was written).
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    imported: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False

    def skipped_by_kind(self) -> dict[str, list[Skipped]]:
        """Skipped files grouped by the kind of their reason, most frequent kind first."""
        groups: dict[str, list[Skipped]] = {}
        for s in self.skipped:
            groups.setdefault(s.kind, []).append(s)
        return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _model_info_files(path: str | Path) -> tuple[Path, list[Path]]:
    base = Path(path)
    if not base.exists():
        raise RobustEnsError(f"path: {base} does not exist (give RobustBench's model_info folder or a file)")
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*.json") if not p.name.startswith("."))
    if not files:
        raise RobustEnsError(f"path: no RobustBench model_info files (*.json) under {base}")
    return base, files


def scan_model_info(path: str | Path, *, suite_version: SuiteVersion | None = None) -> ModelInfoScan:
    """Read every ``model_info`` JSON file under ``path`` (or the one file), skipping those that cannot be read.

    Dataset and threat model come from each file's two parent folders (``<dataset>/<threat>/``), so
    ``path`` may be ``model_info`` itself, one dataset's folder or one file. ``suite_version``: see
    :func:`~robust_ens.leaderboard.model_info.model_info_to_entry`.

    Raises:
        RobustEnsError: only when ``path`` does not exist or holds no ``*.json`` file.
    """
    _, files = _model_info_files(path)
    scan = ModelInfoScan(files=files)
    for f in files:
        rel = Path(*f.parts[-3:])
        notes: list[str] = []
        try:
            scan.entries.append((f, model_info_to_entry(load_model_info(f, notes), f, rel, notes,
                                                         suite_version=suite_version)))
        except ModelInfoError as err:
            scan.skipped.append(Skipped(f, str(err), err.kind))
        scan.warnings.extend(notes)
    return scan


def read_model_info(path: str | Path, *, suite_version: SuiteVersion | None = None) -> list[Entry]:
    """Every ``model_info`` JSON file under ``path`` (or the one file), as reference entries, all or nothing.

    Warnings (keys written twice, dataset field vs folder) are issued with :func:`warnings.warn`.
    ``suite_version``: see :func:`~robust_ens.leaderboard.model_info.model_info_to_entry`.

    Raises:
        RobustEnsError: the first file that cannot be read, naming file and field.
    """
    scan = scan_model_info(path, suite_version=suite_version)
    for note in scan.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    if scan.skipped:
        raise ModelInfoError(scan.skipped[0].reason, scan.skipped[0].kind)
    return [e for _, e in scan.entries]


def import_robustbench(path: str | Path, root: str | Path | None = None, *, strict: bool = False,
                       suite_version: SuiteVersion | None = None) -> ImportResult:
    """Import a RobustBench ``model_info`` tree into the leaderboard at ``root``.

    A file that cannot be read is skipped with its reason and the others are imported. An imported
    entry of the same name as one of ours in the same suite is skipped too (imports never replace
    ours); an earlier import of it is replaced.

    Args:
        path: RobustBench's ``model_info`` folder, a folder under it, or one file.
        root: the leaderboard folder (default: :func:`robust_ens.leaderboard.leaderboard_root`).
        strict: write nothing when any file is skipped (the command then fails).
        suite_version: the version of our suite of a name, recorded in the references filed under
            it (default: 1; the command passes the registered suites' versions).

    Returns:
        What was imported, written, skipped (with one-line reasons) and warned about.

    Raises:
        RobustEnsError: when ``path`` is missing or empty, or is one file that cannot be imported.
    """
    scan = scan_model_info(path, suite_version=suite_version)
    base = leaderboard_root(root)
    result = ImportResult(root=base, files=scan.files, skipped=list(scan.skipped), warnings=scan.warnings,
                          strict=strict)
    existing = {(e.protocol.suite, e.name): e for e in load_entries(base)} if base.is_dir() and any(
        base.rglob("*.json")) else {}
    todo: list[tuple[Path, Entry]] = []
    taken: dict[tuple[str, str], Path] = {}
    for f, e in scan.entries:
        key = (e.protocol.suite, e.name)
        old = existing.get(key)
        if old is not None and not (isinstance(old, Entry) and old.external is not None):
            result.skipped.append(Skipped(f, f"{f}: name: {e.name!r} is already one of our entries in "
                                             f"{e.protocol.suite}; imported references do not replace them",
                                          "name taken by one of our entries"))
        elif key in taken:
            result.skipped.append(Skipped(f, f"{f}: name: {e.name!r} in {e.protocol.suite} is also imported from "
                                             f"{taken[key]}", "same entry as another file"))
        else:
            taken[key] = f
            todo.append((f, e))
    if Path(path).is_file() and result.skipped:
        raise ModelInfoError(result.skipped[0].reason, result.skipped[0].kind)
    if strict and result.skipped:
        return result
    base.mkdir(parents=True, exist_ok=True)
    result.written = write_entries([e for _, e in todo], base)
    result.imported = [f for f, _ in todo]
    return result


def _raw_if_same(raw: dict[str, Any], key: str, ours: str | None) -> Any:
    """RobustBench's own spelling of a text field when it says what ours says (blanks aside), else ours."""
    theirs = raw.get(key)
    if isinstance(theirs, str) and (theirs.strip() == (ours or "") or not ours):
        return theirs
    return ours


def _export_eps(eps: list[float], raw: dict[str, Any]) -> Any:
    """RobustBench's eps: the imported spelling when it is the same number (or we have none), else ``8/255``-style."""
    try:
        theirs = parse_eps(raw.get("eps"), Path("<external>"))
    except ModelInfoError:
        theirs = None
    if not eps:
        return raw.get("eps")
    return raw["eps"] if theirs is not None and abs(theirs - eps[0]) < 1e-12 else format_eps(eps[0])


def entry_to_model_info(e: AnyEntry) -> tuple[dict[str, Any], Path] | str:
    """An entry as RobustBench's ``model_info`` dict and relative path, or why it has none."""
    if not isinstance(e, Entry):
        return f"{e.name}: schema 1 entry"
    if e.kind == "attack":
        return f"{e.name}: an attack entry (RobustBench ranks models)"
    task = e.protocol.task
    if task not in ("whitebox", "corruptions"):
        return f"{e.name}: a {task} entry (RobustBench has no field for transfer accuracy)"
    raw = dict(e.external.fields) if e.external else {}
    paper = e.paper or Paper()
    info: dict[str, Any] = {
        "link": paper.url or raw.get("link", ""), "name": _raw_if_same(raw, "name", paper.title) or e.name,
        "authors": paper.authors or raw.get("authors", ""),
        "additional_data": raw.get("additional_data", False),
        "number_forward_passes": raw.get("number_forward_passes", 1),
        "dataset": e.protocol.dataset, "venue": paper.venue or raw.get("venue", ""),
        "architecture": e.model.architecture,
        "eps": _export_eps(e.protocol.eps, raw),
        "clean_acc": f"{100 * e.results.clean.acc:.2f}",
    }
    m = e.results.metrics
    info["reported"] = f"{100 * m['reported_acc']:.2f}" if "reported_acc" in m else raw.get("reported", "")
    if task == "whitebox":
        aa = [c for c in e.results.cells if c.attack.startswith("autoattack")]
        if not aa:
            return f"{e.name}: no AutoAttack cell"
        info["autoattack_acc"] = f"{100 * min(c.robust_acc for c in aa):.2f}"
    else:
        if "mean_corruption_accuracy" not in m:
            return f"{e.name}: no mean corruption accuracy"
        info["corruptions_acc"] = f"{100 * m['mean_corruption_accuracy']:.2f}"
        if "mCE" in m:
            info["corruptions_mce"] = f"{m['mCE']:.2f}"
        if "mean_corruption_accuracy_3d" in m:
            info["corruptions_acc_3d"] = f"{100 * m['mean_corruption_accuracy_3d']:.2f}"
        if "mCE_3d" in m:
            info["corruptions_mce_3d"] = f"{m['mCE_3d']:.2f}"
    if "external_acc" in m:
        info["external"] = f"{100 * m['external_acc']:.2f}"
    for k in ("footnote", "unreliable"):
        if k in raw:
            info[k] = raw[k]
    if "footnote" not in info and e.model.description:
        info["footnote"] = e.model.description
    for k, v in raw.items():  # fields RobustBench added that we do not model travel unchanged
        info.setdefault(k, v)
    threat = "corruptions" if task == "corruptions" else e.protocol.threat_model
    return info, Path(e.protocol.dataset) / threat / f"{e.name}.json"


def export_robustbench(entries: Sequence[AnyEntry], out: str | Path) -> tuple[list[Path], list[str]]:
    """Write entries as ``<out>/<dataset>/<threat_model>/<Name>.json``; return (files written, skipped with why)."""
    base = Path(out)
    if base.exists() and not base.is_dir():
        raise RobustEnsError(f"--out {base} is a file; give a folder")
    written, skipped = [], []
    for e in entries:
        got = entry_to_model_info(e)
        if isinstance(got, str):
            skipped.append(got)
            continue
        info, rel = got
        written.append(atomic_write_text(base / rel, json.dumps(info, indent=2) + "\n"))
    return written, skipped

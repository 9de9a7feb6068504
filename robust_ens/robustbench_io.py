"""RobustBench interop: import its ``model_info`` files as reference entries, export ours in its layout.

RobustBench keeps one JSON file per model at ``model_info/<dataset>/<threat_model>/<Name>.json``
with accuracies as percent strings (``"86.46"``), ``eps`` as ``"8/255"``, ``"0.5"``, ``"0.031"`` or
null, and optional ``external``, ``unreliable``, ``footnote`` and corruption fields
(``corruptions_acc``, ``corruptions_mce``, ``*_3d``).

- :func:`import_robustbench` reads such a tree (strings to numbers, eps to floats), writes schema-2
  entries of kind ``reference`` with an ``external`` record of every original field, and files them
  under our suite of the same protocol (``cifar10/Linf`` at 8/255 -> ``cifar10-whitebox``,
  ``cifar10/corruptions`` -> ``cifar10-corruptions``, anything else ->
  ``robustbench-<dataset>-<threat>``), so tables show them beside ours, marked as imported. Their
  dataset stays RobustBench's (``cifar10``), not ours (``cifar10-jpeg``).
- :func:`export_robustbench` writes entries in RobustBench's field names and percent strings,
  since that is what its tools read. Transfer-suite entries have no RobustBench field and are
  skipped with the reason.

RobustBench's own quirks, and the rules this module applies (checked against every file of its
``model_info`` tree, commit 78fcc9e of 2025-03-31):

- **Missing values.** null, ``""`` and the words in :data:`MISSING_WORDS` (``"null"``, ``"None"``,
  ``"N/A"``, ``"-"``, ``"NaN"``, any case, surrounding blanks ignored) are a missing value in every
  field, never 0: RobustBench writes ``"reported": ""``, ``null`` and once ``"null"``, ``"footnote":
  null`` or ``""``, ``"venue": "N/A"`` and ``"authors": ""``.
- **Keys written twice** (``Diffenderfer2021Winning_LRR_CARD_Deck`` has ``corruptions_acc`` twice):
  the last one wins, as in :func:`json.loads`, with a warning naming file and key.
- **Dataset.** The folder wins over the ``dataset`` field (five ``cifar100`` files say
  ``"dataset": "cifar10"``; RobustBench's own loaders go by the folder), with a warning.
- **eps** is a fraction (``"8/255"``), a decimal string or a JSON number, kept exactly: ``"0.031"``
  (six CIFAR-10 Linf files, evaluated at 0.031 as in AutoAttack's paper) is not 8/255, so those
  entries form the suite ``robustbench-cifar10-Linf``. The eps of a corruptions file is the one the
  model was trained at; it is kept in the ``external`` record only.
- Booleans (``unreliable``) are ``true``/``false`` or the strings ``"true"``/``"false"``; titles lose
  the blanks and newlines around them.

A file that still cannot be read (not UTF-8, not JSON, a value that is not a percentage, no clean
accuracy) is skipped with its one-line reason and the import goes on (:class:`ImportResult`), unless
it was the one file asked for, or ``strict`` is set.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

from robust_ens import leaderboard as lb
from robust_ens.errors import RobustEnsError

# RobustBench evaluates on the full test set (CIFAR) and a 5000-image ImageNet subset.
EVAL_N = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
PERCENT_FIELDS = ("clean_acc", "reported", "autoattack_acc", "external", "corruptions_acc", "corruptions_acc_3d")
MCE_FIELDS = ("corruptions_mce", "corruptions_mce_3d")
TEXT_FIELDS = ("architecture", "name", "link", "venue", "authors", "footnote")
# RobustBench's folder names (its BenchmarkDataset and ThreatModel enums).
DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")
# Spellings of "no value" (compared lower-cased, blanks stripped); null and NaN are missing too.
MISSING_WORDS = frozenset({"", "null", "none", "nan", "n/a", "na", "-", "--", "\u2013", "\u2014"})
TRUE_WORDS, FALSE_WORDS = frozenset({"true"}), frozenset({"false"})


class ModelInfoError(RobustEnsError):
    """A ``model_info`` file that cannot be imported: one line naming file and field, plus its kind.

    Attributes:
        kind: a short category of the reason (``"not valid JSON"``, ``"not a percentage"``, ...), by
            which the import summary groups skipped files.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


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
    entries: list[tuple[Path, lb.Entry]] = field(default_factory=list)
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


def _where(path: Path, field: str) -> str:
    return f"{path}: {field}"


def is_missing(value: Any) -> bool:
    """RobustBench's spellings of "no value": null, NaN, ``""``, ``"null"``, ``"None"``, ``"N/A"``, ``"-"``..."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_WORDS


def parse_percent(value: Any, path: Path, field: str) -> float | None:
    """``"86.46"`` (or ``86.46``, ``"86.46%"``) -> 0.8646; a missing value -> ``None``.

    Raises:
        ModelInfoError: naming file and field, for anything else or a value outside 0..100.
    """
    if is_missing(value):
        return None
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is not a percentage", "not a percentage")
    try:
        x = float(text)
    except ValueError:
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is not a percentage", "not a percentage") from None
    if not math.isfinite(x) or not 0 <= x <= 100:
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is outside 0..100", "not a percentage")
    return x / 100


def parse_number(value: Any, path: Path, field: str) -> float | None:
    """A number given as a string or a number (a missing value -> ``None``).

    Raises:
        ModelInfoError: naming file and field, for anything else.
    """
    if is_missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is not a number", "not a number")
    try:
        x = float(value)
    except ValueError:
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is not a number", "not a number") from None
    if not math.isfinite(x):
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is not finite", "not a number")
    return x


def parse_eps(value: Any, path: Path) -> float | None:
    """``"8/255"`` (or ``"8 / 255"``) -> 8/255, ``"0.5"`` or ``0.5`` -> 0.5, a missing value -> ``None``.

    Raises:
        ModelInfoError: naming the file, for anything else or an eps that is not positive.
    """
    if is_missing(value):
        return None
    bad = ModelInfoError(f"{_where(path, 'eps')}: {value!r} is not a number or a fraction like 8/255", "bad eps")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise bad
    text = re.sub(r"\s+", "", str(value))
    try:
        x = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise bad from None
    if not math.isfinite(x) or x <= 0:
        raise ModelInfoError(f"{_where(path, 'eps')}: {value!r} is not a positive number", "bad eps")
    return x


def parse_bool(value: Any, path: Path, field: str) -> bool | None:
    """``true``/``false`` or the strings ``"true"``/``"false"`` (any case); a missing value -> ``None``.

    Raises:
        ModelInfoError: naming file and field, for anything else.
    """
    if is_missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ModelInfoError(f"{_where(path, field)}: {value!r} is not true or false", "not true or false")


def parse_text(value: Any, path: Path, field: str) -> str | None:
    """A string without surrounding blanks; a missing value -> ``None``.

    Raises:
        ModelInfoError: naming file and field, for a value that is not a string.
    """
    if is_missing(value):
        return None
    if not isinstance(value, str):
        raise ModelInfoError(f"{_where(path, field)}: {value!r} is not a string", "not a string")
    return value.strip() or None


def format_eps(eps: float) -> str:
    """RobustBench's spelling: ``8/255`` when eps is a whole number of 255ths, else the number."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-9 and round(k) > 0 else f"{eps:g}"


def suite_for(dataset: str, threat: str, eps: float | None) -> str:
    """Our suite of the same protocol, or ``robustbench-<dataset>-<threat>``."""
    if dataset == "cifar10" and threat == "Linf" and eps is not None and abs(eps - 8 / 255) < 1e-12:
        return "cifar10-whitebox"
    if dataset == "cifar10" and threat == "corruptions":
        return "cifar10-corruptions"
    return f"robustbench-{dataset}-{threat}"


def _suite_version(suite: str) -> int:
    from robust_ens.bench.protocol import get_suite

    try:
        return get_suite(suite).version
    except RobustEnsError:
        return 1


def _rate(acc: float, n: int) -> lb.Rate:
    from robust_ens.bench.aggregate import wilson

    lo, hi = wilson(round(acc * n), n)
    return lb.Rate(acc=acc, k=None, n=n, ci95=[lo, hi])


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (which JSON cannot hold) as null, for the ``external`` record."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def load_model_info(path: str | Path, notes: list[str] | None = None) -> Any:
    """One ``model_info`` file's JSON content; a key written twice keeps its last value, noted in ``notes``.

    Raises:
        ModelInfoError: one line naming the file when it cannot be read, is not UTF-8 or not JSON.
    """
    path = Path(path)
    what = "RobustBench model_info file"
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise ModelInfoError(f"cannot read {what} {path}: {err.strerror or err}", "cannot be read") from None
    try:
        text = blob.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not content
    except UnicodeDecodeError as err:
        raise ModelInfoError(f"{what} {path} is not UTF-8 text (byte {err.start}); it is corrupt",
                             "not UTF-8") from None

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, list[Any]] = {}
        for k, v in pairs:
            seen.setdefault(k, []).append(v)
            out[k] = v
        for k, values in seen.items():
            if len(values) > 1 and notes is not None:
                same = all(v == values[-1] for v in values)
                notes.append(f"{path}: {k}: written {len(values)} times; the last value {values[-1]!r} is used"
                             + (" (all equal)" if same else f" (earlier: {', '.join(map(repr, values[:-1]))})"))
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook, parse_constant=float)
    except json.JSONDecodeError as err:
        raise ModelInfoError(f"{what} {path} is not valid JSON: {err}", "not valid JSON") from None
    except RecursionError:
        raise ModelInfoError(f"{what} {path} is nested too deeply to be a model_info file", "not valid JSON") from None


def _dataset_and_threat(info: dict[str, Any], path: Path, rel: Path, notes: list[str] | None) -> tuple[str, str]:
    """Dataset and threat model: RobustBench's folder names win over the fields (with a note when they differ)."""
    parts = rel.parts
    folder_threat = parts[-2] if len(parts) >= 2 else None
    folder_dataset = parts[-3] if len(parts) >= 3 else None
    if folder_threat in THREATS:
        threat = folder_threat
    else:
        given = parse_text(info.get("threat_model"), path, "threat_model")
        if given is None:
            raise ModelInfoError(f"{path}: threat_model: not in a folder named after one ({', '.join(THREATS)}) "
                                 "and no threat_model field", "no threat model")
        threat = given
    field_dataset = parse_text(info.get("dataset"), path, "dataset")
    if folder_dataset in DATASETS and folder_threat in THREATS:
        if field_dataset is not None and field_dataset != folder_dataset and notes is not None:
            notes.append(f"{path}: dataset: the file says {field_dataset!r} but lies in {folder_dataset}/; "
                         f"the folder is used")
        return folder_dataset, threat
    if field_dataset is None:
        raise ModelInfoError(f"{path}: dataset: not in a folder named after one ({', '.join(DATASETS)}) "
                             "and no dataset field", "no dataset")
    return field_dataset, threat


def model_info_to_entry(info: Any, path: Path, rel: Path, notes: list[str] | None = None) -> lb.Entry:
    """One RobustBench ``model_info`` dict (read from ``path``; ``rel`` = ``<dataset>/<threat>/<Name>.json``).

    Args:
        info: the file's content.
        path: the file, named in errors.
        rel: its path in RobustBench's layout; the two folders give dataset and threat model.
        notes: where to append warnings (the dataset field disagreeing with the folder).

    Raises:
        ModelInfoError: naming file and field for a value that is not what RobustBench writes.
    """
    if not isinstance(info, dict):
        raise ModelInfoError(f"{path}: a RobustBench model_info file is a JSON object, got {type(info).__name__}",
                             "not a JSON object")
    dataset, threat = _dataset_and_threat(info, path, rel, notes)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", path.stem)
    text = {f: parse_text(info.get(f), path, f) for f in TEXT_FIELDS}
    pct = {f: parse_percent(info.get(f), path, f) for f in PERCENT_FIELDS}
    mce = {f: parse_number(info.get(f), path, f) for f in MCE_FIELDS}
    eps = parse_eps(info.get("eps"), path)
    unreliable = parse_bool(info.get("unreliable"), path, "unreliable")
    if pct["clean_acc"] is None:
        raise ModelInfoError(f"{_where(path, 'clean_acc')}: missing (every RobustBench entry has a clean accuracy)",
                             "no clean accuracy")
    n = EVAL_N.get(dataset, 10000)
    corruptions = threat.startswith("corruptions")
    suite = suite_for(dataset, threat, eps)
    cells: list[lb.Cell] = []
    worst: list[lb.WorstCase] = []
    robust = pct["autoattack_acc"]
    if robust is not None and eps is not None and not corruptions:
        r = _rate(robust, n)
        cells = [lb.Cell(attack="autoattack-standard", surrogate="white-box", eps=eps, robust_acc=robust, k=None,
                         n=n, ci95=r.ci95)]
        worst = [lb.WorstCase(eps=eps, robust_acc=robust, k=None, n=n, ci95=r.ci95, min_cell_acc=robust)]
    metrics: dict[str, float] = {}
    if pct["corruptions_acc"] is not None:
        metrics["mean_corruption_accuracy"] = pct["corruptions_acc"]
    if pct["corruptions_acc_3d"] is not None:
        metrics["mean_corruption_accuracy_3d"] = pct["corruptions_acc_3d"]
    if mce["corruptions_mce"] is not None:
        metrics["mCE"] = mce["corruptions_mce"]
    if mce["corruptions_mce_3d"] is not None:
        metrics["mCE_3d"] = mce["corruptions_mce_3d"]
    if pct["reported"] is not None:
        metrics["reported_acc"] = pct["reported"]
    if pct["external"] is not None:
        metrics["external_acc"] = pct["external"]
    flags = ["unreliable: RobustBench marks this evaluation unreliable"] if unreliable else []
    try:
        return lb.Entry(
            schema_version="2", kind="reference", name=name,
            model=lb.ModelInfo2(name=path.stem, architecture=text["architecture"] or "unknown",
                                description=text["footnote"] or ""),
            protocol=lb.Protocol2(suite=suite, suite_version=_suite_version(suite), tier="full",
                                  task="corruptions" if corruptions else "whitebox", dataset=dataset,
                                  n_examples=n, seed=0, threat_model=threat, eps=[eps] if cells and eps else [],
                                  attacks=["autoattack-standard"] if cells else [],
                                  surrogates=["white-box"] if cells else []),
            results=lb.Results2(clean=_rate(pct["clean_acc"], n), cells=cells, worst_case=worst, metrics=metrics,
                                flags=flags),
            paper=lb.Paper(title=text["name"] or "", url=text["link"], venue=text["venue"], authors=text["authors"]),
            external=lb.External(source="robustbench", path=str(Path(dataset) / rel.parts[-2] / rel.name)
                                 if len(rel.parts) >= 2 else str(rel), fields=_json_safe(dict(info))),
        )
    except Exception as err:  # pydantic: one line naming the file
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise ModelInfoError(f"{path}: {lb._problems(err)}", "not a valid entry") from None
        raise


def _model_info_files(path: str | Path) -> tuple[Path, list[Path]]:
    base = Path(path)
    if not base.exists():
        raise RobustEnsError(f"path: {base} does not exist (give RobustBench's model_info folder or a file)")
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*.json") if not p.name.startswith("."))
    if not files:
        raise RobustEnsError(f"path: no RobustBench model_info files (*.json) under {base}")
    return base, files


def scan_model_info(path: str | Path) -> ModelInfoScan:
    """Read every ``model_info`` JSON file under ``path`` (or the one file), skipping those that cannot be read.

    Dataset and threat model come from each file's two parent folders (``<dataset>/<threat>/``), so
    ``path`` may be ``model_info`` itself, one dataset's folder or one file.

    Raises:
        RobustEnsError: only when ``path`` does not exist or holds no ``*.json`` file.
    """
    _, files = _model_info_files(path)
    scan = ModelInfoScan(files=files)
    for f in files:
        rel = Path(*f.parts[-3:])
        notes: list[str] = []
        try:
            scan.entries.append((f, model_info_to_entry(load_model_info(f, notes), f, rel, notes)))
        except ModelInfoError as err:
            scan.skipped.append(Skipped(f, str(err), err.kind))
        scan.warnings.extend(notes)
    return scan


def read_model_info(path: str | Path) -> list[lb.Entry]:
    """Every ``model_info`` JSON file under ``path`` (or the one file), as reference entries, all or nothing.

    Warnings (keys written twice, dataset field vs folder) are issued with :func:`warnings.warn`.

    Raises:
        RobustEnsError: the first file that cannot be read, naming file and field.
    """
    scan = scan_model_info(path)
    for note in scan.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    if scan.skipped:
        raise ModelInfoError(scan.skipped[0].reason, scan.skipped[0].kind)
    return [e for _, e in scan.entries]


def import_robustbench(path: str | Path, root: str | Path | None = None, *, strict: bool = False) -> ImportResult:
    """Import a RobustBench ``model_info`` tree into the leaderboard at ``root``.

    A file that cannot be read is skipped with its reason and the others are imported. An imported
    entry of the same name as one of ours in the same suite is skipped too (imports never replace
    ours); an earlier import of it is replaced.

    Args:
        path: RobustBench's ``model_info`` folder, a folder under it, or one file.
        root: the leaderboard folder (default: :func:`robust_ens.leaderboard.leaderboard_root`).
        strict: write nothing when any file is skipped (the command then fails).

    Returns:
        What was imported, written, skipped (with one-line reasons) and warned about.

    Raises:
        RobustEnsError: when ``path`` is missing or empty, or is one file that cannot be imported.
    """
    scan = scan_model_info(path)
    base = lb.leaderboard_root(root)
    result = ImportResult(root=base, files=scan.files, skipped=list(scan.skipped), warnings=scan.warnings,
                          strict=strict)
    existing = {(e.protocol.suite, e.name): e for e in lb.load_entries(base)} if base.is_dir() and any(
        base.rglob("*.json")) else {}
    todo: list[tuple[Path, lb.Entry]] = []
    taken: dict[tuple[str, str], Path] = {}
    for f, e in scan.entries:
        key = (e.protocol.suite, e.name)
        old = existing.get(key)
        if old is not None and not (isinstance(old, lb.Entry) and old.external is not None):
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
    for f, e in todo:
        result.written.append(lb.write(e, base))
        result.imported.append(f)
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


def entry_to_model_info(e: lb.AnyEntry) -> tuple[dict[str, Any], Path] | str:
    """An entry as RobustBench's ``model_info`` dict and relative path, or why it has none."""
    if not isinstance(e, lb.Entry):
        return f"{e.name}: schema 1 entry"
    if e.kind == "attack":
        return f"{e.name}: an attack entry (RobustBench ranks models)"
    task = e.protocol.task
    if task not in ("whitebox", "corruptions"):
        return f"{e.name}: a {task} entry (RobustBench has no field for transfer accuracy)"
    raw = dict(e.external.fields) if e.external else {}
    paper = e.paper or lb.Paper()
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


def export_robustbench(entries: Sequence[lb.AnyEntry], out: str | Path) -> tuple[list[Path], list[str]]:
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
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written, skipped

"""One RobustBench ``model_info`` file read as a reference entry, with RobustBench's quirks handled.

RobustBench keeps one JSON file per model at ``model_info/<dataset>/<threat_model>/<Name>.json``
with accuracies as percent strings (``"86.46"``), ``eps`` as ``"8/255"``, ``"0.5"``, ``"0.031"`` or
null, and optional ``external``, ``unreliable``, ``footnote`` and corruption fields
(``corruptions_acc``, ``corruptions_mce``, ``*_3d``). :func:`model_info_to_entry` turns one into a
schema-2 entry of kind ``reference`` with an ``external`` record of every original field, filed
under our suite of the same protocol (:func:`suite_for`); its dataset stays RobustBench's.
Trees, import and export: :mod:`robust_ens.leaderboard.robustbench`.

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

A value that is none of these raises :class:`ModelInfoError`, one line naming file and field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.schema import (
    Cell,
    Entry,
    External,
    ModelInfo2,
    Paper,
    Protocol2,
    Rate,
    Results2,
    WorstCase,
    problems,
    wilson,
)

SuiteVersion = Callable[[str], int]
"""The version of our suite of a name (for the ``suite_version`` of imported references)."""

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


def _version_1(suite: str) -> int:
    return 1


def _rate(acc: float, n: int) -> Rate:
    lo, hi = wilson(round(acc * n), n)
    return Rate(acc=acc, k=None, n=n, ci95=[lo, hi])


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


def model_info_to_entry(info: Any, path: Path, rel: Path, notes: list[str] | None = None, *,
                        suite_version: SuiteVersion | None = None) -> Entry:
    """One RobustBench ``model_info`` dict (read from ``path``; ``rel`` = ``<dataset>/<threat>/<Name>.json``).

    Args:
        info: the file's content.
        path: the file, named in errors.
        rel: its path in RobustBench's layout; the two folders give dataset and threat model.
        notes: where to append warnings (the dataset field disagreeing with the folder).
        suite_version: the version of our suite of a name (default: 1 for every suite). The
            leaderboard knows no suites; the caller that does (the CLI) passes their versions.

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
    cells: list[Cell] = []
    worst: list[WorstCase] = []
    robust = pct["autoattack_acc"]
    if robust is not None and eps is not None and not corruptions:
        r = _rate(robust, n)
        cells = [Cell(attack="autoattack-standard", surrogate="white-box", eps=eps, robust_acc=robust, k=None,
                         n=n, ci95=r.ci95)]
        worst = [WorstCase(eps=eps, robust_acc=robust, k=None, n=n, ci95=r.ci95, min_cell_acc=robust)]
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
        return Entry(
            schema_version="2", kind="reference", name=name,
            model=ModelInfo2(name=path.stem, architecture=text["architecture"] or "unknown",
                                description=text["footnote"] or ""),
            protocol=Protocol2(suite=suite, suite_version=(suite_version or _version_1)(suite), tier="full",
                                  task="corruptions" if corruptions else "whitebox", dataset=dataset,
                                  n_examples=n, seed=0, threat_model=threat, eps=[eps] if cells and eps else [],
                                  attacks=["autoattack-standard"] if cells else [],
                                  surrogates=["white-box"] if cells else []),
            results=Results2(clean=_rate(pct["clean_acc"], n), cells=cells, worst_case=worst, metrics=metrics,
                                flags=flags),
            paper=Paper(title=text["name"] or "", url=text["link"], venue=text["venue"], authors=text["authors"]),
            external=External(source="robustbench", path=str(Path(dataset) / rel.parts[-2] / rel.name)
                                 if len(rel.parts) >= 2 else str(rel), fields=_json_safe(dict(info))),
        )
    except Exception as err:  # pydantic: one line naming the file
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise ModelInfoError(f"{path}: {problems(err)}", "not a valid entry") from None
        raise


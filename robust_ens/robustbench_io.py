"""RobustBench interop: import its ``model_info`` files as reference entries, export ours in its layout.

RobustBench keeps one JSON file per model at ``model_info/<dataset>/<threat_model>/<Name>.json``
with accuracies as percent strings (``"86.46"``), ``eps`` as ``"8/255"``, ``"0.5"`` or null,
``reported`` as ``""`` or null, and optional ``external``, ``unreliable``, ``footnote`` and
corruption fields (``corruptions_acc``, ``corruptions_mce``, ``*_3d``).

- :func:`import_robustbench` reads such a tree (strings to numbers, eps to floats, ``""`` and null
  kept as missing), writes schema-2 entries of kind ``reference`` with an ``external`` record of
  every original field, and files them under our suite of the same protocol
  (``cifar10/Linf`` at 8/255 -> ``cifar10-whitebox``, ``cifar10/corruptions`` ->
  ``cifar10-corruptions``, anything else -> ``robustbench-<dataset>-<threat>``), so tables show
  them beside ours, marked as imported. Their dataset stays RobustBench's (``cifar10``), not ours
  (``cifar10-jpeg``).
- :func:`export_robustbench` writes entries in RobustBench's field names and percent strings,
  since that is what its tools read. Transfer-suite entries have no RobustBench field and are
  skipped with the reason.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from robust_ens import leaderboard as lb
from robust_ens.errors import RobustEnsError

# RobustBench evaluates on the full test set (CIFAR) and a 5000-image ImageNet subset.
EVAL_N = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
PERCENT_FIELDS = ("clean_acc", "reported", "autoattack_acc", "external", "corruptions_acc", "corruptions_acc_3d")
MCE_FIELDS = ("corruptions_mce", "corruptions_mce_3d")


def _where(path: Path, field: str) -> str:
    return f"{path}: {field}"


def parse_percent(value: Any, path: Path, field: str) -> float | None:
    """``"86.46"`` -> 0.8646; ``""`` / null / absent -> ``None``; anything else is refused naming file and field."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise RobustEnsError(f"{_where(path, field)}: {value!r} is not a percentage")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RobustEnsError(f"{_where(path, field)}: {value!r} is not a percentage") from None
    if not math.isfinite(x) or not 0 <= x <= 100:
        raise RobustEnsError(f"{_where(path, field)}: {value!r} is outside 0..100")
    return x / 100


def parse_number(value: Any, path: Path, field: str) -> float | None:
    """A number given as a string or a number (``""`` / null -> ``None``)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RobustEnsError(f"{_where(path, field)}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise RobustEnsError(f"{_where(path, field)}: {value!r} is not finite")
    return x


def parse_eps(value: Any, path: Path) -> float | None:
    """``"8/255"`` -> 8/255, ``"0.5"`` -> 0.5, null -> ``None``."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    text = str(value).strip()
    try:
        x = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise RobustEnsError(f"{_where(path, 'eps')}: {value!r} is not a number or a fraction like 8/255") from None
    if not math.isfinite(x) or x <= 0:
        raise RobustEnsError(f"{_where(path, 'eps')}: {value!r} is not a positive number")
    return x


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


def model_info_to_entry(info: Any, path: Path, rel: Path) -> lb.Entry:
    """One RobustBench ``model_info`` dict (read from ``path``; ``rel`` = ``<dataset>/<threat>/<Name>.json``).

    Raises:
        RobustEnsError: naming file and field for a value that is not what RobustBench writes.
    """
    if not isinstance(info, dict):
        raise RobustEnsError(f"{path}: a RobustBench model_info file is a JSON object, got {type(info).__name__}")
    parts = rel.parts
    threat = parts[-2] if len(parts) >= 2 else str(info.get("threat_model", "Linf"))
    dataset = str(info.get("dataset") or (parts[-3] if len(parts) >= 3 else "cifar10"))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", path.stem)
    for f in ("architecture", "name", "link", "venue", "authors", "footnote"):
        if info.get(f) is not None and not isinstance(info[f], str):
            raise RobustEnsError(f"{_where(path, f)}: {info[f]!r} is not a string")
    pct = {f: parse_percent(info.get(f), path, f) for f in PERCENT_FIELDS}
    mce = {f: parse_number(info.get(f), path, f) for f in MCE_FIELDS}
    eps = parse_eps(info.get("eps"), path)
    if pct["clean_acc"] is None:
        raise RobustEnsError(f"{_where(path, 'clean_acc')}: missing (every RobustBench entry has a clean accuracy)")
    n = EVAL_N.get(dataset, 10000)
    suite = suite_for(dataset, threat, eps)
    cells: list[lb.Cell] = []
    worst: list[lb.WorstCase] = []
    robust = pct["autoattack_acc"]
    if robust is not None and eps is not None:
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
    flags = ["unreliable: RobustBench marks this evaluation unreliable"] if info.get("unreliable") is True else []
    try:
        return lb.Entry(
            schema_version="2", kind="reference", name=name,
            model=lb.ModelInfo2(name=path.stem, architecture=str(info.get("architecture") or "unknown"),
                                description=str(info.get("footnote") or "")),
            protocol=lb.Protocol2(suite=suite, suite_version=_suite_version(suite), tier="full",
                                  task="corruptions" if threat == "corruptions" else "whitebox", dataset=dataset,
                                  n_examples=n, seed=0, threat_model=threat, eps=[eps] if cells and eps else [],
                                  attacks=["autoattack-standard"] if cells else [],
                                  surrogates=["white-box"] if cells else []),
            results=lb.Results2(clean=_rate(pct["clean_acc"], n), cells=cells, worst_case=worst, metrics=metrics,
                                flags=flags),
            paper=lb.Paper(title=str(info.get("name") or ""), url=info.get("link") or None,
                           venue=info.get("venue") or None, authors=info.get("authors") or None),
            external=lb.External(source="robustbench", path=str(rel), fields=dict(info)),
        )
    except Exception as err:  # pydantic: one line naming the file
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise RobustEnsError(f"{path}: {lb._problems(err)}") from None
        raise


def read_model_info(path: str | Path) -> list[lb.Entry]:
    """Every ``model_info`` JSON file under ``path`` (or the one file), as reference entries."""
    base = Path(path)
    if not base.exists():
        raise RobustEnsError(f"path: {base} does not exist (give RobustBench's model_info folder or a file)")
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*.json") if not p.name.startswith("."))
    if not files:
        raise RobustEnsError(f"path: no RobustBench model_info files (*.json) under {base}")
    out = []
    for f in files:
        rel = f.relative_to(base) if base.is_dir() else Path(f.parent.parent.name) / f.parent.name / f.name
        out.append(model_info_to_entry(lb.read_json(f, "RobustBench model_info file"), f, rel))
    return out


def import_robustbench(path: str | Path, root: str | Path | None = None) -> list[Path]:
    """Import a RobustBench ``model_info`` tree into the leaderboard at ``root``; return the files written.

    An imported entry of the same name as one of ours in the same suite is refused.
    """
    entries = read_model_info(path)
    base = lb.leaderboard_root(root)
    base.mkdir(parents=True, exist_ok=True)
    existing = {(e.protocol.suite, e.name): e for e in lb.load_entries(base)} if any(base.rglob("*.json")) else {}
    written = []
    for e in entries:
        old = existing.get((e.protocol.suite, e.name))
        if old is not None and not (isinstance(old, lb.Entry) and old.external is not None):
            raise RobustEnsError(f"{e.external.path if e.external else e.name}: name: {e.name!r} is already one "
                                 f"of our entries in {e.protocol.suite}; imported references do not replace them")
        written.append(lb.write(e, base))
    return written


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
        "link": paper.url or raw.get("link", ""), "name": paper.title or raw.get("name", e.name),
        "authors": paper.authors or raw.get("authors", ""),
        "additional_data": raw.get("additional_data", False),
        "number_forward_passes": raw.get("number_forward_passes", 1),
        "dataset": e.protocol.dataset, "venue": paper.venue or raw.get("venue", ""),
        "architecture": e.model.architecture,
        "eps": format_eps(e.protocol.eps[0]) if e.protocol.eps else None,
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

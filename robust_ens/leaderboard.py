"""Leaderboard entries: a typed, versioned JSON schema, validation and rendered tables.

One JSON file per entry at ``leaderboards/<dataset>/<suite>/<Name>.json``. Numbers are JSON
numbers (RobustBench stores strings; we refuse them). Tables are rendered from entries, never
edited by hand.

Example:
    >>> from robust_ens.leaderboard import Entry
    >>> e = Entry.model_validate({
    ...     "name": "demo", "model": {"name": "demo", "architecture": "small_cnn"},
    ...     "protocol": {"suite": "quickstart", "suite_version": "1", "dataset": "digits", "n_examples": 10, "seed": 0},
    ...     "results": {"clean_accuracy": 0.9},
    ... })
    >>> e.results.clean_accuracy
    0.9
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from robust_ens.errors import RobustEnsError

SCHEMA_VERSION = "1.0"
LEADERBOARD_DIR = Path(__file__).resolve().parent.parent / "leaderboards"

_Strict = ConfigDict(extra="forbid", strict=True)


class ModelInfo(BaseModel):
    """What was evaluated."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    name: str
    architecture: str
    n_members: int = Field(1, ge=1)
    checkpoint_sha256: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    defense: str | None = None
    description: str = ""


class Protocol(BaseModel):
    """How it was evaluated."""

    model_config = _Strict

    suite: str
    suite_version: str
    dataset: str
    n_examples: int = Field(ge=1)
    seed: int
    threat_model: str = "Linf"
    eps: list[float] = Field(default_factory=list)
    attacks: list[str] = Field(default_factory=list)
    surrogates: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)


class Results(BaseModel):
    """Accuracies in [0, 1]; robust accuracy per attack and eps (eps keys as strings, e.g. "0.03")."""

    model_config = _Strict

    clean_accuracy: float = Field(ge=0, le=1)
    robust_accuracy: dict[str, dict[str, float]] = Field(default_factory=dict)
    worst_case: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    @field_validator("robust_accuracy")
    @classmethod
    def _in_unit_interval(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for attack, per_eps in v.items():
            for eps, acc in per_eps.items():
                if not 0 <= acc <= 1:
                    raise ValueError(f"robust accuracy of {attack} at eps {eps} is {acc}, outside [0, 1]")
        return v


class Cost(BaseModel):
    model_config = _Strict

    seconds: float = Field(0.0, ge=0)
    device: str = "cpu"
    forward_passes: int = Field(0, ge=0)
    backward_passes: int = Field(0, ge=0)


class Provenance(BaseModel):
    model_config = _Strict

    robust_ens_version: str
    git_commit: str | None = None
    torch_version: str
    python_version: str
    command: str = ""
    created: str


class Entry(BaseModel):
    """One leaderboard entry (schema version :data:`SCHEMA_VERSION`)."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    schema_version: str = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9._+-]+$")
    model: ModelInfo
    protocol: Protocol
    results: Results
    cost: Cost | None = None
    provenance: Provenance | None = None

    def with_worst_case(self) -> Entry:
        """A copy whose ``worst_case`` is the minimum robust accuracy over attacks per eps."""
        worst: dict[str, float] = {}
        for per_eps in self.results.robust_accuracy.values():
            for eps, acc in per_eps.items():
                worst[eps] = min(acc, worst.get(eps, 1.0))
        return self.model_copy(update={"results": self.results.model_copy(update={"worst_case": worst})})


def provenance(command: str | None = None) -> Provenance:
    """The current environment, for an entry's ``provenance``."""
    import robust_ens

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return Provenance(
        robust_ens_version=robust_ens.__version__, git_commit=commit, torch_version=torch.__version__,
        python_version=platform.python_version(), command=command if command is not None else " ".join(sys.argv),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Entry`, versioned by ``$id``."""
    schema = Entry.model_json_schema()
    schema["$id"] = f"https://robust-ens/schema/entry-{SCHEMA_VERSION}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def validate(entry: str | Path | dict[str, Any]) -> Entry:
    """Validate a JSON file or dict against the schema; raise with every problem listed."""
    if isinstance(entry, str | Path):
        path = Path(entry)
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise RobustEnsError(f"leaderboard entry {path} does not exist") from err
        except json.JSONDecodeError as err:
            raise RobustEnsError(f"leaderboard entry {path} is not valid JSON: {err}") from err
        where = str(path)
    else:
        payload, where = entry, "entry"
    try:
        return Entry.model_validate(payload)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise RobustEnsError(f"{where} does not match the leaderboard schema {SCHEMA_VERSION}: {problems}") from err


def entry_path(entry: Entry, root: str | Path = LEADERBOARD_DIR) -> Path:
    """``<root>/<dataset>/<suite>/<name>.json``."""
    return Path(root) / entry.protocol.dataset / entry.protocol.suite / f"{entry.name}.json"


def write(entry: Entry, root: str | Path = LEADERBOARD_DIR) -> Path:
    """Validate and write an entry; returns its path."""
    validate(entry.model_dump(mode="json"))
    path = entry_path(entry, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry.model_dump(mode="json"), indent=2) + "\n")
    return path


def load_entries(root: str | Path = LEADERBOARD_DIR) -> list[Entry]:
    """Every entry under ``root``, validated."""
    return [validate(p) for p in sorted(Path(root).rglob("*.json")) if p.name != "schema.json"]


def headline_metrics(entries: Sequence[Entry]) -> list[str]:
    """Summary metrics shown as table columns: top-level ``metrics`` keys (no ``/`` in the name)."""
    return sorted({k for e in entries for k in e.results.metrics if "/" not in k})


def render(entries: Sequence[Entry], fmt: str = "markdown") -> str:
    """A table of entries, best first (``fmt``: markdown or html).

    Entries with robust accuracies rank by their worst case over eps; suites without eps (e.g.
    common corruptions) rank by their first headline metric, then by clean accuracy.
    """
    from tabulate import tabulate

    if fmt not in ("markdown", "html"):
        raise RobustEnsError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
    eps_keys = sorted({k for e in entries for k in e.results.worst_case}, key=float)
    metric_keys = headline_metrics(entries)

    def key(e: Entry) -> tuple[float, float]:
        worst = [e.results.worst_case[k] for k in eps_keys if k in e.results.worst_case]
        if worst:
            return (-min(worst), -e.results.clean_accuracy)
        first = e.results.metrics.get(metric_keys[0], 0.0) if metric_keys else 0.0
        return (-first, -e.results.clean_accuracy)

    def fmt_metric(name: str, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}" if "acc" in name.lower() and 0 <= value <= 1 else f"{value:.2f}"

    rows = []
    for rank, e in enumerate(sorted(entries, key=key), 1):
        rows.append(
            [rank, e.name, e.model.architecture, e.model.n_members, e.model.defense or "-",
             f"{100 * e.results.clean_accuracy:.2f}"]
            + [f"{100 * e.results.worst_case[k]:.2f}" if k in e.results.worst_case else "-" for k in eps_keys]
            + [fmt_metric(k, e.results.metrics.get(k)) for k in metric_keys]
        )
    headers = (["#", "name", "architecture", "members", "defense", "clean %"]
               + [f"worst @ {k} %" for k in eps_keys] + metric_keys)
    return tabulate(rows, headers=headers, tablefmt="github" if fmt == "markdown" else "html", disable_numparse=True)


def render_all(root: str | Path = LEADERBOARD_DIR) -> list[Path]:
    """Write ``README.md`` and ``index.html`` next to each suite's entries; return the files written."""
    by_suite: dict[Path, list[Entry]] = {}
    for p in sorted(Path(root).rglob("*.json")):
        if p.name == "schema.json":
            continue
        by_suite.setdefault(p.parent, []).append(validate(p))
    written = []
    for folder, entries in by_suite.items():
        title = f"{entries[0].protocol.dataset} / {entries[0].protocol.suite}"
        md = folder / "README.md"
        md.write_text(f"# {title}\n\nGenerated from the JSON entries by `robust-ens leaderboard render`; do not edit.\n\n"
                      + render(entries, "markdown") + "\n")
        html = folder / "index.html"
        html.write_text(f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>\n"
                        + render(entries, "html") + "\n")
        written += [md, html]
    return written


def iter_json(paths: Iterable[str | Path]) -> Iterable[Path]:
    """JSON files named by ``paths`` (files, or every JSON file under folders)."""
    for p in map(Path, paths):
        yield from (sorted(p.rglob("*.json")) if p.is_dir() else [p])

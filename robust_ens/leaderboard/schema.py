"""The leaderboard entry schema: typed, versioned pydantic models, validation and the JSON Schema.

Schema 2 (:class:`Entry`, ``schema_version: "2"``) records one cell per (attack, surrogate, eps)
with ``k`` of ``n`` examples robust and a 95% Wilson interval, the worst case per eps (the
per-example worst case over every cell of that eps, which can only be at or below the minimum of
the cells; the minimum itself is recorded and checked), per-class accuracy, sanity flags, cost,
provenance, the paper, the target it was evaluated on (spec, weights and sha256: enough to re-run
it, see ``robust-ens regress``) and the sha256 of the per-example results. Schema 1
(:class:`EntryV1`, ``schema_version: "1.0"`` or absent) is legacy: such files still validate and
render, and nothing writes new ones.

Numbers are JSON numbers (RobustBench stores strings; they are refused). This module imports
nothing of the project but :mod:`robust_ens.errors`: everything else builds on it.

Example:
    >>> from robust_ens.leaderboard import validate
    >>> e = validate({
    ...     "name": "demo", "model": {"name": "demo", "architecture": "small_cnn"},
    ...     "protocol": {"suite": "quickstart", "suite_version": "1", "dataset": "digits", "n_examples": 10, "seed": 0},
    ...     "results": {"clean_accuracy": 0.9},
    ... })
    >>> e.schema_version, e.results.clean_accuracy
    ('1.0', 0.9)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robust_ens.errors import RobustEnsError

SCHEMA_VERSION = "2"
SCHEMA_VERSIONS = ("1.0", "2")
Z95 = 1.959963984540054

_Strict = ConfigDict(extra="forbid", strict=True)
_StrictNS = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


# =========================================================================== schema 1 (legacy: read, never written)


class ModelInfo(BaseModel):
    """What was evaluated (schema 1)."""

    model_config = _StrictNS

    name: str
    architecture: str
    n_members: int = Field(default=1, ge=1)
    checkpoint_sha256: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    defense: str | None = None
    description: str = ""


class Protocol(BaseModel):
    """How it was evaluated (schema 1)."""

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

    clean_accuracy: float = Field(ge=0, le=1, allow_inf_nan=False)
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

    @field_validator("worst_case")
    @classmethod
    def _worst_in_unit_interval(cls, v: dict[str, float]) -> dict[str, float]:
        for eps, acc in v.items():
            if not 0 <= acc <= 1:
                raise ValueError(f"worst case at eps {eps} is {acc}, outside [0, 1]")
        return v


class Cost(BaseModel):
    """What an evaluation spent."""

    model_config = _Strict

    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    device: str = "cpu"
    forward_passes: int = Field(default=0, ge=0)
    backward_passes: int = Field(default=0, ge=0)


class Provenance(BaseModel):
    """Where an entry came from."""

    model_config = _Strict

    robust_ens_version: str
    git_commit: str | None = None
    torch_version: str
    python_version: str
    command: str = ""
    created: str


class EntryV1(BaseModel):
    """One leaderboard entry of schema 1 (``schema_version: "1.0"``), still accepted."""

    model_config = _StrictNS

    schema_version: Literal["1.0"] = "1.0"
    name: str = Field(pattern=r"^[A-Za-z0-9._+-]+$")
    model: ModelInfo
    protocol: Protocol
    results: Results
    cost: Cost | None = None
    provenance: Provenance | None = None

    def with_worst_case(self) -> EntryV1:
        """A copy whose ``worst_case`` is the minimum robust accuracy over attacks per eps."""
        worst: dict[str, float] = {}
        for per_eps in self.results.robust_accuracy.values():
            for eps, acc in per_eps.items():
                worst[eps] = min(acc, worst.get(eps, 1.0))
        return self.model_copy(update={"results": self.results.model_copy(update={"worst_case": worst})})


# =========================================================================== schema 2

Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
_SHA = r"^[0-9a-f]{64}$"


def eps_key(eps: float) -> str:
    """The engine's spelling of an eps (``0.1``, ``0.0313725``): 6 significant digits."""
    return f"{eps:.6g}"


def eps_label(eps: float) -> str:
    """An eps for people: ``8/255`` when it is a whole number of 255ths, else :func:`eps_key`."""
    k, short = eps * 255, eps_key(eps)
    return f"{round(k)}/255" if len(short) > 5 and abs(k - round(k)) < 1e-6 and round(k) > 0 else short


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion ``k / n``: an entry's ``ci95``."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def _check_per_class(per_class: list[float | None]) -> None:
    for i, v in enumerate(per_class):
        if v is not None and not (math.isfinite(v) and 0 <= v <= 1):
            raise ValueError(f"per_class[{i}] is {v}, outside [0, 1]")


def _check_rate(acc: float, k: int | None, n: int, ci95: list[float], what: str) -> None:
    lo, hi = ci95
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"{what}: ci95 {ci95} is not an interval within [0, 1]")
    if k is None:
        return
    if k > n:
        raise ValueError(f"{what}: k={k} is more than n={n}")
    if abs(acc - k / n) > 1e-9:
        raise ValueError(f"{what}: accuracy {acc} is not k/n = {k}/{n}")


class Rate(BaseModel):
    """An accuracy measured on ``n`` examples: ``acc = k / n`` and its 95% Wilson interval."""

    model_config = _Strict

    acc: Unit
    k: int | None = Field(ge=0)
    n: int = Field(ge=1)
    ci95: list[float] = Field(min_length=2, max_length=2)
    per_class: list[float | None] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Rate:
        _check_rate(self.acc, self.k, self.n, self.ci95, "acc")
        _check_per_class(self.per_class)
        return self


class Cell(BaseModel):
    """Robust accuracy of one (attack, surrogate, eps) cell (for attack entries, also per target)."""

    model_config = _Strict

    attack: str
    surrogate: str
    eps: float = Field(gt=0, allow_inf_nan=False)
    target: str | None = None
    robust_acc: Unit
    k: int | None = Field(ge=0)
    n: int = Field(ge=1)
    ci95: list[float] = Field(min_length=2, max_length=2)
    success_rate: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Cell:
        _check_rate(self.robust_acc, self.k, self.n, self.ci95, "robust_acc")
        return self

    @property
    def id(self) -> str:
        """``attack@surrogate@eps`` (``@target`` appended for attack entries)."""
        base = f"{self.attack}@{self.surrogate}@{eps_key(self.eps)}"
        return base if self.target is None else f"{base}@{self.target}"


class CorruptionCell(BaseModel):
    """Accuracy under one (corruption, severity)."""

    model_config = _Strict

    corruption: str
    severity: int = Field(ge=1)
    acc: Unit
    k: int = Field(ge=0)
    n: int = Field(ge=1)
    ci95: list[float] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> CorruptionCell:
        _check_rate(self.acc, self.k, self.n, self.ci95, "acc")
        return self


class WorstCase(BaseModel):
    """The worst case at one eps: an example counts only if it survives every cell of that eps.

    ``min_cell_acc`` is the minimum of the cells' robust accuracies at this eps; ``robust_acc``
    (per example) is at or below it.
    """

    model_config = _Strict

    eps: float = Field(gt=0, allow_inf_nan=False)
    robust_acc: Unit
    k: int | None = Field(ge=0)
    n: int = Field(ge=1)
    ci95: list[float] = Field(min_length=2, max_length=2)
    min_cell_acc: Unit
    per_class: list[float | None] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> WorstCase:
        _check_rate(self.robust_acc, self.k, self.n, self.ci95, "robust_acc")
        _check_per_class(self.per_class)
        return self


class TargetRecord(BaseModel):
    """How to rebuild the evaluated model: an engine target spec, its weights and their sha256."""

    model_config = _Strict

    spec: str = Field(min_length=1)
    weights: str | None = None
    weights_sha256: str | None = Field(default=None, pattern=_SHA)


class ModelInfo2(BaseModel):
    """What was evaluated (a model for defense entries; an attack for attack entries)."""

    model_config = _StrictNS

    name: str
    architecture: str
    n_members: int = Field(default=1, ge=1)
    parameters: int | None = Field(default=None, ge=0)
    checkpoint_sha256: list[str] = Field(default_factory=list)
    defense: str | None = None
    description: str = ""
    target: TargetRecord | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class Protocol2(BaseModel):
    """How it was evaluated: the suite at its version and tier, and what that tier contains."""

    model_config = _Strict

    suite: str
    suite_version: int = Field(ge=1)
    tier: str
    task: str = "transfer"
    dataset: str
    split: str = "test"
    n_examples: int = Field(ge=1)
    seed: int
    threat_model: str = "Linf"
    eps: list[float] = Field(default_factory=list)
    attacks: list[str] = Field(default_factory=list)
    surrogates: list[str] = Field(default_factory=list)
    digest: str | None = Field(default=None, pattern=_SHA)

    @field_validator("eps")
    @classmethod
    def _finite_eps(cls, v: list[float]) -> list[float]:
        for e in v:
            if not math.isfinite(e) or e <= 0:
                raise ValueError(f"eps {e} is not a positive finite number")
        return v


class Results2(BaseModel):
    """What was measured; every accuracy is in [0, 1] with its ``k`` and ``n``."""

    model_config = _Strict

    clean: Rate
    cells: list[Cell] = Field(default_factory=list)
    worst_case: list[WorstCase] = Field(default_factory=list)
    corruptions: list[CorruptionCell] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    sanity: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if not math.isfinite(x):
                raise ValueError(f"metric {k} is {x}; metrics are finite numbers")
        return v


class Cost2(BaseModel):
    """What the evaluation spent."""

    model_config = _Strict

    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    device: str = "cpu"
    forward_passes: float = Field(default=0, ge=0, allow_inf_nan=False)
    backward_passes: float = Field(default=0, ge=0, allow_inf_nan=False)
    attack_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    eval_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class Paper(BaseModel):
    """The paper behind the model or attack."""

    model_config = _Strict

    title: str = ""
    url: str | None = None
    venue: str | None = None
    authors: str | None = None


class External(BaseModel):
    """Where an imported reference entry came from (not measured by robust-ens)."""

    model_config = _Strict

    source: str
    path: str
    fields: dict[str, Any] = Field(default_factory=dict)


class Entry(BaseModel):
    """One leaderboard entry of schema :data:`SCHEMA_VERSION`.

    ``kind`` is ``defense`` (a model ranked by its worst case), ``attack`` (an attack ranked by
    the success it transfers) or ``reference`` (imported from RobustBench; not measured here).
    """

    model_config = _StrictNS

    schema_version: Literal["2"]
    kind: Literal["defense", "attack", "reference"]
    name: str = Field(pattern=r"^[A-Za-z0-9._+-]+$")
    model: ModelInfo2
    protocol: Protocol2
    results: Results2
    cost: Cost2 | None = None
    provenance: Provenance | None = None
    paper: Paper | None = None
    results_sha256: str | None = Field(default=None, pattern=_SHA)
    external: External | None = None

    @model_validator(mode="after")
    def _cells_agree(self) -> Entry:
        r, p = self.results, self.protocol
        if r.cells:
            cell_eps = sorted({c.eps for c in r.cells})
            if sorted(set(p.eps)) != cell_eps:
                raise ValueError(f"protocol.eps: {sorted(p.eps)} does not match the eps of results.cells {cell_eps}")
            for i, c in enumerate(r.cells):
                if c.n != p.n_examples:
                    raise ValueError(f"results.cells[{i}].n: {c.n} but protocol.n_examples is {p.n_examples}")
            ids = [c.id for c in r.cells]
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"results.cells: cell {dup[0]} appears twice")
        if self.kind != "reference":
            if self.kind == "defense" and r.clean.n != p.n_examples:
                raise ValueError(f"results.clean.n: {r.clean.n} but protocol.n_examples is {p.n_examples}")
            unknown = (["results.clean.k"] if r.clean.k is None else []) + [
                f"results.cells[{i}].k" for i, c in enumerate(r.cells) if c.k is None] + [
                f"results.worst_case[{i}].k" for i, w in enumerate(r.worst_case) if w.k is None]
            if unknown:
                raise ValueError(f"{unknown[0]}: required for a measured entry (only imported references may omit it)")
        worst_eps = [w.eps for w in r.worst_case]
        if len(set(worst_eps)) != len(worst_eps):
            raise ValueError("results.worst_case: an eps appears twice")
        if r.cells and sorted(worst_eps) != sorted({c.eps for c in r.cells}):
            raise ValueError(f"results.worst_case: eps {sorted(worst_eps)} do not match the cells' eps "
                             f"{sorted({c.eps for c in r.cells})}")
        for i, w in enumerate(r.worst_case):
            at = [c.robust_acc for c in r.cells if c.eps == w.eps]
            if not at:
                continue
            lo = min(at)
            if abs(w.min_cell_acc - lo) > 1e-12:
                raise ValueError(f"results.worst_case[{i}].min_cell_acc: {w.min_cell_acc} at eps {eps_key(w.eps)} "
                                 f"is not the minimum of its cells ({lo})")
            if w.robust_acc > lo + 1e-12:
                raise ValueError(f"results.worst_case[{i}].robust_acc: {w.robust_acc} at eps {eps_key(w.eps)} is "
                                 f"above the minimum of its cells ({lo}); a worst case cannot beat a cell")
            if self.kind == "defense" and w.robust_acc > r.clean.acc + 1e-12:
                raise ValueError(f"results.worst_case[{i}].robust_acc: {w.robust_acc} is above the clean accuracy")
        return self

    # ---- views used by tables, plots and regress
    def worst(self, eps: float) -> WorstCase | None:
        """The worst case at ``eps`` (``None`` when not measured)."""
        return next((w for w in self.results.worst_case if w.eps == eps), None)

    def numbers(self) -> dict[str, tuple[float, int]]:
        """Every recorded number as ``{label: (value, n)}``: clean, each cell, each worst case, each corruption."""
        r = self.results
        out: dict[str, tuple[float, int]] = {"clean": (r.clean.acc, r.clean.n)}
        for c in r.cells:
            out[c.id] = (c.robust_acc, c.n)
        for w in r.worst_case:
            out[f"worst@{eps_key(w.eps)}"] = (w.robust_acc, w.n)
        for cc in r.corruptions:
            out[f"{cc.corruption}@{cc.severity}"] = (cc.acc, cc.n)
        return out


AnyEntry = Entry | EntryV1
"""An entry of either schema version."""


def json_schema(version: str = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of an entry of ``version`` (``"2"`` or ``"1.0"``), versioned by ``$id``."""
    if version not in SCHEMA_VERSIONS:
        raise RobustEnsError(f"schema version must be one of {', '.join(SCHEMA_VERSIONS)}, got {version!r}")
    model = Entry if version == "2" else EntryV1
    schema = model.model_json_schema()
    schema["$id"] = f"https://robust-ens/schema/entry-{version.split('.')[0]}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _loc(loc: Sequence[Any]) -> str:
    """``("results", "cells", 1, "k")`` -> ``results.cells[1].k``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems(err: ValidationError) -> str:
    """A pydantic error as one line: ``field.path: problem`` for each problem, joined by ``; ``."""
    parts = []
    for e in err.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        where = _loc(e["loc"])
        if where and re.match(r"^[A-Za-z_][\w\[\]]*: ", msg) and not msg.startswith(("results.", "protocol.")):
            parts.append(f"{where}.{msg}")  # a model check naming a field of this object
        else:
            parts.append(f"{where}: {msg}" if where and not msg.startswith(where) else msg)
    return "; ".join(parts)


def read_json(path: str | Path, what: str = "leaderboard entry") -> Any:
    """A JSON file's content, or one line naming the file when it is missing, not UTF-8 or not JSON."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RobustEnsError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise RobustEnsError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RobustEnsError(f"{what} {path} is not UTF-8 text (byte {err.start}); it is corrupt") from None
    try:
        return json.loads(text, parse_constant=lambda c: float(c))
    except json.JSONDecodeError as err:
        raise RobustEnsError(f"{what} {path} is not valid JSON: {err}") from None
    except RecursionError:
        raise RobustEnsError(f"{what} {path} is nested too deeply to be an entry") from None


def validate(entry: str | Path | dict[str, Any] | AnyEntry) -> AnyEntry:
    """Validate a JSON file or dict against its schema version; raise one line naming file and field.

    A payload with ``schema_version: "2"`` is checked as :class:`Entry`; ``"1.0"`` (or none) as
    :class:`EntryV1`.

    Raises:
        RobustEnsError: ``<file>: <field>: <problem>`` for every problem found.
    """
    if isinstance(entry, Entry | EntryV1):
        return entry
    if isinstance(entry, str | Path):
        payload, where = read_json(entry), str(entry)
    else:
        payload, where = entry, "entry"
    if not isinstance(payload, dict):
        raise RobustEnsError(f"{where}: an entry is a JSON object, got {type(payload).__name__}")
    version = payload.get("schema_version", "1.0")
    if version not in SCHEMA_VERSIONS:
        raise RobustEnsError(f"{where}: schema_version: {version!r} is not one of {', '.join(map(repr, SCHEMA_VERSIONS))}")
    model: type[BaseModel] = Entry if version == "2" else EntryV1
    try:
        return model.model_validate(payload)  # type: ignore[return-value]
    except ValidationError as err:
        raise RobustEnsError(f"{where} does not match the leaderboard schema {version}: {problems(err)}") from None



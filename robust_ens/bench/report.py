"""What a run's result becomes: leaderboard entries and the table printed at the end of a run.

Both read the typed :class:`~robust_ens.bench.evaluate.RunResult` the runner returns (a
``summary.json`` read back is turned into one with :meth:`~.evaluate.RunResult.from_summary`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from robust_ens.bench.aggregate import wilson
from robust_ens.bench.evaluate import AttackCell, CorruptionCell, Rate, RunResult, TargetResult
from robust_ens.canonical import sha256_json
from robust_ens.leaderboard import (
    Cell,
    Cost2,
    Entry,
    ModelInfo2,
    Paper,
    Protocol2,
    Results2,
    TargetRecord,
    WorstCase,
    provenance,
)
from robust_ens.leaderboard import CorruptionCell as EntryCorruptionCell
from robust_ens.leaderboard import Rate as EntryRate
from robust_ens.precision import REFERENCE_PRECISION


def entry_name(name: str) -> str:
    """A target name made safe for an entry's ``name`` (``zoo:a,b`` -> ``zoo_a_b``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "model"


def _protocol(r: RunResult) -> Protocol2:
    return Protocol2(
        suite=r.suite, suite_version=int(r.version), tier=str(r.tier), task=str(r.task), dataset=r.dataset,
        split=str(r.split or "test"), n_examples=int(r.n), seed=int(r.seed), threat_model=r.norm,
        eps=[float(e) for e in r.eps] if r.task != "corruptions" else [],
        attacks=list(r.attacks), surrogates=list(r.surrogates), digest=r.digest,
    )


def _cost(r: RunResult) -> Cost2:
    c = r.cost
    return Cost2(seconds=float(c.seconds), device=str(c.device), forward_passes=float(c.forward),
                 backward_passes=float(c.backward), attack_seconds=float(c.attack_seconds),
                 eval_seconds=float(c.eval_seconds))


def _rate(r: Rate, per_class: list[float | None] | None = None) -> EntryRate:
    return EntryRate(acc=float(r.acc), k=int(r.k), n=int(r.n), ci95=[float(x) for x in r.ci95],
                     per_class=list(per_class or []))


def _manifest(run_dir: str | Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    path = Path(run_dir) / "manifest.json"
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return got.get("cells", {}) if isinstance(got, dict) else {}


def results_sha256(manifest_cells: dict[str, Any], targets: Sequence[str]) -> str | None:
    """sha256 of the per-example result files a number was aggregated from.

    It is the sha256 of the canonical JSON ``{target: {cell: sha256 of results/<target>/<cell>.safetensors}}``
    of the run folder's manifest, so it changes when any example's correctness changes.
    """
    got = {t: manifest_cells[t] for t in targets if t in manifest_cells}
    return sha256_json(got) if got and len(got) == len(targets) else None


def _transfer_cells(row: TargetResult) -> list[Cell]:
    return [Cell(attack=str(c.cell.attack), surrogate=str(c.cell.surrogate), eps=float(c.cell.eps),
                 robust_acc=float(c.rate.acc), k=int(c.rate.k), n=int(c.rate.n), ci95=[float(x) for x in c.rate.ci95])
            for c in row.cells if isinstance(c.cell, AttackCell)]


def _corruption_cells(row: TargetResult) -> list[EntryCorruptionCell]:
    return [EntryCorruptionCell(corruption=str(c.cell.corruption), severity=int(c.cell.severity), acc=float(c.rate.acc),
                                k=int(c.rate.k), n=int(c.rate.n), ci95=[float(x) for x in c.rate.ci95])
            for c in row.cells if isinstance(c.cell, CorruptionCell)]


def _worst(row: TargetResult, cells: list[Cell]) -> list[WorstCase]:
    out = []
    worst = row.worst_case or {}
    for e in sorted({c.eps for c in cells}):
        w = worst[f"{e:.6g}"]
        out.append(WorstCase(eps=e, robust_acc=float(w.acc), k=int(w.k), n=int(w.n), ci95=[float(x) for x in w.ci95],
                             min_cell_acc=min(c.robust_acc for c in cells if c.eps == e),
                             per_class=list(row.per_class.get(f"{e:.6g}", []))))
    return out


def zoo_model_info(spec: str) -> tuple[str | None, str, Paper | None]:
    """``(defense, description, paper)`` of a ``zoo:NAME`` ensemble from its manifest, else ``(None, "", None)``."""
    from robust_ens.defenses import load_meta
    from robust_ens.models.zoo import ZOO_PREFIX, index

    e = index().get(spec[len(ZOO_PREFIX):]) if spec.startswith(ZOO_PREFIX) else None
    if not e or "defense" not in e:
        return None, "", None
    if e.get("protocol"):  # a protocol's own surrogate or target: plain members trained from its train table
        description = (f"robust-ens zoo: {e['protocol']} {e['tier']}-tier {e['role']}, {e['members']} x {e['arch']}, "
                       f"plain training, train_n={e['recipe'].get('train_n')}, {e['epochs']} epochs, fp16 weights")
        title = load_meta(e["defense"]).get("paper")
        return e["defense"], description, Paper(title=title) if title else None
    budget = f", {e['epochs']} defense epochs" if e.get("epochs") else ""
    start = f", from zoo:{e['init']}" if e.get("init") else ""
    description = (f"robust-ens zoo: {e['defense']} {e['tier']} tier, {e['members']} x {e['arch']}, "
                   f"train_n={e['recipe'].get('train_n')}{budget}{start}, fp16 weights")
    title = load_meta(e["defense"]).get("paper")
    return e["defense"], description, Paper(title=title) if title else None


def to_entries(
    result: RunResult | Mapping[str, Any],
    command: str | None = None,
    *,
    run_dir: str | Path | None = None,
    targets: Sequence[Any] = (),
    paper: Paper | None = None,
) -> list[Entry]:
    """Schema-2 leaderboard entries of a run: one per target (defense suites) or per attack (attack suites).

    Args:
        result: What :func:`~robust_ens.bench.runner.run_suite` returned (or a ``summary.json`` read back).
        command: The command line for the provenance (default ``sys.argv``).
        run_dir: The run folder; its manifest gives each entry's ``results_sha256``.
        targets: The :class:`~robust_ens.bench.runner.TargetArg` the run was given; their spec and
            weights path are recorded so ``robust-ens regress`` can re-run the entry.
        paper: The paper, for every entry.

    Cells are per (attack, surrogate, eps) with ``k`` of ``n``; the worst case per eps is per
    example (an example counts only if it survives clean and every cell of that eps), so it is at
    or below the minimum cell, which is recorded beside it.
    """
    r = result if isinstance(result, RunResult) else RunResult.from_summary(result)
    prov = provenance(command)
    manifest = _manifest(run_dir)
    by_name = {(a.name or a.spec): a for a in targets}
    proto = _protocol(r)
    cost = _cost(r)
    if r.kind == "attack" and r.task == "transfer":
        return _attack_entries(r, proto, cost, prov, manifest, paper)
    return [_defense_entry(r, row, by_name.get(tname), proto, cost, prov, manifest, paper)
            for tname, row in r.targets.items()]


def _model_config(model: Mapping[str, Any], arg: Any) -> dict[str, Any]:
    """The entry's ``model.config``: member costs, and how a comma-separated target was joined.

    ``combine`` and ``precision`` are recorded only when they differ from the defaults
    (``logits``, :data:`~robust_ens.precision.REFERENCE_PRECISION`), so entries made with the
    defaults keep their bytes.
    """
    config: dict[str, Any] = {"costs": model["costs"]} if model.get("costs") else {}
    if arg is not None and "," in str(arg.spec):
        joined = (getattr(arg, "combine", "logits"), getattr(arg, "precision", REFERENCE_PRECISION))
        if joined != ("logits", REFERENCE_PRECISION):
            config.update(combine=joined[0], precision=joined[1])
    return config


FILTER_KEYS = ("filter/kept", "filter/of")


def _run_notes(rows: Sequence[TargetResult]) -> tuple[dict[str, float], dict[str, Any]]:
    """What a run's target rows note about its examples and its success rule, for an entry.

    Returns:
        ``(metrics, config)``: ``filter/kept`` and ``filter/of`` as metrics (``/`` keeps them out of
        the tables' columns), and ``{"filter": {"kept", "of"}}`` and ``{"success": "all-images"}``
        for the model's config; both empty for a run without a filter and with the default rule.
    """
    metrics: dict[str, float] = {}
    config: dict[str, Any] = {}
    row = rows[0] if rows else None
    if row is not None and all(k in row.metrics for k in FILTER_KEYS):
        metrics = {k: float(row.metrics[k]) for k in FILTER_KEYS}  # type: ignore[arg-type]
        config["filter"] = {"rule": "all-targets-correct", "kept": int(metrics["filter/kept"]),
                            "of": int(metrics["filter/of"])}
    if row is not None and row.metrics.get("success/all_images"):
        config["success"] = "all-images"  # TransferAttack's ASR: 1 - accuracy on every example
    return metrics, config


def _defense_entry(r: RunResult, row: TargetResult, arg: Any, proto: Protocol2, cost: Cost2, prov: Any,
                   manifest: dict[str, Any], paper: Paper | None) -> Entry:
    """One target's entry."""
    tname, model = row.name, row.model
    weights = getattr(arg, "weights", None) if arg is not None else None
    # the weights by file name and sha256: an absolute path names the submitter's machine, not the model
    record = TargetRecord(spec=str(model.get("spec", tname)), weights=Path(weights).name if weights else None,
                          weights_sha256=(list(model["sha256"]) or [None])[0] if weights else None)
    clean = _rate(row.clean, row.per_class.get("clean"))
    metrics: dict[str, float] = {}
    if r.task == "corruptions":
        cells: list[Cell] = []
        corr = _corruption_cells(row)
        worst: list[WorstCase] = []
        if row.metrics.get("mean_corruption_accuracy") is not None:
            metrics["mean_corruption_accuracy"] = float(row.metrics["mean_corruption_accuracy"])  # type: ignore[arg-type]
    else:
        cells, corr = _transfer_cells(row), []
        worst = _worst(row, cells)
    notes, _ = _run_notes([row])
    metrics.update(notes)
    defense, description, zoo_paper = zoo_model_info(record.spec)
    return Entry(
        schema_version="2", kind="defense", name=entry_name(tname),
        model=ModelInfo2(name=tname, architecture=str(model["architecture"]), n_members=int(model["n_members"]),
                         parameters=int(model["parameters"]), checkpoint_sha256=list(model["sha256"]),
                         defense=defense, description=description,
                         target=record, config=_model_config(model, arg)),
        protocol=proto,
        results=Results2(clean=clean, cells=cells, worst_case=worst, corruptions=corr, metrics=metrics,
                         flags=list(row.flags), sanity=row.sanity.to_dict() if row.sanity is not None else {}),
        cost=cost, provenance=prov, paper=paper or zoo_paper, results_sha256=results_sha256(manifest, [tname]),
    )


def _attack_entries(r: RunResult, proto: Protocol2, cost: Cost2, prov: Any, manifest: dict[str, Any],
                    paper: Paper | None) -> list[Entry]:
    """One entry per attack of an attack suite: a cell per (surrogate, eps, target)."""
    view = r.attack_view or {}
    tnames = list(r.targets)
    entries = []
    for attack in r.attacks:
        cells: list[Cell] = []
        metrics: dict[str, float] = {}
        surs = list(dict.fromkeys(str(c.surrogate) for c in r.cells if isinstance(c, AttackCell) and c.attack == attack))
        surs = surs or list(proto.surrogates)
        for tname in tnames:
            for c in r.targets[tname].cells:
                cell = c.cell
                if not isinstance(cell, AttackCell) or cell.attack != attack:
                    continue
                v = view.get(attack, {}).get(f"{float(cell.eps):.6g}")
                per = v.per_target.get(tname) if v is not None else None
                succ = per.success if per is not None and len(surs) == 1 else None
                cells.append(Cell(attack=attack, surrogate=str(cell.surrogate), eps=float(cell.eps), target=tname,
                                  robust_acc=float(c.rate.acc), k=int(c.rate.k), n=int(c.rate.n),
                                  ci95=[float(x) for x in c.rate.ci95], success_rate=succ))
        for key, v in view.get(attack, {}).items():
            metrics[f"mean_success@{key}"] = float(v.mean)
            metrics[f"min_success@{key}"] = float(v.min)
        worst = []
        for e in sorted({c.eps for c in cells}):
            lo = min((c for c in cells if c.eps == e), key=lambda c: c.robust_acc)
            worst.append(WorstCase(eps=e, robust_acc=lo.robust_acc, k=lo.k, n=lo.n, ci95=lo.ci95,
                                   min_cell_acc=lo.robust_acc))
        notes, config = _run_notes([r.targets[t] for t in tnames])
        metrics.update(notes)
        k = sum(int(r.targets[t].clean.k) for t in tnames)
        n = sum(int(r.targets[t].clean.n) for t in tnames)
        entries.append(Entry(
            schema_version="2", kind="attack", name=entry_name(attack),
            model=ModelInfo2(name=attack, architecture="attack", n_members=1,
                             description=f"attack {attack} from surrogates {', '.join(surs)}",
                             config={"targets": {t: r.targets[t].model for t in tnames}, **config}),
            protocol=proto.model_copy(update={"attacks": [attack], "surrogates": surs}),
            results=Results2(clean=EntryRate(acc=k / n, k=k, n=n, ci95=list(wilson(k, n))), cells=cells,
                             worst_case=worst, metrics=metrics,
                             flags=sorted({f for t in tnames for f in r.targets[t].flags})),
            cost=cost, provenance=prov, paper=paper, results_sha256=results_sha256(manifest, tnames),
        ))
    return entries


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def summary_table(result: RunResult | Mapping[str, Any]) -> str:
    """The table printed at the end of ``robust-ens bench run`` (tabulate, GitHub style)."""
    r = result if isinstance(result, RunResult) else RunResult.from_summary(result)
    if r.kind == "attack" and r.attack_view is not None:
        rows = []
        for attack, per_eps in r.attack_view.items():
            for eps, v in per_eps.items():
                rows.append([attack, eps, *(_pct(s.success) for s in v.per_target.values()), _pct(v.mean), _pct(v.min)])
        names = list(next(iter(next(iter(r.attack_view.values())).values())).per_target)
        return tabulate(rows, headers=["attack", "eps", *names, "mean", "min"], tablefmt="github")
    rows = []
    eps_cols = sorted({e for row in r.targets.values() for e in (row.worst_case or {})}, key=float)
    corruption = any("mean_corruption_accuracy" in row.metrics for row in r.targets.values())
    for tname, row in r.targets.items():
        ci = row.clean.ci95
        worst = row.worst_case or {}
        cells = [f"{_pct(worst[e].acc)} [{_pct(worst[e].ci95[0])}, {_pct(worst[e].ci95[1])}]" for e in eps_cols]
        extra = [_pct(row.metrics["mean_corruption_accuracy"])] if "mean_corruption_accuracy" in row.metrics else []
        rows.append([tname, f"{_pct(row.clean.acc)} [{_pct(ci[0])}, {_pct(ci[1])}]", *cells, *extra,
                     "; ".join(f.split(":")[0] for f in row.flags) or "-"])
    headers = ["target", "clean % [95% CI]", *(f"worst eps {e} %" for e in eps_cols),
               *(["mean corruption acc"] if corruption else []), "flags"]
    return tabulate(rows, headers=headers, tablefmt="github")

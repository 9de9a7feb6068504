"""What a run's summary becomes: leaderboard entries and the table printed at the end of a run."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from robust_ens.canonical import sha256_json
from robust_ens.leaderboard import (
    Cell,
    CorruptionCell,
    Cost2,
    Entry,
    ModelInfo2,
    Paper,
    Protocol2,
    Rate,
    Results2,
    TargetRecord,
    WorstCase,
    eps_key,
    provenance,
)


def entry_name(name: str) -> str:
    """A target name made safe for an entry's ``name`` (``zoo:a,b`` -> ``zoo_a_b``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "model"


def _protocol(summary: dict[str, Any]) -> Protocol2:
    return Protocol2(
        suite=summary["suite"], suite_version=int(summary["version"]), tier=str(summary["tier"]),
        task=str(summary["task"]), dataset=summary["dataset"], split=str(summary.get("split", "test")),
        n_examples=int(summary["n"]), seed=int(summary["seed"]), threat_model=summary["norm"],
        eps=[float(e) for e in summary.get("eps", [])] if summary["task"] != "corruptions" else [],
        attacks=list(summary.get("attacks", [])), surrogates=list(summary.get("surrogates", [])),
        digest=summary.get("digest"),
    )


def _cost(summary: dict[str, Any]) -> Cost2:
    c = summary.get("cost", {})
    return Cost2(seconds=float(c.get("seconds", 0.0)), device=str(c.get("device", "cpu")),
                 forward_passes=float(c.get("forward", 0)), backward_passes=float(c.get("backward", 0)),
                 attack_seconds=float(c.get("attack_seconds", 0.0)), eval_seconds=float(c.get("eval_seconds", 0.0)))


def _rate(r: dict[str, Any], per_class: list[float | None] | None = None) -> Rate:
    return Rate(acc=float(r["acc"]), k=int(r["k"]), n=int(r["n"]), ci95=[float(x) for x in r["ci95"]],
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


def _transfer_cells(row: dict[str, Any]) -> list[Cell]:
    return [Cell(attack=str(c["attack"]), surrogate=str(c["surrogate"]), eps=float(c["eps"]), robust_acc=float(c["acc"]),
                 k=int(c["k"]), n=int(c["n"]), ci95=[float(x) for x in c["ci95"]]) for c in row["cells"]]


def _worst(row: dict[str, Any], cells: list[Cell]) -> list[WorstCase]:
    out = []
    for e in sorted({c.eps for c in cells}):
        w = row["worst_case"][eps_key(e)]
        out.append(WorstCase(eps=e, robust_acc=float(w["acc"]), k=int(w["k"]), n=int(w["n"]),
                             ci95=[float(x) for x in w["ci95"]],
                             min_cell_acc=min(c.robust_acc for c in cells if c.eps == e),
                             per_class=list(row.get("per_class", {}).get(eps_key(e), []))))
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
    summary: dict[str, Any],
    command: str | None = None,
    *,
    run_dir: str | Path | None = None,
    targets: Sequence[Any] = (),
    paper: Paper | None = None,
) -> list[Entry]:
    """Schema-2 leaderboard entries of a run: one per target (defense suites) or per attack (attack suites).

    Args:
        summary: What :func:`~robust_ens.bench.runner.run_suite` returned.
        command: The command line for the provenance (default ``sys.argv``).
        run_dir: The run folder; its manifest gives each entry's ``results_sha256``.
        targets: The :class:`~robust_ens.bench.runner.TargetArg` the run was given; their spec and
            weights path are recorded so ``robust-ens regress`` can re-run the entry.
        paper: The paper, for every entry.

    Cells are per (attack, surrogate, eps) with ``k`` of ``n``; the worst case per eps is per
    example (an example counts only if it survives clean and every cell of that eps), so it is at
    or below the minimum cell, which is recorded beside it.
    """
    prov = provenance(command)
    manifest = _manifest(run_dir)
    by_name = {(a.name or a.spec): a for a in targets}
    proto = _protocol(summary)
    cost = _cost(summary)
    if summary.get("kind") == "attack" and summary.get("task") == "transfer":
        return _attack_entries(summary, proto, cost, prov, manifest, paper)
    entries: list[Entry] = []
    for tname, row in summary["targets"].items():
        model = row["model"]
        arg = by_name.get(tname)
        weights = getattr(arg, "weights", None) if arg is not None else None
        record = TargetRecord(spec=str(model.get("spec", tname)), weights=str(weights) if weights else None,
                              weights_sha256=(list(model["sha256"]) or [None])[0] if weights else None)
        clean = _rate(row["clean"], row.get("per_class", {}).get("clean"))
        metrics: dict[str, float] = {}
        if summary["task"] == "corruptions":
            cells: list[Cell] = []
            corr = [CorruptionCell(corruption=str(c["corruption"]), severity=int(c["severity"]), acc=float(c["acc"]),
                                   k=int(c["k"]), n=int(c["n"]), ci95=[float(x) for x in c["ci95"]])
                    for c in row["cells"]]
            worst: list[WorstCase] = []
            if row.get("mean_corruption_accuracy") is not None:
                metrics["mean_corruption_accuracy"] = float(row["mean_corruption_accuracy"])
        else:
            cells, corr = _transfer_cells(row), []
            worst = _worst(row, cells)
        defense, description, zoo_paper = zoo_model_info(record.spec)
        entries.append(Entry(
            schema_version="2", kind="defense", name=entry_name(tname),
            model=ModelInfo2(name=tname, architecture=str(model["architecture"]), n_members=int(model["n_members"]),
                             parameters=int(model["parameters"]), checkpoint_sha256=list(model["sha256"]),
                             defense=defense, description=description,
                             target=record, config={"costs": model["costs"]} if model.get("costs") else {}),
            protocol=proto,
            results=Results2(clean=clean, cells=cells, worst_case=worst, corruptions=corr, metrics=metrics,
                             flags=list(row.get("flags", [])), sanity=dict(row.get("sanity", {}))),
            cost=cost, provenance=prov, paper=paper or zoo_paper, results_sha256=results_sha256(manifest, [tname]),
        ))
    return entries


def _attack_entries(summary: dict[str, Any], proto: Protocol2, cost: Cost2, prov: Any, manifest: dict[str, Any],
                    paper: Paper | None) -> list[Entry]:
    """One entry per attack of an attack suite: a cell per (surrogate, eps, target)."""
    view = summary.get("attack_view", {})
    tnames = list(summary["targets"])
    entries = []
    for attack in summary.get("attacks", []):
        cells: list[Cell] = []
        metrics: dict[str, float] = {}
        surs = list(dict.fromkeys(str(c["surrogate"]) for c in summary.get("cells", []) if c["attack"] == attack))
        surs = surs or list(proto.surrogates)
        for tname in tnames:
            for c in summary["targets"][tname]["cells"]:
                if c["attack"] != attack:
                    continue
                v = view.get(attack, {}).get(eps_key(float(c["eps"])), {})
                succ = v.get("per_target", {}).get(tname, {}).get("success") if len(surs) == 1 else None
                cells.append(Cell(attack=attack, surrogate=str(c["surrogate"]), eps=float(c["eps"]), target=tname,
                                  robust_acc=float(c["acc"]), k=int(c["k"]), n=int(c["n"]),
                                  ci95=[float(x) for x in c["ci95"]], success_rate=succ))
        for e, v in view.get(attack, {}).items():
            metrics[f"mean_success@{e}"] = float(v["mean"])
            metrics[f"min_success@{e}"] = float(v["min"])
        worst = []
        for e in sorted({c.eps for c in cells}):
            lo = min((c for c in cells if c.eps == e), key=lambda c: c.robust_acc)
            worst.append(WorstCase(eps=e, robust_acc=lo.robust_acc, k=lo.k, n=lo.n, ci95=lo.ci95,
                                   min_cell_acc=lo.robust_acc))
        k = sum(int(summary["targets"][t]["clean"]["k"]) for t in tnames)
        n = sum(int(summary["targets"][t]["clean"]["n"]) for t in tnames)
        from robust_ens.bench.aggregate import wilson

        entries.append(Entry(
            schema_version="2", kind="attack", name=entry_name(attack),
            model=ModelInfo2(name=attack, architecture="attack", n_members=1,
                             description=f"attack {attack} from surrogates {', '.join(surs)}",
                             config={"targets": {t: summary["targets"][t]["model"] for t in tnames}}),
            protocol=proto.model_copy(update={"attacks": [attack], "surrogates": surs}),
            results=Results2(clean=Rate(acc=k / n, k=k, n=n, ci95=list(wilson(k, n))), cells=cells, worst_case=worst,
                             metrics=metrics,
                             flags=sorted({f for t in tnames for f in summary["targets"][t].get("flags", [])})),
            cost=cost, provenance=prov, paper=paper, results_sha256=results_sha256(manifest, tnames),
        ))
    return entries


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def summary_table(summary: dict[str, Any]) -> str:
    """The table printed at the end of ``robust-ens bench run`` (tabulate, GitHub style)."""
    if summary.get("kind") == "attack" and "attack_view" in summary:
        rows = []
        for attack, per_eps in summary["attack_view"].items():
            for eps, v in per_eps.items():
                rows.append([attack, eps, *(_pct(r["success"]) for r in v["per_target"].values()),
                             _pct(v["mean"]), _pct(v["min"])])
        names = list(next(iter(next(iter(summary["attack_view"].values())).values()))["per_target"])
        return tabulate(rows, headers=["attack", "eps", *names, "mean", "min"], tablefmt="github")
    rows = []
    eps_cols = sorted({e for row in summary["targets"].values() for e in row.get("worst_case", {})}, key=float)
    for tname, row in summary["targets"].items():
        ci = row["clean"]["ci95"]
        cells = [f"{_pct(row['worst_case'][e]['acc'])} [{_pct(row['worst_case'][e]['ci95'][0])}, "
                 f"{_pct(row['worst_case'][e]['ci95'][1])}]" for e in eps_cols]
        extra = [_pct(row["mean_corruption_accuracy"])] if "mean_corruption_accuracy" in row else []
        rows.append([tname, f"{_pct(row['clean']['acc'])} [{_pct(ci[0])}, {_pct(ci[1])}]", *cells, *extra,
                     "; ".join(f.split(":")[0] for f in row.get("flags", [])) or "-"])
    extra_h = ["mean corruption acc"] if any("mean_corruption_accuracy" in r for r in summary["targets"].values()) else []
    headers = ["target", "clean % [95% CI]", *(f"worst eps {e} %" for e in eps_cols), *extra_h, "flags"]
    return tabulate(rows, headers=headers, tablefmt="github")

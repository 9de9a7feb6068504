"""What a run's summary becomes: leaderboard entries and the table printed at the end of a run."""

from __future__ import annotations

import re
from typing import Any

from tabulate import tabulate

from robust_ens.canonical import sha256_json
from robust_ens.leaderboard import Cost, Entry, ModelInfo, Protocol, Results, provenance


def entry_name(name: str) -> str:
    """A target name made safe for an entry's ``name`` (``zoo:a,b`` -> ``zoo_a_b``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "model"


def _protocol(summary: dict[str, Any]) -> Protocol:
    return Protocol(
        suite=summary["suite"], suite_version=str(summary["version"]), dataset=summary["dataset"],
        n_examples=int(summary["n"]), seed=int(summary["seed"]), threat_model=summary["norm"],
        eps=[float(e) for e in summary.get("eps", [])], attacks=list(summary.get("attacks", [])),
        surrogates=list(summary.get("surrogates", [])),
        settings={"tier": summary["tier"], "protocol_digest": summary["digest"], "task": summary["task"]},
    )


def _cost(summary: dict[str, Any]) -> Cost:
    c = summary.get("cost", {})
    return Cost(seconds=float(c.get("seconds", 0.0)), device=str(c.get("device", "cpu")),
                forward_passes=int(c.get("forward", 0)), backward_passes=int(c.get("backward", 0)))


def to_entries(summary: dict[str, Any], command: str | None = None) -> list[Entry]:
    """Leaderboard entries of a run: one per target (defense suites) or per attack (attack suites).

    Per-cell robust accuracy is keyed ``attack@surrogate`` then eps; ``worst_case`` is the per-example
    worst case (not the minimum of the cells' accuracies, which can be higher); ``metrics`` holds
    the 95% Wilson interval bounds, and the sanity flags go into ``protocol.settings``.
    """
    prov = provenance(command)
    entries: list[Entry] = []
    if summary.get("kind") == "attack" and "attack_view" in summary:
        for attack, per_eps in summary["attack_view"].items():
            robust: dict[str, dict[str, float]] = {}
            metrics: dict[str, float] = {}
            for eps, v in per_eps.items():
                for tname, r in v["per_target"].items():
                    robust.setdefault(entry_name(tname), {})[eps] = 1.0 - r["success"]
                metrics[f"mean_success@{eps}"] = v["mean"]
                metrics[f"min_success@{eps}"] = v["min"]
            cleans = [t["clean"]["acc"] for t in summary["targets"].values()]
            entries.append(Entry(
                name=entry_name(attack),
                model=ModelInfo(name=attack, architecture="attack", n_members=1,
                                parameters={"surrogates": summary.get("surrogates", [])}),
                protocol=_protocol(summary).model_copy(update={"attacks": [attack]}),
                results=Results(clean_accuracy=sum(cleans) / len(cleans), robust_accuracy=robust, metrics=metrics),
                cost=_cost(summary), provenance=prov,
            ))
        return entries
    for tname, row in summary["targets"].items():
        robust = {}
        for c in row["cells"]:
            key = f"{c['attack']}@{c['surrogate']}" if "attack" in c else str(c["corruption"])
            col = f"{c['eps']:.6g}" if "eps" in c else str(c["severity"])
            robust.setdefault(key, {})[col] = float(c["acc"])
        metrics = {"clean_ci95_low": row["clean"]["ci95"][0], "clean_ci95_high": row["clean"]["ci95"][1]}
        worst = {}
        for eps, w in row.get("worst_case", {}).items():
            worst[eps] = float(w["acc"])
            metrics[f"worst_case_ci95_low@{eps}"] = w["ci95"][0]
            metrics[f"worst_case_ci95_high@{eps}"] = w["ci95"][1]
        if row.get("mean_corruption_accuracy") is not None:
            metrics["mean_corruption_accuracy"] = float(row["mean_corruption_accuracy"])
        model = row["model"]
        proto = _protocol(summary)
        proto.settings.update({"flags": list(row.get("flags", [])), "results_sha256": sha256_json(row["cells"])})
        entries.append(Entry(
            name=entry_name(tname),
            model=ModelInfo(name=tname, architecture=str(model["architecture"]), n_members=int(model["n_members"]),
                            checkpoint_sha256=list(model["sha256"]), parameters={"count": int(model["parameters"])}),
            protocol=proto,
            results=Results(clean_accuracy=float(row["clean"]["acc"]), robust_accuracy=robust, worst_case=worst,
                            metrics=metrics),
            cost=_cost(summary), provenance=prov,
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

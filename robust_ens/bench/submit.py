"""Submit a model: evaluate it under a suite, write its schema-2 entry, re-render the leaderboard.

``robust-ens submit`` only parses arguments and calls :func:`submit` (``--suite all``:
:func:`submit_all`, one entry per suite that ranks defenses and takes the model's data, resumable).
Adversarial sets come from the machine-wide store (:func:`~.advsets.default_store`) unless
``store`` names another, so a submit after ``make demo`` crafts nothing the demo made.

Example:
    >>> from robust_ens.bench.submit import submit                      # doctest: +SKIP
    >>> res = submit("zoo:digits_small_cnn_s2", "digits-transfer", "smoke", "my-cnn", root="leaderboards")
    >>> res.path                                                       # doctest: +SKIP
    PosixPath('leaderboards/digits/digits-transfer/my-cnn.json')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robust_ens import leaderboard as lb
from robust_ens.errors import RobustEnsError

NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
#: The tasks a submitted model can be ranked under (depth models go through ``bench run``).
SUBMIT_TASKS = ("transfer", "whitebox", "corruptions")
ALL = "all"


@dataclass
class Submission:
    """What :func:`submit` did.

    Attributes:
        entry: The entry written.
        path: Its file.
        rendered: The generated files that changed.
        run_dir: The run folder with the per-example results.
        advsets_made: Adversarial sets this run made (the rest it read from the store).
        advsets_reused: Adversarial sets it read from the store (made earlier, or by a concurrent run).
    """

    entry: lb.Entry
    path: Path
    rendered: list[Path] = field(default_factory=list)
    run_dir: Path = Path()
    advsets_made: int = 0
    advsets_reused: int = 0


def recorded_path(path: str | Path) -> str:
    """How a weights path is recorded: relative to the working folder when it is inside it."""
    p = Path(path).expanduser().resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def add_entries(paths: Sequence[str | Path], root: str | Path | None = None, *, replace: bool = False) -> list[Path]:
    """Put entries a run wrote (``bench run --entries``) into the leaderboard tree and re-render.

    Every file is validated and checked against the tree before anything is written, so a bad
    file or a name already taken (without ``replace``) leaves the tree as it was.

    Args:
        paths: Entry files or folders of them (``runs/X/entries``).
        root: The leaderboard folder (see :func:`~robust_ens.leaderboard.leaderboard_root`); a
            missing one is a new leaderboard.
        replace: Overwrite entries of the same name in the same suite.

    Returns:
        The entry files written.

    Raises:
        RobustEnsError: one line naming the file, for a missing path, an invalid entry, two
            files with one name, or a name already in the tree.
    """
    base = lb.leaderboard_root(root)
    for p in paths:
        if not Path(p).exists():
            raise RobustEnsError(f"paths: {p} does not exist (give entry files or folders, e.g. runs/X/entries)")
    files = list(lb.iter_json(paths))
    if not files:
        raise RobustEnsError(f"paths: no entries (*.json) under {', '.join(map(str, paths))}")
    if base.exists() and not base.is_dir():
        raise RobustEnsError(f"--root {base} is a file, not a leaderboard folder")
    if not base.exists() and not base.parent.is_dir():
        raise RobustEnsError(f"--root {base}: its parent folder {base.parent} does not exist")
    entries = lb.validate_tree(files)
    seen: dict[tuple[str, str], Path] = {}
    olds: list[Path | None] = []
    for path, e in zip(files, entries, strict=True):
        key = (e.protocol.suite, e.name)
        if key in seen:
            raise RobustEnsError(f"{path}: {seen[key]} is another entry named {e.name!r} in {key[0]}")
        seen[key] = path
        old = existing_entry(base, *key) if base.is_dir() else None
        if old is not None and not replace:
            raise RobustEnsError(f"{path}: {old} already holds an entry named {e.name!r}; give --replace to overwrite it")
        olds.append(old)
    for e, old in zip(entries, olds, strict=True):
        if old is not None and old != lb.entry_path(e, base):
            old.unlink()
    written = lb.write_entries(entries, base)
    lb.render_all(base)
    return written


def existing_entry(root: Path, suite: str, name: str) -> Path | None:
    """The file of an entry named ``name`` in ``suite`` (any dataset), if there is one."""
    for path in sorted(root.glob(f"*/{suite}/*.json")):
        if path.stem == name:
            return path
        try:
            if lb.validate(path).name == name:
                return path
        except RobustEnsError:
            continue
    return None


def preflight(spec: str, weights: str | None, suite: str, device: torch.device) -> None:
    """Refuse, before any attack runs, a model that does not take the suite's images or classes."""
    from robust_ens import data
    from robust_ens.bench.examples import dataset_label
    from robust_ens.bench.protocol import get_suite
    from robust_ens.bench.targets import check_target, resolve_target
    from robust_ens.errors import RobustEnsError

    proto = get_suite(suite)
    xu, _ = data.load_uint8(proto.dataset, proto.split)
    try:
        t = resolve_target(spec, weights=weights, dataset=proto.dataset, device=device)
        check_target(t, xu[:2].float().div(255), data.info(proto.dataset).num_classes, dataset_label(proto.dataset))
    except RobustEnsError as err:
        if "--model" in str(err) or "--weights" in str(err):
            raise
        raise RobustEnsError(f"--model {spec}: {err}") from None


def submit(
    model: str,
    suite: str,
    tier: str,
    name: str,
    *,
    weights: str | None = None,
    paper: lb.Paper | None = None,
    defense: str | None = None,
    description: str = "",
    root: str | Path | None = None,
    replace: bool = False,
    out: str | Path | None = None,
    store: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Submission:
    """Evaluate ``model`` under one tier of ``suite`` and write its entry into ``<root>/<dataset>/<suite>/``.

    Args:
        model: An engine target spec (``zoo:NAME``, a checkpoint, ``pkg.module:factory``, ``timm:NAME``).
        suite: A registered suite that ranks defenses (models).
        tier: ``smoke``, ``small`` or ``full``.
        name: The entry's name (unique within the suite).
        weights: Weights for a factory or timm spec (safetensors or a tensors-only pickle; never
            unpickled as code); recorded with its sha256.
        paper: The paper (title, url, venue).
        defense: The defense's name, for the table.
        description: One line about the model.
        root: The leaderboard folder (see :func:`~robust_ens.leaderboard.leaderboard_root`).
        replace: Overwrite an entry of the same name.
        out: The run folder (default ``runs/submit-<suite>-<tier>-<name>``; resumable).
        store: Adversarial-set store folder (default: the machine-wide one, shared by every run).
        device: Torch device (default: cuda if available).
        progress: Progress bars.
        command: Command line for the provenance.

    Raises:
        RobustEnsError: one line, before any work, for a bad name, an existing entry, a suite
            that ranks attacks or a model that does not take the suite's data.
    """
    from robust_ens.bench.protocol import get_suite
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import TargetArg, run_suite

    if not NAME.match(name):
        raise RobustEnsError(f"--name {name!r}: use letters, digits and . _ + - only")
    proto = get_suite(suite)
    proto.tier(tier)
    if proto.kind != "defense" or proto.task not in SUBMIT_TASKS:
        raise RobustEnsError(f"--suite {suite}: it ranks {proto.kind}s ({proto.task}); submit evaluates a model "
                             "under a suite that ranks defenses")
    base = lb.leaderboard_root(root)
    old = existing_entry(base, suite, name)
    if old is not None and not replace:
        raise RobustEnsError(f"--name {name}: {old} already holds an entry of that name; give --replace to overwrite it")
    from robust_ens.device import resolve_device

    dev = resolve_device(device)
    if weights is not None and not Path(weights).expanduser().is_file():
        raise RobustEnsError(f"--weights {weights} does not exist")
    preflight(model, weights, suite, dev)
    run_dir = Path(out or f"runs/submit-{suite}-{tier}-{name}")
    arg = TargetArg(model, recorded_path(weights) if weights else None, name)
    summary = run_suite(proto, tier, [arg], run_dir, device=dev, store=store, progress=progress,
                        target_option="--model")
    (entry,) = to_entries(summary, command, run_dir=run_dir, targets=[arg], paper=paper)
    entry = entry.model_copy(update={"name": name, "model": entry.model.model_copy(
        update={"defense": defense, "description": description})})
    entry = lb.validate(entry.model_dump(mode="json"))  # type: ignore[assignment]
    if old is not None and old != lb.entry_path(entry, base):
        old.unlink()
    (path,) = lb.write_entries([entry], base)
    rendered = lb.render_all(base)
    return Submission(entry, path, rendered, run_dir, summary.cost.advsets_made, summary.cost.advsets_reused)


# --------------------------------------------------------------------------- every suite at once


@dataclass
class SubmitAll:
    """What :func:`submit_all` did.

    Attributes:
        submitted: The suites evaluated by this call, in order.
        finished: Suites an earlier, interrupted call had finished (skipped): ``{suite: entry file}``.
        skipped: Suites that do not take the model (or lack the tier): ``{suite: why}``.
        out: The folder of the run folders (one per suite) and ``submit-all.json``.
    """

    submitted: list[Submission] = field(default_factory=list)
    finished: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    out: Path = Path()


def fitting_suites(model: str, weights: str | None, tier: str, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The registered suites ``submit`` can rank ``model`` under at ``tier``, and why each other one cannot."""
    from robust_ens.bench.protocol import get_suite, list_suites

    fits: list[str] = []
    why: dict[str, str] = {}
    for name in list_suites():
        proto = get_suite(name)
        if proto.kind != "defense" or proto.task not in SUBMIT_TASKS:
            why[name] = f"ranks {proto.kind}s ({proto.task})"
        elif tier not in proto.tiers:
            why[name] = f"no {tier} tier"
        else:
            try:
                preflight(model, weights, name, device)
            except RobustEnsError as err:
                why[name] = str(err).split("; ")[0]  # the reason, not the long advice that follows it
                continue
            fits.append(name)
    return fits, why


def _progress_file(out: Path, ident: dict[str, Any]) -> dict[str, Any]:
    """``<out>/submit-all.json`` of an earlier call of the same submission, or a new one."""
    path = out / "submit-all.json"
    if not path.is_file():
        return {**ident, "suites": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise RobustEnsError(f"--out {out}: {path.name} is unreadable; remove it or pick a new --out") from None
    if not isinstance(state, dict) or {k: state.get(k) for k in ident} != ident or not isinstance(state.get("suites"), dict):
        raise RobustEnsError(f"--out {out} holds a submit --suite all of another model, tier or name; pick a new --out")
    return state


def submit_all(model: str, tier: str, name: str, *, weights: str | None = None, root: str | Path | None = None,
               replace: bool = False, out: str | Path | None = None, device: str | torch.device | None = None,
               **kwargs: Any) -> SubmitAll:
    """Evaluate ``model`` under every suite that ranks defenses and takes its data: one entry each.

    Resumable: ``<out>/submit-all.json`` records the suites started and finished; run the same
    call again after an interruption and finished suites are skipped, the suite in progress
    resumes from its run folder (``<out>/<suite>``).

    Args:
        model, tier, name, weights, root, replace, device: As for :func:`submit`.
        out: The folder of the run folders (default ``runs/submit-all-<tier>-<name>``).
        **kwargs: The rest of :func:`submit`'s options (``paper``, ``defense``, ``store``, ...).

    Raises:
        RobustEnsError: one line, before any work, when no suite takes the model (each suite and
            why), or an entry of that name exists in a suite (without ``replace``).
    """
    from robust_ens.atomic import atomic_write_json
    from robust_ens.device import resolve_device

    if not NAME.match(name):
        raise RobustEnsError(f"--name {name!r}: use letters, digits and . _ + - only")
    if weights is not None and not Path(weights).expanduser().is_file():
        raise RobustEnsError(f"--weights {weights} does not exist")
    dev = resolve_device(device)
    fits, why = fitting_suites(model, weights, tier, dev)
    if not fits:
        reasons = "; ".join(f"{s}: {w}" for s, w in why.items())
        raise RobustEnsError(f"--suite all: no suite takes --model {model} at tier {tier} ({reasons}); "
                             "check the model's input size and classes against 'robust-ens bench list'")
    base = lb.leaderboard_root(root)
    folder = Path(out or f"runs/submit-all-{tier}-{name}")
    ident = {"model": model, "weights": recorded_path(weights) if weights else None, "tier": tier, "name": name}
    state = _progress_file(folder, ident)
    res = SubmitAll(skipped={s: w for s, w in why.items()}, out=folder)
    todo = []
    for suite in fits:
        old = existing_entry(base, suite, name)
        rec = state["suites"].get(suite)
        if rec == "finished" and old is not None:
            res.finished[suite] = old
        elif old is not None and not replace and rec is None:
            raise RobustEnsError(f"--name {name}: {old} already holds an entry of that name; give --replace "
                                 "to overwrite it")
        else:
            todo.append(suite)
    for suite in todo:
        mine = state["suites"].get(suite) is not None  # started by an interrupted call: its entry is ours
        state["suites"][suite] = "started"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "submit-all.json", state)
        res.submitted.append(submit(model, suite, tier, name, weights=weights, root=root, replace=replace or mine,
                                    out=folder / suite, device=dev, **kwargs))
        state["suites"][suite] = "finished"
        atomic_write_json(folder / "submit-all.json", state)
    return res

"""Submit a model: evaluate it under a suite, write its schema-2 entry, re-render the leaderboard.

``robust-ens submit`` only parses arguments and calls :func:`submit`.

Example:
    >>> from robust_ens.bench.submit import submit                      # doctest: +SKIP
    >>> res = submit("zoo:digits_small_cnn_s2", "digits-transfer", "smoke", "my-cnn", root="leaderboards")
    >>> res.path                                                       # doctest: +SKIP
    PosixPath('leaderboards/digits/digits-transfer/my-cnn.json')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robust_ens import leaderboard as lb
from robust_ens.errors import RobustEnsError

NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass
class Submission:
    """What :func:`submit` did.

    Attributes:
        entry: The entry written.
        path: Its file.
        rendered: The generated files that changed.
        run_dir: The run folder with the per-example results.
    """

    entry: lb.Entry
    path: Path
    rendered: list[Path] = field(default_factory=list)
    run_dir: Path = Path()


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
        store: Adversarial-set store to share between runs.
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
    if proto.kind != "defense" or proto.task not in ("transfer", "whitebox", "corruptions"):
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
    return Submission(entry, path, rendered, run_dir)

"""Entry files: where they live, the one writer (:func:`write_entries`), reading and validating trees.

One JSON file per entry at ``<root>/<dataset>/<suite>/<Name>.json``, where ``<root>`` is
``--root``, else ``$ROBUST_ENS_LEADERBOARD``, else ``./leaderboards`` (:func:`leaderboard_root`);
the checkout's folder is never guessed from the package's location. A run's own entries (``bench
run --entries``, the pytest suites) sit flat in its ``entries/`` folder until ``robust-ens
leaderboard add`` files them into the tree. Every entry file, in either layout, is written by
:func:`write_entries`: validated first, then written atomically in the committed format
(:func:`dumps`).

Example:
    >>> import tempfile
    >>> from robust_ens.leaderboard import entry_path, validate, write_entries
    >>> e = validate({"name": "demo", "model": {"name": "demo", "architecture": "small_cnn"},
    ...               "protocol": {"suite": "quickstart", "suite_version": "1", "dataset": "digits",
    ...                            "n_examples": 10, "seed": 0}, "results": {"clean_accuracy": 0.9}})
    >>> path = entry_path(e, tempfile.mkdtemp())  # where write_entries puts a (schema-2) entry
    >>> path.parent.parent.name, path.parent.name, path.name
    ('digits', 'quickstart', 'demo.json')
    >>> write_entries([e], tempfile.mkdtemp())  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    robust_ens.errors.RobustEnsError: demo: schema 1 is read-only legacy

"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robust_ens.atomic import atomic_write_text
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.schema import SCHEMA_VERSIONS, AnyEntry, Entry, json_schema, validate

ENV_ROOT = "ROBUST_ENS_LEADERBOARD"
SCHEMA_DIRNAME = "schema"


def leaderboard_root(root: str | Path | None = None) -> Path:
    """The leaderboard folder: ``root``, else ``$ROBUST_ENS_LEADERBOARD``, else ``./leaderboards``.

    The checkout's folder is never guessed from the package's location, so an installed wheel
    reads and writes where the user is, not in site-packages.
    """
    if root is not None and str(root) != "":
        return Path(root)
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else Path.cwd() / "leaderboards"


def schema_files(root: str | Path) -> dict[Path, dict[str, Any]]:
    """The schema files a leaderboard folder carries: ``schema/entry-1.json`` and ``schema/entry-2.json``."""
    folder = Path(root) / SCHEMA_DIRNAME
    return {folder / f"entry-{v.split('.')[0]}.json": json_schema(v) for v in SCHEMA_VERSIONS}


#: Datasets whose entries live in another dataset's folder: TransferAttack's ImageNet-compatible images
#: (ImageNet classes, not ImageNet's validation images) sit with the other ImageNet leaderboards; the
#: entry's own ``protocol.dataset`` still names the data exactly.
DATASET_FOLDERS = {"imagenet-compatible": "imagenet"}


#: Tiers whose entries rank the same models as a suite's main tier, under the same names: they live in
#: a folder of their own (``<suite>/<tier>/<name>.json``), so a model's demo entry and its small entry
#: are two files.
SUBFOLDER_TIERS = frozenset({"demo"})


def entry_path(entry: AnyEntry, root: str | Path | None = None) -> Path:
    """``<root>/<dataset folder>/<suite>/<name>.json`` (the dataset's name, or its :data:`DATASET_FOLDERS` folder).

    Entries of a tier in :data:`SUBFOLDER_TIERS` go one folder down: ``<suite>/<tier>/<name>.json``.
    """
    folder = leaderboard_root(root) / DATASET_FOLDERS.get(entry.protocol.dataset, entry.protocol.dataset)
    folder = folder / entry.protocol.suite
    tier = subfolder_tier(entry)
    return (folder / tier if tier else folder) / f"{entry.name}.json"


def subfolder_tier(entry: AnyEntry) -> str:
    """The entry's tier when it is one of :data:`SUBFOLDER_TIERS` (its own folder and names), else ``""``."""
    tier = getattr(entry.protocol, "tier", None)
    return str(tier) if tier in SUBFOLDER_TIERS else ""


def dumps(entry: AnyEntry) -> str:
    """An entry's JSON text as committed (2-space indent, trailing newline)."""
    return json.dumps(entry.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


def write_entries(entries: Iterable[AnyEntry], root: str | Path | None = None, *, flat: bool = False) -> list[Path]:
    """Validate entries, then write each atomically in the committed format: the one writer of entry files.

    Every entry is validated (from its JSON form, so a ``model_copy`` that skipped validation is
    caught) before any file is written: a bad entry leaves the folder as it was.

    Args:
        entries: Schema-2 entries (schema 1 is read-only legacy: validated and read, never written).
        root: The leaderboard folder (see :func:`leaderboard_root`); with ``flat``, the folder itself.
        flat: Write ``<root>/<name>.json`` (a run's ``entries/`` folder) instead of the tree layout
            ``<root>/<dataset>/<suite>/<name>.json``.

    Returns:
        The files written, in the order of ``entries``.

    Raises:
        RobustEnsError: an entry that does not validate, a schema-1 entry, or two entries that would
            share a file.
    """
    entries = list(entries)
    for e in entries:
        if not isinstance(e, Entry):
            raise RobustEnsError(f"{e.name}: schema 1 is read-only legacy (validated and read, never written); "
                                 "write a schema-2 entry (robust-ens bench run or submit makes one)")
        validate(e.model_dump(mode="json"))
    paths = [leaderboard_root(root) / f"{e.name}.json" if flat else entry_path(e, root) for e in entries]
    seen: dict[Path, str] = {}
    for path, e in zip(paths, entries, strict=True):
        if path in seen:
            raise RobustEnsError(f"{path}: entries {seen[path]!r} and {e.name!r} would both be written to this file")
        seen[path] = e.name
    for path, e in zip(paths, entries, strict=True):
        atomic_write_text(path, dumps(e))
    return paths


def write(entry: AnyEntry, root: str | Path | None = None) -> Path:
    """Validate and write one entry into the tree at ``root`` (:func:`write_entries` of one); returns its path."""
    return write_entries([entry], root)[0]


def _is_entry_file(p: Path, base: Path) -> bool:
    try:
        rel = p.relative_to(base)
    except ValueError:
        rel = p
    return p.name != "schema.json" and rel.parts[:1] != (SCHEMA_DIRNAME,) and not p.name.startswith(".")


def entry_files(root: str | Path | None = None) -> list[Path]:
    """Every entry file under ``root`` (schema files and the generated folders excluded)."""
    base = leaderboard_root(root)
    return [p for p in sorted(base.rglob("*.json")) if _is_entry_file(p, base)]


def iter_json(paths: Iterable[str | Path]) -> Iterable[Path]:
    """JSON files named by ``paths`` (files, or every entry file under folders)."""
    for p in map(Path, paths):
        yield from ([q for q in sorted(p.rglob("*.json")) if _is_entry_file(q, p)] if p.is_dir() else [p])


def validate_tree(files: Sequence[Path]) -> list[AnyEntry]:
    """Validate files one by one, then across them: a name appears once within a suite (and a subfolder tier).

    Raises:
        RobustEnsError: naming the file and field of the first problem.
    """
    entries = [validate(p) for p in files]
    seen: dict[tuple[str, str, str, str], Path] = {}
    for path, e in zip(files, entries, strict=True):
        key = (e.protocol.dataset, e.protocol.suite, subfolder_tier(e), e.name)
        if key in seen:
            where = f" tier {key[2]}" if key[2] else ""
            raise RobustEnsError(f"{path}: name: {e.name!r} is already the name of {seen[key]} in suite "
                                 f"{e.protocol.suite}{where} ({e.protocol.dataset}); names are unique within a suite")
        seen[key] = path
    return entries


def load_entries(root: str | Path | None = None) -> list[AnyEntry]:
    """Every entry under ``root``, validated (names unique within each suite)."""
    return validate_tree(entry_files(root))

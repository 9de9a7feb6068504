"""Leaderboard entries: a typed, versioned JSON schema, the entry files, rendered tables, pages and plots.

One JSON file per entry at ``<root>/<dataset>/<suite>/<Name>.json``, where ``<root>`` is
``--root``, else ``$ROBUST_ENS_LEADERBOARD``, else ``./leaderboards`` (:func:`leaderboard_root`).
Numbers are JSON numbers (RobustBench stores strings; we refuse them). Tables, pages and plots are
rendered from entries (:func:`render_all`), never edited by hand.

Modules, each with one job (none imports this package back):

- :mod:`~robust_ens.leaderboard.schema`: the pydantic models of schema 2 (:class:`Entry`) and the
  legacy schema 1 (:class:`EntryV1`), :func:`validate`, :func:`json_schema`. Imports nothing of the
  project but :mod:`robust_ens.errors`.
- :mod:`~robust_ens.leaderboard.store`: where entry files live; :func:`write_entries`, the one
  writer of entry files; reading and validating trees.
- :mod:`~robust_ens.leaderboard.environment`: an entry's :func:`provenance`.
- :mod:`~robust_ens.leaderboard.tables`: the ranking and markdown/HTML tables (:func:`render`).
- :mod:`~robust_ens.leaderboard.pages`, :mod:`~robust_ens.leaderboard.plots`: the folder's
  ``README.md``, one sortable HTML page per suite, PNG plots.
- :mod:`~robust_ens.leaderboard.generated`: every generated file, :func:`render_all`, :func:`stale_files`.
- :mod:`~robust_ens.leaderboard.model_info`, :mod:`~robust_ens.leaderboard.robustbench`:
  RobustBench import and export (not imported here; import them by name).

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

from robust_ens.leaderboard.environment import git_commit, provenance
from robust_ens.leaderboard.generated import entries_by_suite, expected_files, render_all, stale_files
from robust_ens.leaderboard.schema import (
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    AnyEntry,
    Cell,
    CorruptionCell,
    Cost,
    Cost2,
    Entry,
    EntryV1,
    External,
    ModelInfo,
    ModelInfo2,
    Paper,
    Protocol,
    Protocol2,
    Provenance,
    Rate,
    Results,
    Results2,
    TargetRecord,
    WorstCase,
    eps_key,
    eps_label,
    json_schema,
    problems,
    read_json,
    validate,
)
from robust_ens.leaderboard.store import (
    ENV_ROOT,
    SCHEMA_DIRNAME,
    dumps,
    entry_files,
    entry_path,
    iter_json,
    leaderboard_root,
    load_entries,
    schema_files,
    validate_tree,
    write,
    write_entries,
)
from robust_ens.leaderboard.tables import GENERATED, headline_metrics, render, row_view, table_rows

__all__ = [
    "ENV_ROOT", "GENERATED", "SCHEMA_DIRNAME", "SCHEMA_VERSION", "SCHEMA_VERSIONS",
    "AnyEntry", "Cell", "CorruptionCell", "Cost", "Cost2", "Entry", "EntryV1", "External", "ModelInfo", "ModelInfo2",
    "Paper", "Protocol", "Protocol2", "Provenance", "Rate", "Results", "Results2", "TargetRecord", "WorstCase",
    "dumps", "entries_by_suite", "entry_files", "entry_path", "eps_key", "eps_label", "expected_files", "git_commit",
    "headline_metrics", "iter_json", "json_schema", "leaderboard_root", "load_entries", "problems", "provenance",
    "read_json", "render", "render_all", "row_view", "schema_files", "stale_files", "table_rows", "validate",
    "validate_tree", "write", "write_entries",
]

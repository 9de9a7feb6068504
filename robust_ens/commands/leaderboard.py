"""``robust-ens leaderboard``: validate entries, render tables/pages/plots, export the schema, RobustBench interop.

The leaderboard folder is ``--root``, else ``$ROBUST_ENS_LEADERBOARD``, else ``./leaderboards``.
``render`` writes only inside that folder; the repository README's Results block is rendered by the
repository's own script, ``python leaderboards/render_readme.py``.

Example:
    robust-ens leaderboard validate
    robust-ens leaderboard render --check
    robust-ens leaderboard export --format robustbench --out rb-model-info
    robust-ens leaderboard import-robustbench ../robustbench/model_info
    robust-ens leaderboard import-robustbench ../robustbench/model_info --strict   # CI: any unreadable file fails
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from robust_ens.atomic import atomic_write_text
from robust_ens.commands.common import check_output_file
from robust_ens.errors import RobustEnsError

if TYPE_CHECKING:
    from robust_ens.leaderboard.robustbench import ImportResult

log = logging.getLogger(__name__)
_ROOT_HELP = "leaderboard folder (default: $ROBUST_ENS_LEADERBOARD, else ./leaderboards)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``leaderboard`` subcommand."""
    p = sub.add_parser("leaderboard", help="validate leaderboard entries, render tables, export the schema")
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = action.add_parser("validate", help="validate entry files (or every entry under folders)")
    v.add_argument("paths", nargs="*", default=None, help="files or folders (default: the leaderboard folder)")
    v.add_argument("--root", default=None, help=_ROOT_HELP)
    a = action.add_parser("add", help="put entries a run wrote (bench run --entries) into the leaderboard and re-render")
    a.add_argument("paths", nargs="+", help="entry files or folders (e.g. runs/X/entries)")
    a.add_argument("--root", default=None, help=_ROOT_HELP)
    a.add_argument("--replace", action="store_true", help="overwrite entries of the same name in the same suite")
    r = action.add_parser("render", help="write the leaderboard folder's README.md, a sortable page per suite, "
                                         "PNG plots and the schema files (nothing outside the folder)")
    r.add_argument("--root", default=None, help=_ROOT_HELP)
    r.add_argument("--check", action="store_true", help="write nothing; exit 1 when a rendered file is stale")
    s = action.add_parser("schema", help="write the versioned JSON Schema of an entry")
    s.add_argument("--out", default=None, help="file to write (default: print)")
    s.add_argument("--version", default=None, choices=["2", "1.0"], help="schema version: 2 (default) or 1.0")
    x = action.add_parser("export", help="write entries in another leaderboard's format")
    x.add_argument("--format", required=True, choices=["robustbench"], help="robustbench: its model_info layout")
    x.add_argument("--out", required=True, help="folder to write <dataset>/<threat_model>/<Name>.json into")
    x.add_argument("--root", default=None, help=_ROOT_HELP)
    i = action.add_parser("import-robustbench", help="import RobustBench model_info files as reference entries")
    i.add_argument("path", help="RobustBench's model_info folder (or one JSON file)")
    i.add_argument("--root", default=None, help=_ROOT_HELP)
    i.add_argument("--strict", action="store_true",
                   help="fail (and write nothing) when any file cannot be imported; by default such files "
                        "are skipped with their reason and the rest is imported")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``leaderboard validate|add|render|schema|export|import-robustbench``; returns the exit status."""
    from robust_ens import leaderboard as lb

    if getattr(args, "root", None) is not None and args.action in ("validate", "export") and not Path(args.root).is_dir():
        raise RobustEnsError(f"--root {args.root} is not a folder of leaderboard entries")
    if args.action == "validate":
        for p in args.paths or []:
            if not Path(p).exists():
                raise RobustEnsError(f"paths: {p} does not exist (give entry files or folders)")
        root = lb.leaderboard_root(args.root)
        files = list(lb.iter_json(args.paths or [root]))
        if not files:
            raise RobustEnsError(f"paths: no leaderboard entries (*.json) under {', '.join(args.paths or [str(root)])}")
        entries = lb.validate_tree(files)
        versions = sorted({e.schema_version for e in entries})
        print(f"{len(files)} entries valid (schema {', '.join(versions)})")
    elif args.action == "add":
        from robust_ens.bench.submit import add_entries

        written = add_entries(args.paths, args.root, replace=args.replace)
        for path in written:
            print(f"added {path}")
        print(f"{len(written)} entries added under {lb.leaderboard_root(args.root)}; commit them with git add")
    elif args.action == "render":
        root = lb.leaderboard_root(args.root)
        if not root.is_dir():
            raise RobustEnsError(f"--root {root} is not a folder of leaderboard entries")
        if args.check:
            stale = lb.stale_files(root)
            for line in stale:
                print(f"stale: {line}")
            if stale:
                print(f"{len(stale)} rendered files are stale; run: robust-ens leaderboard render --root {root}")
                return 1
            print(f"rendered files under {root} are current")
            return 0
        try:
            written = lb.render_all(root)
        except PermissionError as err:
            raise RobustEnsError(f"--root {root}: cannot write {err.filename} (permission denied)") from err
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(f"rendered files under {root} were already current")
    elif args.action == "export":
        from robust_ens.commands.common import check_output_folder
        from robust_ens.leaderboard.robustbench import export_robustbench

        root = lb.leaderboard_root(args.root)
        if not root.is_dir():
            raise RobustEnsError(f"--root {root} is not a folder of leaderboard entries")
        check_output_folder(args.out, "--out")
        written, skipped = export_robustbench(lb.load_entries(root), args.out)
        for path in written:
            print(f"wrote {path}")
        for line in skipped:
            print(f"skipped {line}")
    elif args.action == "import-robustbench":
        from robust_ens.commands.common import check_output_folder
        from robust_ens.leaderboard.robustbench import import_robustbench

        root = lb.leaderboard_root(args.root)
        check_output_folder(root, "--root")
        result = import_robustbench(args.path, root, strict=args.strict, suite_version=_suite_version)
        for note in result.warnings:
            log.warning(note)
        for line in import_summary(result):
            print(line)
        if result.skipped and args.strict:
            raise RobustEnsError(f"--strict: {len(result.skipped)} of {len(result.files)} RobustBench model_info "
                                 f"files cannot be imported (listed above); nothing was imported")
        if result.written:
            for path in lb.render_all(root):
                print(f"wrote {path}")
    else:
        text = json.dumps(lb.json_schema(args.version or lb.SCHEMA_VERSION), indent=2) + "\n"
        if args.out:
            out = check_output_file(args.out)
            atomic_write_text(out, text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
    return 0


def _suite_version(suite: str) -> int:
    """The version of a registered suite (1 for a name that is none: ``robustbench-<dataset>-<threat>``)."""
    from robust_ens.bench.protocol import get_suite

    try:
        return get_suite(suite).version
    except RobustEnsError:
        return 1


def import_summary(result: ImportResult) -> list[str]:
    """The lines ``import-robustbench`` prints: what was imported, and each skipped file grouped by reason."""
    n = len(result.files)
    lines = []
    if result.strict and result.skipped:
        lines.append(f"imported 0 of {n} RobustBench model_info files (--strict: a file cannot be imported)")
    else:
        lines.append(f"imported {len(result.imported)} of {n} RobustBench model_info files into {result.root}")
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} files that cannot be imported:")
        for kind, items in result.skipped_by_kind().items():
            lines.append(f"  {kind}: {len(items)}")
            lines.extend(f"    {s.reason}" for s in items)
    return lines

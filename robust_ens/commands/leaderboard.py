"""``robust-ens leaderboard``: validate entries, render tables, export the JSON Schema."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="validate leaderboard entries, render tables, export the schema")
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = action.add_parser("validate", help="validate entry files (or every entry under folders)")
    v.add_argument("paths", nargs="*", default=None, help="files or folders (default: leaderboards/)")
    r = action.add_parser("render", help="write README.md and index.html tables next to each suite's entries")
    r.add_argument("--root", default=None, help="leaderboard folder (default: leaderboards/)")
    s = action.add_parser("schema", help="write the versioned JSON Schema of an entry")
    s.add_argument("--out", default=None, help="file to write (default: print)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robust_ens import leaderboard as lb

    if args.action == "validate":
        files = [p for p in lb.iter_json(args.paths or [lb.LEADERBOARD_DIR]) if p.name != "schema.json"]
        for path in files:
            lb.validate(path)
        print(f"{len(files)} entries valid (schema {lb.SCHEMA_VERSION})")
    elif args.action == "render":
        for path in lb.render_all(args.root or lb.LEADERBOARD_DIR):
            print(f"wrote {path}")
    else:
        text = json.dumps(lb.json_schema(), indent=2) + "\n"
        if args.out:
            Path(args.out).write_text(text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
    return 0

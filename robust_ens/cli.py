"""The ``robust-ens`` command line.

Subcommands live in :mod:`robust_ens.commands`, one module each; a module that defines
``register(subparsers)`` is picked up automatically. Bad input (any :class:`RobustEnsError`) is
reported as one line on stderr with exit status 2, never as a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from robust_ens import __version__
from robust_ens.errors import RobustEnsError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered subcommand."""
    import robust_ens.commands as commands

    parser = argparse.ArgumentParser(
        prog="robust-ens", description="Benchmark suite for ensembles under attack."
    )
    parser.add_argument("--version", action="version", version=f"robust-ens {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(sub)
    for child in sub.choices.values():
        _accept_global_flags(child)
    return parser


def _accept_global_flags(parser: argparse.ArgumentParser) -> None:
    """Let ``--quiet`` and ``--verbose`` also follow the subcommand (``robust-ens train ... --quiet``).

    ``SUPPRESS`` keeps a flag given before the subcommand when it is not repeated after it.
    """
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _accept_global_flags(child)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robust-ens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        os.environ["ROBUST_ENS_QUIET"] = "1"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except RobustEnsError as err:
        print(f"robust-ens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. ``head``, which stopped reading: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            f"robust-ens {args.command}: interrupted; finished work is saved, run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``robust-ens`` command line.

Subcommands live in :mod:`robust_ens.commands`, one module each; a module that defines
``register(subparsers)`` is picked up automatically. Bad input (any :class:`RobustEnsError`, an
argparse usage error, or an operating-system error about a file) is reported as one line on
stderr with exit status 2, never as a stack trace. ``tests/test_cli_fuzz.py`` walks this parser
and holds every subcommand to that.

``--quiet`` switches off progress bars and info logging for the command and, through
``ROBUST_ENS_QUIET`` (:mod:`robust_ens.progress`), for the processes it starts. Log lines go
through ``tqdm.write`` on stderr, so they never break a progress bar.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from robust_ens import __version__
from robust_ens.errors import RobustEnsError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``PROG: error: MESSAGE (see PROG --help)``."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered subcommand."""
    import robust_ens.commands as commands

    parser = OneLineParser(
        prog="robust-ens", description="Benchmark suite for ensembles under attack."
    )
    parser.add_argument("--version", action="version", version=f"robust-ens {__version__}")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, warnings only (also: environment ROBUST_ENS_QUIET=1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
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


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robust-ens`` console script.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input (one line on stderr), 130 on Ctrl-C.
    """
    from robust_ens import data, progress

    data.data_env()  # resolve a relative ROBUST_ENS_DATA once, against the start directory
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # usage errors (one line, from OneLineParser), --help, --version
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    if args.quiet:
        progress.set_quiet(True)
    quiet = progress.quiet()
    level = logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO)
    logger = logging.getLogger("robust_ens")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    handler = progress.LogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False
    func = getattr(args, "func", None)
    try:
        if func is None:
            parser.print_help()
            return 2
        return _run(func, args)
    finally:
        logger.setLevel(saved[0])
        logger.handlers = saved[1]
        logger.propagate = saved[2]


def _run(func: object, args: argparse.Namespace) -> int:
    from robust_ens.commands.common import command_hints

    prog = f"robust-ens {args.command}"
    try:
        with command_hints(args):  # a missing dataset's message names this command's own options
            return int(func(args) or 0)  # type: ignore[operator]
    except RobustEnsError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        # A file the user named could not be used: still bad input, so still one line.
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        print(f"{prog}: error:{where}: {_one_line(err.strerror or err)}", file=sys.stderr)
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

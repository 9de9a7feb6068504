"""An entry's provenance: the environment it was made in (robust-ens, git commit, torch, Python, command line)."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from robust_ens.leaderboard.schema import Provenance


def git_commit(folder: str | Path | None = None) -> str | None:
    """The git commit checked out at ``folder`` (default: the code's own folder), or ``None`` outside git."""
    cwd = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=cwd).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def portable_command(command: str) -> str:
    """``command`` with every absolute path cut to its file name (``--weights /home/me/m.pt`` -> ``--weights m.pt``).

    An entry is committed and shared: a path of the machine that made it says nothing about the model
    (the weights are recorded by name and sha256) and tells others the submitter's folders.
    """
    def cut(token: str) -> str:
        head, sep, value = token.rpartition("=") if token.startswith("-") else ("", "", token)
        if value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] in (":\\", ":/")):
            value = PurePosixPath(value.replace("\\", "/")).name or value
        return f"{head}{sep}{value}"

    return " ".join(cut(t) for t in command.split(" "))


def provenance(command: str | None = None) -> Provenance:
    """The current environment, for an entry's ``provenance``.

    Args:
        command: The command line to record (default: this process's ``sys.argv``).
    """
    import torch

    import robust_ens

    return Provenance(
        robust_ens_version=robust_ens.__version__, git_commit=git_commit(), torch_version=torch.__version__,
        python_version=platform.python_version(),
        command=portable_command(command if command is not None else " ".join(sys.argv)),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )

"""Atomic file writes: a temp file in the destination's folder, then a rename.

A reader (another process, a resumed run) sees the old file or the new one, never half of one, and
a write that fails leaves no temp file behind. Every file the project writes that something later
trusts (checkpoints, adversarial sets, run manifests, leaderboard entries, caches) goes through here.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_json(d / "a.json", {"b": 1})
    >>> (d / "a.json").read_text()
    '{\\n "b": 1\\n}\\n'
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], object], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temp file next to ``path``, then rename it to ``path``.

    Args:
        path: The destination; its folder is created.
        write: Writes the whole content to the path it is given (e.g. safetensors' ``save_file``).
        suffix: The temp file's suffix (some writers insist on one, e.g. ``.npz`` for ``np.savez``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, value: Any, *, indent: int = 1, sort_keys: bool = True) -> Path:
    """Human-readable JSON (NaN and infinity refused before anything is written), atomically."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text)

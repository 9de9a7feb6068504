"""Every file generated from a leaderboard folder's entries: what each should hold, which are stale, writing them.

Layout under the leaderboard root (:func:`robust_ens.leaderboard.leaderboard_root`)::

    README.md                          every suite's table (markdown), best first
    pages/<suite>.html                 the suite's sortable page (see :mod:`robust_ens.leaderboard.pages`)
    plots/<suite>/robust-vs-eps.png    worst-case robust accuracy against eps, one line per entry
    plots/<suite>/<name>-transfer.png  a defense entry's transferability matrix (attack@surrogate x eps)
    schema/entry-1.json, entry-2.json  the JSON Schemas

Every generated file says it is generated and must not be edited, and carries the sha256 of the
entries it was made from; :func:`stale_files` lists the files that no longer match the entries.
Nothing outside the leaderboard folder is touched (the repository README's Results block is
rendered by the repository's script ``leaderboards/render_readme.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from robust_ens.atomic import atomic_write_bytes
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard.pages import page_html, readme_text
from robust_ens.leaderboard.plots import plots as make_plots
from robust_ens.leaderboard.plots import png_digest
from robust_ens.leaderboard.schema import AnyEntry
from robust_ens.leaderboard.store import leaderboard_root, load_entries, schema_files


def entries_by_suite(root: str | Path | None = None) -> dict[str, list[AnyEntry]]:
    """The entries under ``root`` grouped by suite (across datasets), suites in name order."""
    by_suite: dict[str, list[AnyEntry]] = {}
    for e in load_entries(root):
        by_suite.setdefault(e.protocol.suite, []).append(e)
    return dict(sorted(by_suite.items()))


def expected_files(root: str | Path, *, with_plots: bool = True) -> dict[Path, bytes]:
    """Every generated file under ``root`` with the bytes it should hold (schema files included)."""
    root = Path(root)
    by_suite = entries_by_suite(root)
    files: dict[Path, bytes] = {root / "README.md": readme_text(by_suite).encode()}
    for suite, entries in by_suite.items():
        files[root / "pages" / f"{suite}.html"] = page_html(suite, entries).encode()
        if with_plots:
            for name, blob in make_plots(suite, entries).items():
                files[root / "plots" / suite / name] = blob
    for path, schema in schema_files(root).items():
        files[path] = (json.dumps(schema, indent=2) + "\n").encode()
    return files


def _orphans(root: Path, want: dict[Path, bytes]) -> list[Path]:
    """Files under ``pages/`` and ``plots/`` that no entry renders any more."""
    return [path for sub in ("pages", "plots") if (root / sub).is_dir()
            for path in sorted((root / sub).rglob("*")) if path.is_file() and path not in want]


def stale_files(root: str | Path) -> list[str]:
    """Generated files that are missing, edited or out of date, with why (empty: all current).

    Markdown, HTML and schema files are compared byte for byte; PNGs by the entries' sha256 they
    carry (matplotlib's bytes may differ between its versions) and by the set of plot files.
    """
    root = Path(root)
    want = expected_files(root)
    problems = []
    for path, blob in want.items():
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.suffix == ".png":
            if png_digest(path.read_bytes()) != png_digest(blob):
                problems.append(f"{path}: made from other entries")
        elif path.read_bytes() != blob:
            problems.append(f"{path}: differs from what the entries render to")
    problems += [f"{path}: no entry renders it any more" for path in _orphans(root, want)]
    return problems


def render_all(root: str | Path | None = None, *, plots: bool = True) -> list[Path]:
    """Render ``README.md``, one sortable page per suite, PNG plots and the schema files under ``root``.

    Unchanged files are not rewritten; with ``plots``, pages and plots no entry renders any more
    are removed.

    Args:
        root: The leaderboard folder (see :func:`~robust_ens.leaderboard.leaderboard_root`).
        plots: Also draw the PNG plots (needs matplotlib).

    Returns:
        The files written.

    Raises:
        RobustEnsError: when ``root`` is not a folder.
    """
    base = leaderboard_root(root)
    if not base.is_dir():
        raise RobustEnsError(f"--root {base} is not a folder of leaderboard entries")
    want = expected_files(base, with_plots=plots)
    written = []
    for path, blob in want.items():
        if path.suffix == ".png" and path.is_file() and png_digest(path.read_bytes()) == png_digest(blob):
            continue
        if path.is_file() and path.read_bytes() == blob:
            continue
        written.append(atomic_write_bytes(path, blob))
    if plots:
        for path in _orphans(base, want):
            path.unlink()
    return written

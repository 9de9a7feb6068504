"""No committed leaderboard entry records a path of the machine that made it."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# an absolute POSIX path under a usual root, a home-relative one, or a Windows drive path
ABSOLUTE = re.compile(r'"(/(home|root|tmp|work|Users|mnt|data|var|opt)/[^"]*|~/[^"]*|[A-Za-z]:\\\\[^"]*)"')


def _strings(node: object, at: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _strings(v, f"{at}.{k}")]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in _strings(v, f"{at}[{i}]")]
    return [(at, node)] if isinstance(node, str) else []


def test_committed_entries_hold_no_absolute_path() -> None:
    found = []
    for path in sorted((ROOT / "leaderboards").rglob("*.json")):
        for at, value in _strings(json.loads(path.read_text())):
            if ABSOLUTE.fullmatch(json.dumps(value)):
                found.append(f"{path.relative_to(ROOT)}: {at} = {value}")
    assert not found, "\n".join(found[:10])


def test_the_recorded_command_line_keeps_file_names_only(monkeypatch) -> None:
    import sys

    from robust_ens.leaderboard.environment import portable_command, provenance

    argv = ["/home/me/venv/bin/robust-ens", "submit", "--model", "zoo:baseline-r20x3", "--weights",
            "/home/me/models/mine.safetensors", "--out=/tmp/run", "--name", "mine"]
    monkeypatch.setattr(sys, "argv", argv)
    assert provenance().command == ("robust-ens submit --model zoo:baseline-r20x3 --weights mine.safetensors "
                                    "--out=run --name mine")
    assert portable_command(r"robust-ens submit --weights C:\Users\me\w.pt --data ~/cifar") == \
        "robust-ens submit --weights w.pt --data cifar"
    assert portable_command("robust-ens submit --weights rel/w.pt --model pkg.mod:make") == \
        "robust-ens submit --weights rel/w.pt --model pkg.mod:make"

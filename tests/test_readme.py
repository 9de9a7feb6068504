"""Every README snippet runs as written.

Each ```python block is executed on its own, in a fresh namespace, from an empty working
directory (blocks that load CIFAR-10 need it: skipped locally without it, a failure under CI). A
block preceded by ``<!-- snippet: slow -->`` trains for minutes and runs only under
``pytest --benchmark``. Every ``robust-ens ...`` line of a ```bash block must parse with the real
command line (a renamed or removed option fails here); lines with ``|`` alternatives are
synopses and are skipped. A ```bash block preceded by ``<!-- snippet: run -->`` (the worked
submit examples) runs whole, with bash, from an empty folder beside a link to this Python's venv,
as a newcomer would paste it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from .conftest import require_cifar10

README = Path(__file__).resolve().parents[1] / "README.md"
SLOW_MARK = "<!-- snippet: slow -->"
RUN_MARK = "<!-- snippet: run -->"


def blocks(language: str, mark: str = SLOW_MARK) -> list[tuple[int, str, bool]]:
    """(line number, code, marked) of every fenced block in ``language``; marked: preceded by ``mark``."""
    text = README.read_text()
    out = []
    for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: m.start()].rstrip().splitlines()
        marked = bool(before) and before[-1].strip() == mark
        out.append((text[: m.start()].count("\n") + 1, m.group(1), marked))
    return out


def command_lines() -> list[tuple[int, str]]:
    out = []
    for line_no, code, _ in blocks("bash"):
        joined = code.replace("\\\n", " ")
        for i, line in enumerate(joined.splitlines()):
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("robust-ens ") and "|" not in line:
                out.append((line_no + i + 1, line))
    return out


PY = blocks("python")


def test_the_readme_has_snippets():
    assert len(PY) >= 3 and len(command_lines()) >= 10


@pytest.mark.parametrize("line_no,code,slow", PY, ids=[f"README.md:{n}" for n, _, _ in PY])
def test_python_snippet_runs_as_written(line_no, code, slow, tmp_path, monkeypatch, request):
    if slow and not request.config.getoption("--benchmark"):
        pytest.skip("marked slow: runs under pytest --benchmark")
    if re.search(r"""["']cifar10["']""", code):
        require_cifar10()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line_no}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("line_no,line", command_lines(), ids=[f"README.md:{n}" for n, _ in command_lines()])
def test_command_line_in_the_readme_parses(line_no, line, capsys):
    from robust_ens.cli import build_parser

    argv = shlex.split(line)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"README.md:{line_no}: {line!r} does not parse: {capsys.readouterr().err.strip()} ({stop.code})")
    assert getattr(args, "func", None) is not None, f"README.md:{line_no}: {line!r} names no command"


RUN = [(n, code) for n, code, marked in blocks("bash", RUN_MARK) if marked]


def test_the_readme_has_its_worked_submit_examples() -> None:
    (code,) = [code for _, code in RUN]
    for form in ("--model zoo:", "--model runs/", "--model my_models:make_cnn --weights", "--model timm:"):
        assert form in code, form


@pytest.mark.parametrize("line_no,code", RUN, ids=[f"README.md:{n}" for n, _ in RUN])
def test_worked_example_runs_as_written(line_no: int, code: str, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"not run from a venv ({venv}); the example starts with `source .venv/bin/activate`")
    (tmp_path / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["ROBUST_ENS_CACHE"] = str(tmp_path / "cache")  # a newcomer's empty cache
    proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=850)  # a hang guard only
    assert proc.returncode == 0, f"README.md:{line_no} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    board = tmp_path / "runs" / "board" / "digits" / "digits-transfer"
    names = sorted(p.stem for p in board.glob("*.json"))
    assert names == ["my-cnn", "my-factory", "my-timm", "zoo-cnn"], names
    timm_entry = json.loads((board / "my-timm.json").read_text())
    assert timm_entry["model"]["target"]["weights"] == "resnet10t_digits.pt"
    assert str(tmp_path) not in (board / "my-factory.json").read_text()

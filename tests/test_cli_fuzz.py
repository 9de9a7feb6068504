"""A fuzz test of the command line: every option of every subcommand, given bad values.

The test walks the argparse tree of :func:`robust_ens.cli.build_parser`, so a new subcommand or
option is covered without editing this file: integer options get wrong types and out-of-range
numbers automatically, ``choices`` options get a value outside them, and string options get bad
values by what they name (``--data``, ``--model``, ``--out``, files, ...; see ``STRING_RULES``).
An option that no rule covers fails ``test_every_option_is_fuzzed_or_exempt`` until it gets a
rule or a reasoned entry in ``EXEMPT``.

Every case starts from a valid, cheap invocation of the subcommand (``BASE``; digits-sized) and
swaps one option's value for a bad one drawn with hypothesis (bad strings, negative or
beyond-int64 integers, files of random bytes, missing files, folders where files go, a digits
model on 3-channel images). It runs the command in-process with ``--quiet`` and asserts that it

* exits non-zero, with exactly one line on stderr, which says ``error:`` and names the option
  (its flag, or its name as a word), and no traceback;
* leaves nothing half-written in ``--out``;
* refuses the value before any work starts: no optimizer step (training), no attack call
  (crafting), no corruption and no forward-only evaluation runs (see :func:`no_work`). What did
  not happen is checked, not how long it took, so a busy or slow machine cannot fail a case.

Cases known to fail in files whose owners are still fixing them are listed in ``KNOWN_FAILURES``
and run as strict xfails, so fixing one makes the test say so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_pre_hook

import robust_ens.corruptions
import robust_ens.evaluation
from robust_ens.attacks.base import Attack
from robust_ens.cli import build_parser, main

MAX_EXAMPLES = int(os.environ.get("ROBUST_ENS_FUZZ_EXAMPLES", "4"))
MODEL = "zoo:digits_small_cnn_s0"

# --------------------------------------------------------------------------- the tree


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, parser) of every subcommand that takes no further subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


SKIP_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction,
                argparse._StoreFalseAction, argparse._StoreConstAction, argparse._CountAction)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of a subcommand that take a value."""
    return [a for a in parser._actions if not isinstance(a, SKIP_ACTIONS)]


def key(action: argparse.Action) -> str:
    """The option's flag (``--out``) or, for a positional, its dest (``name``)."""
    return max(action.option_strings, key=len) if action.option_strings else action.dest


PARSER = build_parser()
LEAVES = dict(leaves(PARSER))

# --------------------------------------------------------------------------- valid invocations

# Valid, cheap invocations; placeholders in braces are filled per case (see `_fill`). A new
# subcommand without an entry gets its required options from GENERIC_REQUIRED.
BASE: dict[tuple[str, ...], list[tuple[str, str]]] = {
    ("train",): [("--arch", "small_cnn"), ("--arch-param", "width=4"), ("--data", "digits"), ("--members", "1"),
                 ("--epochs", "1"), ("--train-n", "32"), ("--out", "{out}")],
    ("attack",): [("--attack", "fgsm"), ("--surrogate", MODEL), ("--data", "digits"), ("--n", "8"),
                  ("--out", "{out}/adv.safetensors")],
    ("corruptions", "evaluate"): [("--model", MODEL), ("--data", "digits"), ("--n", "10"),
                                  ("--corruptions", "gaussian_noise"), ("--severities", "1"), ("--no-cache", ""),
                                  ("--out", "{out}")],
    ("corrupt",): [("--preset", "cifar10c"), ("--src", "{images}"), ("--split", "all"),
                   ("--corruptions", "gaussian_noise"), ("--severities", "1"), ("--out", "{out}")],
    ("leaderboard", "validate"): [("paths", "{entry}")],
    ("leaderboard", "add"): [("paths", "{entry}"), ("--root", "{out}")],
    ("leaderboard", "render"): [("--root", "{entries}")],
    ("leaderboard", "schema"): [("--out", "{out}/schema.json")],
    ("zoo",): [("action", "list")],
    ("demo",): [("--digits", ""), ("--epochs", "1"), ("--out", "{out}")],
    ("data",): [("name", "digits")],
    ("quickstart",): [("--out", "{out}"), ("--members", "2"), ("--epochs", "1"), ("--n-eval", "20")],
    ("bench", "list"): [],
    ("bench", "show"): [("suite", "digits-transfer")],
    ("bench", "run"): [("suite", "digits-transfer"), ("--tier", "smoke"), ("--target", "zoo:digits_small_cnn_s2"),
                       ("--out", "{out}")],
    ("submit",): [("--model", "zoo:digits_small_cnn_s2"), ("--suite", "digits-transfer"), ("--tier", "smoke"),
                  ("--name", "fuzz-submit"), ("--root", "{out}/lb"), ("--out", "{out}/run")],
    ("regress",): [("--tier", "smoke"), ("--root", "{leaderboards}")],  # the committed smoke entries (seconds)
    ("leaderboard", "export"): [("--format", "robustbench"), ("--root", "{entries}"), ("--out", "{out}")],
    ("leaderboard", "import-robustbench"): [("path", "{randbytes}")],
}
# Subcommands whose valid input the fixtures cannot provide: only the listed options are fuzzed
# (their bad values are bad on their own), and the base invocation is not required to succeed.
NO_VALID_BASE: dict[tuple[str, ...], str] = {
    ("leaderboard", "import-robustbench"): "needs a RobustBench model_info tree",
}
GENERIC_REQUIRED = {"--out": "{out}", "--model": MODEL, "--surrogate": MODEL, "--target": MODEL,
                    "--data": "digits", "--attack": "fgsm", "suite": "digits-transfer", "name": "digits"}

# --------------------------------------------------------------------------- bad values

# Integers: (kind, value); a known failure is keyed by the kind, whatever value hypothesis drew.
INT_KINDS = {"not an integer": "abc", "negative": "-1", "beyond int64": str(2**64)}
INT_BAD = st.one_of(
    st.sampled_from(["abc", "1.5", "", "1e3", "0x10", "nan"]).map(lambda v: ("not an integer", v)),
    st.integers(max_value=-1).map(lambda i: ("negative", str(i))),
    st.integers(min_value=2**63, max_value=2**80).map(lambda i: ("beyond int64", str(i))),
)
FILE_IN = ["{missing}", "{folder}", "{randbytes}"]
FOLDER_IN = ["{missing}", "{file}"]
MODELS = ["zoo:nope", "{missing}", "{garbage_ckpt}", "{folder}", ","]
OUT_FOLDER = ["/proc/robust-ens-nope/out", "{file}", "{file}/sub"]
OUT_FILE = ["/proc/robust-ens-nope/out.safetensors", "{folder}", "{file}/sub.json"]
PARAMS = ["novalue", "=1", "foo=1"]

# (dest, command or None for any) -> bad values. Values may use the placeholders of `_fill`.
STRING_RULES: dict[tuple[str, tuple[str, ...] | None], list[str]] = {
    ("data", ("train",)): ["nope", "imagefolder:{missing}", "imagefolder:{folder}", "imagefolder:{flat_rgb}"],
    ("data", ("bench", "run")): ["{missing}"],
    ("data", None): ["nope", "imagefolder:{missing}", "imagefolder:{rgb}"],  # {rgb}: 3 channels for a digits model
    ("name", ("data",)): ["nope", "imagefolder:{missing}"],
    ("split", None): ["val", "dev"],
    ("eps", None): ["abc", "nan", "inf", "20", "-1", "8/0"],
    ("device", None): ["nope", "cuda:99"],
    ("precision", None): ["fp7"],
    ("combine", None): ["nope"],
    ("preset", None): ["nope"],
    ("corruptions", None): ["nope", ","],
    ("severities", None): ["0", "6", "abc", "3-1"],
    ("upscale", None): ["abc", "0", "-2"],
    ("size", ("corrupt",)): ["abc", "0x0", "-1x5"],
    ("param", None): [*PARAMS, "steps=abc"],
    ("overrides", None): [*PARAMS, "lr=abc", "milestones=a,b", "defense.eps=1"],
    ("arch_param", None): [*PARAMS, "width=abc", "pretrained=true"],
    ("arch", None): ["nope", "timm:nope_model"],
    ("defense", ("train",)): ["nope"],
    ("path", ("leaderboard", "import-robustbench")): ["{missing}", "{randbytes}", "{folder}"],
    ("version", ("leaderboard", "schema")): ["nope", "999"],
    ("name", ("submit",)): ["../escape", "a/b"],
    ("tier", None): ["nope"],
    ("attack", None): ["nope"],
    ("model", None): MODELS,
    ("surrogate", None): MODELS,
    ("target", ("bench", "run")): MODELS,
    ("baseline", None): FILE_IN,
    ("split_file", None): FILE_IN,
    ("weights", None): FILE_IN,
    ("gt", None): FILE_IN,
    ("paths", None): [*FILE_IN, "{folder}"],
    ("root", ("submit",)): OUT_FOLDER,  # where the entry is written: created when missing
    ("root", None): FOLDER_IN,
    ("data_root", None): FOLDER_IN,
    ("weights_dir", None): FOLDER_IN,
    ("src", None): FOLDER_IN,
    ("store", None): ["{file}", "/proc/robust-ens-nope/store"],
    ("suite", None): ["nope", "{randbytes}"],
    ("name", ("corruptions", "evaluate")): ["../escape", "a/b"],
    ("dataset_label", None): ["../escape", "a/b"],
    ("out", ("attack",)): OUT_FILE,
    ("out", ("leaderboard", "schema")): OUT_FILE,
    ("out", None): OUT_FOLDER,
}

# Options no rule can give a value that is bad on its own: free text, or display names.
EXEMPT: dict[tuple[tuple[str, ...], str], str] = {
    (("bench", "run"), "--name"): "display names are free text",
    (("submit",), "--paper-url"): "free text (a URL, recorded as given)",
    (("submit",), "--paper-title"): "free text",
    (("submit",), "--paper-venue"): "free text",
    (("submit",), "--description"): "free text",
    (("submit",), "--defense"): "a display name for the table",
    (("leaderboard", "add"), "--root"): "a missing folder is a new leaderboard; a file there is refused "
                                          "(tests/test_submit_regress.py)",
    (("zoo",), "--only"): "zoo entry names: 'zoo list' refuses it, rebuild checks names (tests/test_zoo.py)",
    (("zoo",), "--dataset"): "'zoo list' refuses it; rebuild's unknown datasets are tested in tests/test_zoo.py",
    (("leaderboard", "import-robustbench"), "--root"): "no valid RobustBench input to pair it with (NO_VALID_BASE)",
}

# Cases that fail today in files other engineers are changing, as strict xfails (fixing one
# turns it into an XPASS failure, the signal to delete its line). Key: (command, option, kind),
# the kind being the value template or, for integers, a key of INT_KINDS. TEMPORARY: see issue 14.
KNOWN_FAILURES: dict[tuple[tuple[str, ...], str, str], str] = {
}


def _is_int(action: argparse.Action) -> bool:
    t = action.type
    return t is int or getattr(t, "__name__", "").endswith("_int")


def bad_values(cmd: tuple[str, ...], action: argparse.Action) -> st.SearchStrategy[tuple[str, str]] | None:
    """(kind, bad value) pairs for one option, or None when no rule covers it."""
    if _is_int(action):
        return INT_BAD
    values: list[str] | None = None
    if action.type is float:
        values = ["abc", "nan", "inf"]
    elif action.choices is not None:
        values = ["__not_a_choice__"]
    else:
        for (dest, where), rule in STRING_RULES.items():
            if dest == action.dest and (where is None or where == cmd):
                values = rule
                break
    return None if values is None else st.sampled_from([(v, v) for v in values])


def cases() -> list[tuple[tuple[str, ...], str]]:
    out = []
    for cmd, parser in sorted(LEAVES.items()):
        for action in options(parser):
            if bad_values(cmd, action) is not None and (cmd, key(action)) not in EXEMPT:
                out.append((cmd, key(action)))
    return out


CASES = cases()

# --------------------------------------------------------------------------- fixtures


def _png(path: Path, shape: tuple[int, int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files the cases point at: image trees, an entry, a file and a folder."""

    root = tmp_path_factory.mktemp("fuzz-assets")
    for split in ("train", "test"):  # 3-channel 16x16 images, 3 classes: not what a digits model takes
        for c in range(3):
            for i in range(2):
                _png(root / "rgb" / split / f"class{c}" / f"{i}.png", (16, 16, 3), 10 * c + i)
    for c in range(2):  # a tree without split folders: an evaluation set only
        _png(root / "flat_rgb" / f"class{c}" / "0.png", (16, 16, 3), c)
    for i in range(2):
        _png(root / "images" / f"{i}.png", (32, 32, 3), 100 + i)
    # a committed schema-2 entry (schema 1 is read-only legacy: `leaderboard add` refuses it)
    committed = Path(__file__).resolve().parents[1] / "leaderboards" / "digits" / "digits-transfer" / "cnn-s2.json"
    path = root / "entries" / "digits" / "digits-transfer" / "cnn-s2.json"
    path.parent.mkdir(parents=True)
    shutil.copyfile(committed, path)
    (root / "a_file").write_text("not a folder\n")
    return {"rgb": str(root / "rgb"), "flat_rgb": str(root / "flat_rgb"), "images": str(root / "images"),
            "entries": str(root / "entries"), "entry": str(path), "file": str(root / "a_file"),
            "leaderboards": str(Path(__file__).resolve().parents[1] / "leaderboards")}


def _fill(template: str, tmp: Path, assets: dict[str, str], blob: bytes) -> str:
    """Fill the placeholders of a value; files of random bytes are created on demand."""
    values = dict(assets)
    values["out"] = str(tmp / "out")
    values["missing"] = str(tmp / "does-not-exist")
    folder = tmp / "a_folder"
    folder.mkdir(exist_ok=True)
    values["folder"] = str(folder)
    if "{randbytes}" in template:
        (tmp / "random.bin").write_bytes(blob)
        values["randbytes"] = str(tmp / "random.bin")
    if "{garbage_ckpt}" in template:  # a checkpoint whose record and weights are random bytes
        (tmp / "ckpt.json").write_bytes(blob)
        (tmp / "ckpt.safetensors").write_bytes(blob[::-1])
        values["garbage_ckpt"] = str(tmp / "ckpt.safetensors")
    return template.format(**values)


def _argv(cmd: tuple[str, ...], parser: argparse.ArgumentParser, replace: str | None, value: str,
          tmp: Path, assets: dict[str, str], blob: bytes) -> list[str]:
    base = list(BASE.get(cmd, []))
    if cmd not in BASE:
        for action in parser._actions:
            k = key(action)
            if (action.required or (not action.option_strings and action.nargs not in ("?", "*"))) and k in GENERIC_REQUIRED:
                base.append((k, GENERIC_REQUIRED[k]))
    if replace is not None:
        if any(k == replace for k, _ in base):
            first = next(i for i, (k, _) in enumerate(base) if k == replace)
            base[first] = (replace, value)
        else:
            base.append((replace, value))
    positional = {a.dest for a in parser._actions if not a.option_strings}
    argv = [_fill(v, tmp, assets, blob) for k, v in base if k in positional]
    for k, v in base:
        if k not in positional:
            argv += [k] if v == "" and k != replace else [k, _fill(v, tmp, assets, blob)]
    return [*cmd, *argv]


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []


def _names_option(line: str, action: argparse.Action, value: str) -> bool:
    """The line names the option (flag or name); for a positional, naming the value given is enough."""
    if not action.option_strings and value and value in line:
        return True
    words = [*action.option_strings, action.dest, action.dest.replace("_", "-")]
    if action.metavar:
        words.append(str(action.metavar))
    return any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w])", line) for w in words)


class WorkStarted(BaseException):
    """Raised by :func:`no_work` when a command starts real work (not an ``Exception``: nothing catches it)."""


@contextlib.contextmanager
def no_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every kind of real work raise :class:`WorkStarted` while a bad value is being given.

    The work is what a refused value must never reach: a training step (a global optimizer
    step pre-hook, so every training loop is covered), an attack (the base class's ``__call__``,
    which every attack goes through), a corruption (its per-chunk context) and a forward-only
    evaluation (:func:`robust_ens.evaluation.predict`'s eval-mode switch).
    """

    def refuse(what: str) -> None:
        raise WorkStarted(what)

    handle = register_optimizer_step_pre_hook(lambda *_: refuse("a training step"))
    with monkeypatch.context() as mp:
        mp.setattr(Attack, "__call__", lambda *_, **__: refuse("an attack"))
        mp.setattr(robust_ens.corruptions, "Ctx", lambda *_, **__: refuse("a corruption"))
        mp.setattr(robust_ens.evaluation, "eval_mode", lambda *_, **__: refuse("an evaluation"))
        try:
            yield
        finally:
            handle.remove()


def run_case(cmd: tuple[str, ...], option: str | None, value: str, assets: dict[str, str], blob: bytes,
             capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, list[Path], list[str], str]:
    parser = LEAVES[cmd]
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    cwd = os.getcwd()
    os.chdir(tmp)  # a relative or empty path given as a bad value must not land in the checkout
    try:
        argv = _argv(cmd, parser, option, value, tmp, assets, blob)
        capsys.readouterr()
        # A valid base invocation does its work; a bad value must be refused before any starts.
        guard = no_work(monkeypatch) if option is not None else contextlib.nullcontext()
        try:
            with guard:
                rc = main(["--quiet", *argv])
        except SystemExit as stop:  # pragma: no cover - main returns instead of exiting
            rc = int(stop.code or 0) if not isinstance(stop.code, str) else 2
        except WorkStarted as started:
            pytest.fail(f"robust-ens {' '.join(argv)} started {started} before refusing the bad value")
        except BaseException as err:  # a traceback is what a user would see
            pytest.fail(f"robust-ens {' '.join(argv)} raised {type(err).__name__}: {err}")
        err_text = capsys.readouterr().err
        out = tmp / "out"
        return rc, err_text, _files_under(out), argv, _fill(value, tmp, assets, blob)
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- tests


def test_the_tree_is_walked_and_every_subcommand_has_cases():
    cmds = {c for c, _ in CASES}
    assert {("train",), ("attack",), ("corruptions", "evaluate"), ("data",), ("leaderboard", "validate")} <= cmds
    for cmd, parser in LEAVES.items():
        if options(parser):
            assert cmd in cmds or all((cmd, key(a)) in EXEMPT for a in options(parser)), cmd


def test_every_option_is_fuzzed_or_exempt():
    missing = [f"{' '.join(cmd)} {key(a)}" for cmd, parser in LEAVES.items() for a in options(parser)
               if bad_values(cmd, a) is None and (cmd, key(a)) not in EXEMPT]
    assert not missing, (
        "options without a fuzz rule (add one to STRING_RULES in tests/test_cli_fuzz.py, or an EXEMPT entry "
        f"with the reason): {missing}"
    )


@pytest.mark.parametrize("cmd", sorted(LEAVES), ids=" ".join)
def test_base_invocations_are_valid(cmd, assets, capsys, monkeypatch):
    """The starting points must succeed, or the fuzz cases would test the wrong thing."""
    if cmd in NO_VALID_BASE:
        pytest.skip(NO_VALID_BASE[cmd])
    rc, err, _, argv, _ = run_case(cmd, None, "", assets, b"", capsys, monkeypatch)
    assert rc == 0, f"robust-ens {' '.join(argv)} failed: {err}"


@pytest.mark.parametrize("cmd,option", CASES, ids=[f"{' '.join(c)} {o}" for c, o in CASES])
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_bad_value_is_a_one_line_error_naming_the_option(cmd, option, data, assets, capsys, monkeypatch):
    action = next(a for a in options(LEAVES[cmd]) if key(a) == option)
    strategy = bad_values(cmd, action)
    assert strategy is not None
    kind, value = data.draw(strategy, label="kind, value")
    blob = data.draw(st.binary(min_size=0, max_size=96), label="random bytes") if "{" in value else b""
    if (cmd, option, kind) in KNOWN_FAILURES:
        return  # run as a strict xfail by test_known_failures
    check_case(cmd, option, value, blob, assets, capsys, monkeypatch)


def check_case(cmd: tuple[str, ...], option: str, value: str, blob: bytes, assets: dict[str, str],
               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    action = next(a for a in options(LEAVES[cmd]) if key(a) == option)
    rc, err, left, argv, filled = run_case(cmd, option, value, assets, blob, capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if rc == 0:
        problems.append("exit status 0 (the bad value was accepted)")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, not 1")
    elif "error:" not in lines[0] or not _names_option(lines[0], action, filled):
        problems.append(f"the error line does not name {option}")
    if left:
        problems.append(f"files left in --out: {[str(p) for p in left[:3]]}")
    assert not problems, f"robust-ens {' '.join(argv)}: {'; '.join(problems)}; stderr: {err!r}"


@pytest.mark.parametrize(
    "cmd,option,value",
    [pytest.param(c, o, v, marks=pytest.mark.xfail(strict=True, reason=why), id=f"{' '.join(c)} {o} {v}")
     for (c, o, v), why in KNOWN_FAILURES.items()] or [pytest.param(None, None, None, marks=pytest.mark.skip("none"))],
)
def test_known_failures(cmd, option, value, assets, capsys, monkeypatch):
    check_case(cmd, option, INT_KINDS.get(value, value), b"\xff\xfe random \x00 bytes", assets, capsys,
               monkeypatch)

"""The prepared GPU check (suites/gpu_check.py, issue 27 goal 4), rehearsed on the CPU.

Without CUDA it must refuse in one line and never fall back to the CPU; its tiny dry run goes
through the same code at tiny sizes and writes the report whose layout the GPU run will have; a
CUDA error stops it at once, any other failure is reported and still fails the exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from suites import gpu_check

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {"peak", "crafting", "vit", "engine", "regress", "imagenet_smoke", "imagenet_slice", "vit_compile"}


def _run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suites.gpu_check", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)


def _fail_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("gpu-check:")]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr
    assert lines[0].startswith("gpu-check: FAIL: ")
    return lines[0]


def test_without_cuda_it_fails_in_one_line_and_runs_nothing(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    got = _run_script("--out", str(report), env={"CUDA_VISIBLE_DEVICES": ""})
    assert got.returncode != 0 and got.stdout == ""
    assert "CUDA is not available" in _fail_line(got.stderr) and "never falls back to the CPU" in got.stderr
    assert not report.exists()


def test_the_cpu_runs_only_as_the_tiny_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    assert "--tiny" in _fail_line(capsys.readouterr().err)
    assert gpu_check.main(["--dry-run", "--only", "peak,nope", "--out", str(tmp_path / "r.json")]) == 1
    assert "unknown checks ['nope']" in _fail_line(capsys.readouterr().err)


BARE = """
import sys
# the project as a bare checkout: no editable install's finder (a lent GPU machine's own python)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_importer_cache.clear()
sys.path.insert(0, ".")
import importlib.util
bare = importlib.util.find_spec("robust_ens.attacks") is None
from suites import gpu_check
rc = gpu_check.main(["--dry-run", "--only", "peak", "--out", sys.argv[1]])
import robust_ens.attacks, robust_ens.defenses
print(bare, rc, robust_ens.attacks.__file__, robust_ens.defenses.__file__)
"""


def test_a_bare_checkout_imports_its_attacks_and_defenses_as_the_install_would(tmp_path: Path) -> None:
    got = subprocess.run([sys.executable, "-c", BARE, str(tmp_path / "r.json")], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    bare, rc, attacks, defenses = got.stdout.splitlines()[-1].split()
    assert (bare, rc) == ("True", "0"), got.stderr
    assert Path(attacks) == ROOT / "attacks" / "__init__.py" and Path(defenses) == ROOT / "defenses" / "__init__.py"


def test_a_missing_package_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def missing() -> None:
        raise ModuleNotFoundError("No module named 'pydantic'", name="pydantic")

    monkeypatch.setattr(gpu_check, "project_imports", missing)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "r.json")]) == 1
    assert "No module named 'pydantic'" in _fail_line(capsys.readouterr().err)
    assert not (tmp_path / "r.json").exists()


def _assert_run(row: dict[str, Any]) -> None:
    for key in ("seconds_per_round", "img_per_s", "gflops_per_s", "flops_per_round", "warmup_seconds"):
        assert isinstance(row[key], float) and row[key] > 0, key


def test_the_tiny_dry_run_writes_the_whole_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu-check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"report {out}" in printed.out and "gpu-check: PASS" in printed.out and printed.err == ""
    r = json.loads(out.read_text())
    assert r["format"] == gpu_check.FORMAT and r["ok"] is True and r["reason"] is None and r["mode"] == "cpu-tiny"
    env = r["environment"]
    assert {"device", "card", "torch", "cuda", "cudnn", "tf32_matmul", "robust_ens", "git_commit", "timm",
            "torchattacks", "python", "threads", "data"} <= set(env)
    assert env["device"] == "cpu" and env["card"].startswith("cpu") and env["torch"] == torch.__version__
    checks = r["checks"]
    assert set(checks) == CHECKS and all(c["status"] == "pass" and c["seconds"] >= 0 for c in checks.values())
    assert checks["peak"]["bf16_gflops_per_s"] > 0 and checks["peak"]["fp32_gflops_per_s"] > 0
    craft = checks["crafting"]
    assert craft["ensemble"] == "2x resnet20" and craft["flops_per_member_image_step"] > 0
    for p in ("fp32", "bf16"):
        _assert_run(craft["runs"][p])
        assert craft["runs"][p][f"share_of_{p}_peak"] > 0
        # the round's FLOPs are the attack's passes x the measured FLOPs per member-image-step
        assert craft["runs"][p]["flops_per_round"] == pytest.approx(
            craft["flops_per_member_image_step"] * 2 * craft["batch"] * 2)
    assert craft["runs"]["torchattacks_fp32"]["img_per_s"] > 0 and set(craft["speedup_vs_torchattacks"]) == {"fp32", "bf16"}
    for name in ("vit", "vit_compile"):
        _assert_run(checks[name])
        assert checks[name]["precision"] == "bf16" and checks[name]["ensemble"].startswith("2x ViT-B/16")
    assert checks["vit_compile"]["compile_seconds"] > 0 and checks["vit_compile"]["speedup_vs_eager"] > 0
    eng = checks["engine"]
    assert (eng["suite"], eng["tier"]) == ("digits-transfer", "smoke") and "tiny" in eng["fallback"]
    assert eng["cost"]["flops"] > 0 and eng["cost"]["gflops_per_s"] > 0 and eng["cost"]["advsets_made"] > 0
    reg = checks["regress"]
    assert reg["entries"] == ["cnn-s0"] and reg["moved"] == [] and reg["numbers"] > 0
    assert reg["exact_same_device"] + reg["across_devices"] == 1
    _assert_imagenet(checks["imagenet_smoke"], checks["imagenet_slice"])
    assert list(checks).index("imagenet_slice") < list(checks).index("vit_compile")  # before the compile
    assert os.environ.get("ROBUST_ENS_DATA") == env["data"]  # pointed at the generated folder for its run only


def _assert_imagenet(smoke: dict[str, Any], sl: dict[str, Any]) -> None:
    """The ImageNet track's two checks: the smoke tier through the engine, the full tier's slice in fp32 and bf16."""
    from robust_ens.bench import get_suite

    tier = get_suite("imagenet-transfer").tier("smoke")
    assert (smoke["suite"], smoke["tier"], smoke["dataset"], smoke["n"]) == ("imagenet-transfer", "smoke",
                                                                           "imagenet-compatible", tier.n)
    assert smoke["attacks"] == list(tier.attacks) and set(smoke["success"]) == set(tier.attacks)
    assert all(0 <= v <= 1 for v in smoke["success"].values()) and smoke["cells"] > 0 and len(smoke["targets"]) == 2
    assert smoke["cost"]["advsets_made"] > 0 and smoke["cost"]["flops"] > 0 and smoke["cost"]["gflops_per_s"] > 0
    assert (sl["images"], sl["steps"], sl["image"]) == (4, 2, [3, 224, 224]) and sl["target"].startswith("timm-random:")
    assert set(sl["attacks"]) == {"mifgsm", "ens"} and sl["flops"] > 0 and sl["gflops_per_s"] > 0 and sl["summary"]
    assert sl["bn_statistics"]["recomputed_on_the_images"] and "tolerance" in sl["tolerance_rule"]
    for row in sl["attacks"].values():
        assert row["problems"] == [] and all(s.startswith("timm-random:test_") for s in row["surrogate"])
        assert row["attack"]["steps"] == 2 and row["attack"]["eps"] == pytest.approx(16 / 255)
        for p in ("fp32", "bf16"):
            run = row["runs"][p]
            assert run["seconds"] > 0 and run["flops"] > 0 and run["gflops_per_s"] > 0 and f"share_of_{p}_peak" in run
            assert run["forward"] == run["backward"] == 2 * 4 * len(row["surrogate"])  # steps x images x members
            assert set(row["success"][p]) == {"surrogate", "target"} and 0 < row["max_change_levels"][p] <= 16
        assert set(row["loss"]) == {"clean", "fp32", "bf16"}
        for k in ("surrogate", "target"):
            assert row["difference"][k] == pytest.approx(row["success"]["bf16"][k] - row["success"]["fp32"][k])
            assert abs(row["difference"][k]) <= row["tolerance"][k]
        assert set(row["agree"]) == {"pixels_equal", "pixels_within_1_level", "perturbation_sign", "examples_equal",
                                     "outcome_surrogate", "outcome_target", "clean_prediction"}
        assert all(0 <= v <= 1 for v in row["agree"].values())


def test_an_unwritable_report_fails_in_one_line_before_any_work(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "file" / "r.json")]) == 1
    err = capsys.readouterr()
    assert _fail_line(err.err) and "[peak]" not in err.out


def _fake_checks(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[str]:
    ran: list[str] = []

    def ok(c: gpu_check.Check) -> dict[str, Any]:
        ran.append("ok")
        return {"value": 1.0}

    def boom(c: gpu_check.Check) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(gpu_check, "CHECKS", [("first", ok, 1), ("boom", boom, 1), ("after", ok, 1)])
    return ran


def test_a_cuda_error_stops_the_check_at_once_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ran = _fake_checks(monkeypatch, RuntimeError("CUDA error: an illegal memory access was encountered"))
    out = tmp_path / "r.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    line = _fail_line(capsys.readouterr().err)
    assert "boom: CUDA error" in line and "illegal memory access" in line
    r = json.loads(out.read_text())
    assert r["ok"] is False and r["checks"]["boom"]["status"] == "fail" and "after" not in r["checks"]
    assert ran == ["ok"]


def test_another_failure_is_reported_and_the_rest_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ran = _fake_checks(monkeypatch, gpu_check.CheckError("2 numbers moved:\n  a b"))
    out = tmp_path / "r.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    assert "boom: CheckError: 2 numbers moved: a b" in _fail_line(capsys.readouterr().err)
    r = json.loads(out.read_text())
    assert [c["status"] for c in r["checks"].values()] == ["pass", "fail", "pass"] and ran == ["ok", "ok"]
    assert r["reason"].startswith("boom:")


def test_errors_are_told_apart_and_the_report_goes_to_out(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_check.is_cuda_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert gpu_check.is_cuda_error(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"))
    assert not gpu_check.is_cuda_error(ValueError("bad shape"))
    assert gpu_check._finite({"a": float("nan"), "b": (float("inf"), 1.0)}) == {"a": None, "b": [None, 1.0]}
    monkeypatch.setenv("OUT", "/some/out")
    assert gpu_check.default_out() == Path("/some/out/gpu-check.json")
    monkeypatch.delenv("OUT")
    assert gpu_check.default_out() == ROOT / "runs" / "gpu-check.json"


def test_the_imagenet_slice_fails_loudly_out_of_tolerance_and_runs_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from robust_ens.bench import regress

    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "the-users-data"))
    monkeypatch.setattr(regress, "tolerance", lambda p, n, same_device: -1.0)  # nothing can agree
    out = tmp_path / "r.json"
    assert gpu_check.main(["--dry-run", "--only", "imagenet_slice", "--out", str(out)]) == 1
    printed = capsys.readouterr()
    line = _fail_line(printed.err)
    assert "imagenet_slice: ImageNetCheckError: mifgsm: surrogate success" in line and "> tolerance -1.000" in line
    assert "[imagenet_slice] figures: {" in printed.out  # the figures stay in the log
    r = json.loads(out.read_text())
    assert list(r["checks"]) == ["imagenet_slice"] and r["checks"]["imagenet_slice"]["status"] == "fail"
    assert os.environ["ROBUST_ENS_DATA"] == str(tmp_path / "the-users-data")  # restored after the check's folder

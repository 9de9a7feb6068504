"""``robust-ens corrupt`` on a small KITTI-layout fixture generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_ens.commands import corrupt as cmd
from robust_ens.errors import RobustEnsError

FRAMES = [("2011_09_26/2011_09_26_drive_0002_sync", 69), ("2011_09_26/2011_09_26_drive_0002_sync", 54),
          ("2011_09_28/2011_09_28_drive_0001_sync", 12)]


@pytest.fixture
def kitti(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    g = np.random.default_rng(0)
    for folder, frame in FRAMES:
        d = root / folder / "image_02" / "data"
        d.mkdir(parents=True, exist_ok=True)
        img = (g.random((75, 248, 3)) * 255).astype(np.uint8)  # a small stand-in for 375 x 1242
        Image.fromarray(img).save(d / f"{frame:010d}.png")
    (root / "splits").mkdir()
    (root / "splits" / "eigen.txt").write_text("".join(f"{f} {n} l\n" for f, n in FRAMES))
    return root


def run_cli(argv: list[str]) -> int:
    from robust_ens import cli

    return cli.main(argv)


def test_builds_robodepth_layout_and_resumes(kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "kitti_c"
    argv = ["corrupt", "--preset", "kittic", "--src", str(kitti), "--split", "eigen", "--out", str(out),
            "--corruptions", "brightness,iso_noise", "--severities", "1,3", "--batch-size", "2", "--clean"]
    assert run_cli(argv) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(files) == 2 * 2 * 3 + 3
    rel = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    assert f"brightness/3/{rel}" in files and f"clean/{rel}" in files
    with Image.open(out / "iso_noise" / "1" / rel) as im:
        assert im.size == (640, 192) and im.mode == "RGB"
    before = (out / "iso_noise" / "1" / rel).stat().st_mtime_ns
    assert run_cli(argv) == 0  # resume: nothing rewritten
    assert (out / "iso_noise" / "1" / rel).stat().st_mtime_ns == before
    # identical to corrupting the same image alone through the API with its split index
    import torch

    from robust_ens.corruptions import corrupt

    clean = torch.from_numpy(np.array(Image.open(out / "clean" / rel))).permute(2, 0, 1)[None].float() / 255
    y = corrupt(clean, "iso_noise", 1, preset="kittic", seed=42, index=torch.tensor([0]))
    saved = np.asarray(Image.open(out / "iso_noise" / "1" / rel))
    np.testing.assert_array_equal(saved, (y[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def test_bad_input_is_a_clear_error(kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (kitti / "splits" / "eigen.txt").unlink()
    assert run_cli(["corrupt", "--src", str(kitti), "--out", str(tmp_path / "o")]) == 2
    assert "--split-file" in capsys.readouterr().err
    assert run_cli(["corrupt", "--src", str(kitti), "--split", "all", "--out", str(tmp_path / "o"),
                    "--corruptions", "rain"]) == 2
    assert "unknown corruption" in capsys.readouterr().err
    with pytest.raises(RobustEnsError):
        cmd.resolve_split(kitti, "missing.txt", None)
    assert len(cmd.resolve_split(kitti, "all", None)) == 3


def test_png_compression_changes_size_not_pixels(kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["corrupt", "--src", str(kitti), "--split", "all", "--corruptions", "fog,shot_noise", "--severities", "2",
            "--batch-size", "2"]
    assert run_cli([*base, "--out", str(tmp_path / "fast")]) == 0  # default level 1
    assert run_cli([*base, "--out", str(tmp_path / "small"), "--png-compression", "9"]) == 0
    fast = sorted((tmp_path / "fast").rglob("*.png"))
    assert len(fast) == 2 * 3
    for p in fast:
        q = tmp_path / "small" / p.relative_to(tmp_path / "fast")
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))
    assert sum(p.stat().st_size for p in fast) > sum(p.stat().st_size for p in (tmp_path / "small").rglob("*.png"))
    assert run_cli([*base, "--out", str(tmp_path / "bad"), "--png-compression", "12"]) == 2
    assert "--png-compression" in capsys.readouterr().err


def test_a_failed_write_is_reported(kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A PNG that cannot be written stops the run with a one-line error, never a silently missing file."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "fog").write_text("a file where the corruption's folder should be")
    assert run_cli(["corrupt", "--src", str(kitti), "--split", "all", "--corruptions", "fog", "--severities", "1",
                    "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err

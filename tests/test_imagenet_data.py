"""TransferAttack's ImageNet-compatible layout (images/*.png + labels.csv) through data.load / load_uint8."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_ens import data, imagenet_data
from robust_ens.errors import DatasetNotFoundError, RobustEnsError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ROBUST_ENS_DATA", raising=False)


def make_set(folder: Path, n: int = 8, size: tuple[int, int] = (40, 30), seed: int = 0,
             targeted: bool = False) -> tuple[list[np.ndarray], list[int]]:
    """``n`` random RGB PNGs of ``size`` (w, h) in ``folder/images`` and their labels.csv."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    pixels, labels, rows = [], [], ["filename,label" + (",targeted_label" if targeted else "")]
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        name = f"img{i:02d}.png"
        Image.fromarray(arr).save(folder / "images" / name)
        label = int(rng.integers(0, 1000))
        pixels.append(arr)
        labels.append(label)
        rows.append(f"{name},{label}" + (f",{(label + 1) % 1000}" if targeted else ""))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return pixels, labels


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_load_reads_the_layout_resized_like_transferattack(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    _, labels = make_set(folder)
    x, y = data.load_uint8(f"imagenet-compatible:{folder}")
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 224, 224)
    assert y.dtype == torch.int64 and y.tolist() == labels  # row order is the example order
    # TransferAttack's AdvDataset: Image.open(p).resize((224, 224)).convert('RGB')
    for i, name in enumerate(sorted(os.listdir(folder / "images"))):
        with Image.open(folder / "images" / name) as im:
            ta = np.asarray(im.resize((224, 224)).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(x[i].numpy(), ta)
    xf, yf = data.load(f"imagenet-compatible:{folder}", n=3, seed=1)
    assert xf.dtype == torch.float32 and xf.shape == (3, 3, 224, 224) and float(xf.max()) <= 1.0
    assert set(yf.tolist()) <= set(labels)


def test_224_pngs_come_back_pixel_for_pixel(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    pixels, _ = make_set(folder, n=3, size=(224, 224))
    x, _ = data.load_uint8(f"imagenet-compatible:{folder}")
    for i, arr in enumerate(pixels):
        assert np.array_equal(x[i].numpy().transpose(1, 2, 0), arr)


def test_palette_and_grey_pngs_decode_as_transferattack_does(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    make_set(folder, n=2)
    rgb = np.asarray(Image.open(folder / "images" / "img00.png").convert("RGB"))
    Image.fromarray(rgb).convert("P").save(folder / "images" / "img00.png")  # nearest, forced by Pillow
    Image.fromarray(rgb[..., 0]).save(folder / "images" / "img01.png")  # mode L: bicubic, then RGB
    x, _ = data.load_uint8(f"imagenet-compatible:{folder}")
    for i in range(2):
        with Image.open(folder / "images" / f"img{i:02d}.png") as im:
            assert np.array_equal(x[i].numpy(), np.asarray(im.resize((224, 224)).convert("RGB")).transpose(2, 0, 1))


def test_found_under_root_and_robust_ens_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, labels = make_set(tmp_path / "data" / "imagenet-compatible", n=2)
    _, y = data.load_uint8("imagenet-compatible", root=tmp_path / "data")
    assert y.tolist() == labels
    _, y = data.load_uint8("imagenet-compatible", root=tmp_path / "data" / "imagenet-compatible")
    assert y.tolist() == labels
    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "data"))
    _, y = data.load_uint8("imagenet-compatible")
    assert y.tolist() == labels


def test_splits_info_and_targets(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    _, labels = make_set(folder, n=3, targeted=True)
    assert data.splits("imagenet-compatible") == ("test",)
    assert data.splits(f"imagenet-compatible:{folder}") == ("test",)
    info = data.info("imagenet-compatible")
    assert (info.num_classes, info.in_chans, info.mean) == (1000, 3, data.IMAGENET_MEAN)
    with pytest.raises(RobustEnsError, match="has no split 'train'") as err:
        data.load_uint8(f"imagenet-compatible:{folder}", split="train")
    one_line(err)
    table = data.imagenet_labels(f"imagenet-compatible:{folder}")
    assert list(table.labels) == labels and table.targets == tuple((v + 1) % 1000 for v in labels)


def test_missing_data_is_one_line_naming_places_and_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        data.load_uint8("imagenet-compatible", root=tmp_path / "mine")
    msg = one_line(err)
    assert str(tmp_path / "mine") in msg and str(tmp_path / "nowhere" / "imagenet-compatible") in msg
    assert "labels.csv" in msg and "images/" in msg and "ROBUST_ENS_DATA" in msg
    with pytest.raises(DatasetNotFoundError, match="does not exist") as err:
        data.load_uint8(f"imagenet-compatible:{tmp_path / 'absent'}")
    assert "labels.csv" in one_line(err)


def test_a_folder_without_labels_csv_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    make_set(folder, n=2)
    (folder / "labels.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match="has no labels.csv") as err:
        data.load_uint8(f"imagenet-compatible:{folder}")
    assert "filename,label" in one_line(err)
    with pytest.raises(DatasetNotFoundError, match="exist but hold no labels.csv") as err:
        data.load_uint8("imagenet-compatible", root=folder)
    one_line(err)


@pytest.mark.parametrize(("csv", "match"), [
    ("file,class\nimg00.png,1\n", r"lacking filename, label"),
    ("filename\nimg00.png\n", r"lacking label"),
    ("filename,label\n", r"lists no images"),
    ("filename,label\nimg00.png,1000\n", r"label 1000 is outside 0..999 .*convert_nips17"),
    ("filename,label\nimg00.png,-1\n", r"label -1 is outside 0..999"),
    ("filename,label\nimg00.png,cat\n", r"label 'cat' is not an integer"),
    ("filename,label\nimg00.png,1\nimg00.png,2\n", r"listed twice"),
    ("filename,label\n../img00.png,1\n", r"not a plain file name"),
    ("filename,label\nimg00.png,1\ngone.png,2\nlost.png,3\n", r"lists 2 of its 3 files that are not in .*gone.png, lost.png"),
    ("filename,label,targeted_label\nimg00.png,1,1001\n", r"targeted_label 1001 is outside"),
])
def test_a_bad_labels_csv_is_one_line(tmp_path: Path, csv: str, match: str) -> None:
    folder = tmp_path / "set"
    make_set(folder, n=1)
    (folder / "labels.csv").write_text(csv)
    with pytest.raises(RobustEnsError, match=match) as err:
        data.load_uint8(f"imagenet-compatible:{folder}")
    msg = one_line(err)
    assert str(folder / "labels.csv") in msg


def test_the_cache_never_serves_changed_files(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    make_set(folder, n=3, size=(224, 224))
    name = f"imagenet-compatible:{folder}"
    x1, y1 = data.load_uint8(name)
    assert len(list((tmp_path / "cache").glob("imagenet-compatible-*.npz"))) == 1
    x1b, _ = data.load_uint8(name)  # the cached copy
    assert torch.equal(x1, x1b)
    # the same size and mtime, other pixels: a key of names, sizes and times would go stale here
    target = folder / "images" / "img01.png"
    st = target.stat()
    new = np.asarray(Image.open(target)).copy()
    new[0, 0] = 255 - new[0, 0]
    Image.fromarray(new).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    x2, _ = data.load_uint8(name)
    assert np.array_equal(x2[1].numpy().transpose(1, 2, 0), new) and torch.equal(x2[0], x1[0])
    (folder / "labels.csv").write_text("filename,label\nimg00.png,7\nimg01.png,8\nimg02.png,9\n")
    _, y3 = data.load_uint8(name)
    assert y3.tolist() == [7, 8, 9] != y1.tolist()
    x4, _ = data.load_uint8(name, size=112)  # the resize is in the key too
    assert x4.shape[-1] == 112


def test_convert_nips17_shifts_labels_to_zero_based(tmp_path: Path) -> None:
    src = tmp_path / "nips17"
    (src / "images").mkdir(parents=True)
    rows = ["ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL"]
    for i, (true, target) in enumerate([(1, 1000), (1000, 2), (306, 5)]):
        Image.fromarray(np.full((30, 40, 3), i * 50, np.uint8)).save(src / "images" / f"id{i}.png")
        rows.append(f"id{i},http://x,0,0,1,1,{true},{target},http://y,CC,me,http://z")
    (src / "images.csv").write_text("\n".join(rows) + "\n")
    table = data.convert_nips17(src, tmp_path / "ta")
    assert table.filenames == ("id0.png", "id1.png", "id2.png")
    assert table.labels == (0, 999, 305) and table.targets == (999, 1, 4)
    _, y = data.load_uint8(f"imagenet-compatible:{tmp_path / 'ta'}")
    assert y.tolist() == [0, 999, 305]
    with pytest.raises(RobustEnsError, match="already exists"):
        data.convert_nips17(src, tmp_path / "ta")
    (src / "images.csv").write_text(rows[0] + "\nid0,u,0,0,1,1,0,3,u,l,a,p\n")  # 0 is TF-slim's background
    with pytest.raises(RobustEnsError, match="TrueLabel 0 is outside 1..1000") as err:
        data.convert_nips17(src, tmp_path / "ta2")
    one_line(err)
    with pytest.raises(DatasetNotFoundError, match="images.csv") as err:
        imagenet_data.convert_nips17(tmp_path / "none", tmp_path / "ta3")
    one_line(err)


def test_imagefolder_route_still_works(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "tree" / cls / "0.png")
    x, y = data.load_uint8(f"imagefolder:{tmp_path / 'tree'}", size=16)
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1]

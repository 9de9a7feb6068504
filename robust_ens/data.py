"""Datasets as tensors: ``load(name, split, n, seed)`` -> float images in [0, 1] and int64 labels.

Sources:
    * ``"cifar10"``: an ImageFolder tree ``<root>/{train,test}/<class>/*.jpg`` (for example
      ``$ROBUST_ENS_DATA/cifar10-jpeg``) or torchvision's ``cifar-10-batches-py`` folder;
      downloaded through torchvision only when ``download=True``.
    * ``"digits"``: scikit-learn's bundled 8x8 digits (1 channel), the embedded default that needs
      no files. Split: a fixed shuffle, 1,297 train / 500 test images.
    * ``"imagefolder:<path>"``: any ImageNet-style tree (``<path>/<split>/<class>/*`` or
      ``<path>/<class>/*``), resized (shorter side to ``size / 0.875``) and center-cropped to ``size``.
    * ``"imagenet-compatible"`` (found under ``root`` or ``$ROBUST_ENS_DATA/imagenet-compatible/``)
      or ``"imagenet-compatible:<path>"``: TransferAttack's layout, ``images/*.png`` beside
      ``labels.csv`` (``filename,label``, 0-based ImageNet ids), resized to 224x224 as
      TransferAttack does (:mod:`robust_ens.imagenet_data`); one split, ``test``. The NIPS 2017
      development set converts into it with :func:`convert_nips17`.

Splits never alias each other (no silent train/test leakage): every split name reads its own
images, and a split a dataset does not have is an error listing the ones it has
(:func:`splits`). ``digits`` and ``cifar10`` have ``train`` and ``test``. An image folder has the
split folders it holds (``train/``, ``test/``, ``val/`` or ``validation/``); a tree with ``train/``
and ``val/`` but no ``test/`` serves ``val/`` as its ``test`` split (ImageNet's layout) and then
offers no separate ``val``; a tree without split folders is one evaluation set, split ``test``.

``$ROBUST_ENS_DATA`` is resolved once, against the directory the process started in (the first
time it is read), so a relative value like ``../shared/data`` keeps its meaning after a ``chdir``.

A missing dataset's message names ``$ROBUST_ENS_DATA``, every place searched and the layout
expected, then how the caller can provide the data: by default a Python caller's arguments
(``root=``, ``download=True``, ``split=``); a command line names its own options instead through
:func:`hints` (see :func:`robust_ens.commands.common.data_hints`).

Decoded images are cached once as uint8 arrays (``$ROBUST_ENS_CACHE``, default
``~/.cache/robust_ens``), keyed by the source's path and a fingerprint of its files, so the 60,000
CIFAR JPEGs are decoded on the first run only. An ImageNet-compatible set's key is the sha256 of
its labels.csv, every listed image's bytes and the resize rule, so a changed file is never served
from an old cache.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_ens import imagenet_data
from robust_ens.atomic import atomic_write
from robust_ens.errors import DatasetNotFoundError, RobustEnsError
from robust_ens.imagenet_data import convert_nips17 as convert_nips17  # re-exported: data.convert_nips17

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_TEST = 500


@dataclass(frozen=True)
class DatasetInfo:
    """What models and training need to know about a dataset."""

    name: str
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_INFO = {
    "cifar10": DatasetInfo("cifar10", 10, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": DatasetInfo("digits", 10, 1, (0.3,), (0.38,)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Hints:
    """How the caller can provide data: the words a missing dataset's message ends with.

    ``None`` leaves that way out (the caller has no such option). The defaults are a Python
    caller's arguments.
    """

    root: str | None = "pass root=FOLDER to data.load / data.load_uint8 (searched first)"
    download: str | None = "call data.load(..., download=True) on a machine with internet access"
    split: str | None = "pass one as split="


PYTHON_HINTS = Hints()
_HINTS: contextvars.ContextVar[Hints | None] = contextvars.ContextVar("robust_ens_data_hints", default=None)


@contextlib.contextmanager
def hints(value: Hints) -> Iterator[None]:
    """Inside this block, a missing dataset's message ends with ``value`` (a command's own options).

    Example:
        >>> from robust_ens import data
        >>> with data.hints(data.Hints(root="pass --data-root FOLDER", download=None, split=None)):
        ...     data.current_hints().root
        'pass --data-root FOLDER'
    """
    token = _HINTS.set(value)
    try:
        yield
    finally:
        _HINTS.reset(token)


def current_hints() -> Hints:
    """The :class:`Hints` in force (a Python caller's by default)."""
    return _HINTS.get() or PYTHON_HINTS


def cache_dir() -> Path:
    """Where decoded datasets are cached (``$ROBUST_ENS_CACHE`` or ``~/.cache/robust_ens``)."""
    return Path(os.environ.get("ROBUST_ENS_CACHE") or Path.home() / ".cache" / "robust_ens")


_RESOLVED_ENV: dict[str, Path] = {}


def data_env() -> tuple[str, Path] | None:
    """``$ROBUST_ENS_DATA`` as given and as resolved, or ``None`` when unset.

    A relative value is resolved against the working directory at the first call for that value
    (the CLI calls this at start-up, so it is where the command was started) and kept, so a later
    ``chdir`` does not move the data.
    """
    raw = os.environ.get("ROBUST_ENS_DATA", "")
    if not raw:
        return None
    if raw not in _RESOLVED_ENV:
        _RESOLVED_ENV[raw] = Path(raw).expanduser().resolve()
    return raw, _RESOLVED_ENV[raw]


def _describe_env() -> str:
    env = data_env()
    if env is None:
        return "ROBUST_ENS_DATA is not set"
    raw, resolved = env
    if Path(raw).expanduser().is_absolute():
        return f"ROBUST_ENS_DATA={raw}"
    return f"ROBUST_ENS_DATA={raw} (relative, resolved once against the start directory: {resolved})"


def _data_roots(root: str | Path | None) -> list[Path]:
    roots = []
    if root is not None:
        roots.append(Path(root).expanduser())
    env = data_env()
    if env is not None:
        roots.append(env[1])
    roots.append(cache_dir() / "data")
    return roots


_KNOWN = "'cifar10', 'digits', 'imagefolder:<path>', 'imagenet-compatible' or 'imagenet-compatible:<path>'"


def _is_imagenet_compatible(name: str) -> bool:
    return name == imagenet_data.NAME or name.startswith(imagenet_data.PREFIX)


def info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Number of classes, channels and normalization statistics of a dataset."""
    if name in _INFO:
        return _INFO[name]
    if _is_imagenet_compatible(name):
        return DatasetInfo(name, imagenet_data.NUM_CLASSES, 3, IMAGENET_MEAN, IMAGENET_STD)
    if name.startswith("imagefolder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        folders = _split_folders(path) if path.is_dir() else {}
        base = folders.get("train") or next(iter(folders.values()), path)
        classes = _classes(base) if base.is_dir() else []
        return DatasetInfo(name, len(classes), 3, IMAGENET_MEAN, IMAGENET_STD)
    raise RobustEnsError(f"unknown dataset {name!r}; use {_KNOWN}")


FIXED_SPLITS = {"cifar10": ("train", "test"), "digits": ("train", "test")}


def splits(name: str) -> tuple[str, ...]:
    """The split names dataset ``name`` offers; any other split is an error.

    Offered splits never share images: ``digits`` and ``cifar10`` offer ``train`` and ``test``;
    an ``imagefolder:<path>`` offers the split folders it has (see the module docstring);
    ``imagenet-compatible`` (TransferAttack's 1,000 images) is one evaluation set, ``test``.

    Example:
        >>> from robust_ens import data
        >>> data.splits("digits")
        ('train', 'test')
    """
    if name in FIXED_SPLITS:
        return FIXED_SPLITS[name]
    if _is_imagenet_compatible(name):
        return ("test",)
    if name.startswith("imagefolder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(f"image folder {path} does not exist (dataset {name!r})")
        return tuple(_split_folders(path))
    raise RobustEnsError(f"unknown dataset {name!r}; use {_KNOWN}")


def check_split(name: str, split: str) -> None:
    """Raise a one-line error naming the offered splits when ``name`` has no split ``split``."""
    offered = splits(name)
    if split in offered:
        return
    hint = ""
    if name.startswith("imagefolder:") and split == "val" and "test" in offered:
        path = Path(name.split(":", 1)[1]).expanduser()
        if not (path / "test").is_dir() and any((path / v).is_dir() for v in ("val", "validation")):
            hint = " (its val/ folder serves as the test split because there is no test/ folder)"
        elif not (path / "test").is_dir():
            hint = " (it has no split folders, so all its images form the test split)"
    elif name.startswith("imagefolder:") and split == "train" and offered == ("test",):
        hint = (" (it has no split folders, so all its images form the test split; "
                "to train, arrange it as <path>/train/<class>/* and <path>/test/<class>/*)")
    how = current_hints().split
    raise RobustEnsError(
        f"dataset {name!r} has no split {split!r}{hint}; its splits are: {', '.join(offered)}"
        + (f" ({how})" if how else "")
    )


# --------------------------------------------------------------------------- sources


def _classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_imagefolder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = _classes(folder)
    files: list[Path] = []
    labels: list[int] = []
    for idx, cls in enumerate(classes):
        for f in sorted((folder / cls).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(idx)
    return files, labels, classes


def _fingerprint(folder: Path, files: Sequence[Path], extra: str = "") -> str:
    h = hashlib.sha256(f"{folder.resolve()}|{len(files)}|{extra}".encode())
    for f in files[:: max(1, len(files) // 256)]:  # a sample of names and sizes, cheap to compute
        h.update(f"{f.relative_to(folder)}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _decode(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as src:
        im = src.convert("RGB")
        if size is not None:
            w, h = im.size
            scale = round(size / 0.875) / min(w, h)
            if scale != 1:
                new_size = (max(size, round(w * scale)), max(size, round(h * scale)))
                im = im.resize(new_size, Image.Resampling.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return arr.transpose(2, 0, 1)


def _decode_all(files: Sequence[Path], size: int | None, progress: bool, desc: str) -> np.ndarray:
    from robust_ens import progress as _progress

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        jobs = pool.map(lambda f: _decode(f, size), files)
        arrays = list(_progress.bar(jobs, total=len(files), desc=desc, enable=progress, unit="img"))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise RobustEnsError(
            f"images in {desc} have different sizes {sorted(shapes)[:4]}...; pass size= to resize them"
        )
    return np.stack(arrays)


def _cached(key: str, build: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["x"], z["y"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, err)
    x, y = build()
    atomic_write(path, lambda tmp: np.savez(tmp, x=x, y=y), suffix=".npz")
    return x, y


def _imagefolder_arrays(folder: Path, size: int | None, progress: bool, tag: str) -> tuple[np.ndarray, np.ndarray]:
    files, labels, _ = _list_imagefolder(folder)
    if not files:
        raise DatasetNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders")
    key = f"{tag}-{_fingerprint(folder, files, str(size))}"

    def build() -> tuple[np.ndarray, np.ndarray]:
        log.info("decoding %d images from %s (once; cached in %s)", len(files), folder, cache_dir())
        return _decode_all(files, size, progress, f"decode {folder.name}"), np.asarray(labels, dtype=np.int64)

    return _cached(key, build)


def _torchvision_cifar(folder: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(folder), train=split == "train", download=download)
    return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)


def find_cifar10(root: str | Path | None = None, split: str = "test") -> tuple[str, Path] | tuple[None, list[Path]]:
    """Locate CIFAR-10: ``("imagefolder" | "torchvision", path)`` or ``(None, places searched)``."""
    searched: list[Path] = []
    for base in _data_roots(root):
        for cand in (base, base / "cifar10-jpeg", base / "cifar10"):
            searched.append(cand / split)
            if (cand / split).is_dir() and set(CIFAR10_CLASSES) <= set(_classes(cand / split)):
                return "imagefolder", cand / split
        for cand in (base, base / "cifar10", base / "cifar-10"):
            searched.append(cand / "cifar-10-batches-py")
            if (cand / "cifar-10-batches-py").is_dir():
                return "torchvision", cand
    return None, searched


def _cifar10_arrays(split: str, root: str | Path | None, download: bool, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    kind, where = find_cifar10(root, split)
    if kind == "imagefolder":
        assert isinstance(where, Path)
        files_classes = _classes(where)
        if files_classes != sorted(CIFAR10_CLASSES):
            raise RobustEnsError(f"{where} has class folders {files_classes}, expected CIFAR-10's {CIFAR10_CLASSES}")
        return _imagefolder_arrays(where, None, progress, f"cifar10-{split}")
    if kind == "torchvision":
        assert isinstance(where, Path)
        return _torchvision_cifar(where, split, download=False)
    if download:
        target = cache_dir() / "data"
        target.mkdir(parents=True, exist_ok=True)
        return _torchvision_cifar(target, split, download=True)
    raise DatasetNotFoundError(_cifar10_missing(split, where))  # type: ignore[arg-type]


def _cifar10_missing(split: str, searched: list[Path]) -> str:
    """One line: where CIFAR-10 was looked for, the layout expected, and how to provide it."""
    ways = ["set ROBUST_ENS_DATA to a folder that holds it"]
    how = current_hints()
    ways += [w for w in (how.root, how.download) if w]
    return (
        f"CIFAR-10 ({split} split) not found; looked in: {', '.join(str(p) for p in searched)} ({_describe_env()}). "
        "Expected layout: <folder>/cifar10-jpeg/{train,test}/<class>/*.jpg (an ImageFolder tree with CIFAR-10's "
        "10 class folders) or torchvision's <folder>/cifar-10-batches-py/. To provide it: "
        + "; or ".join(ways) + "."
    )


def imagenet_labels(name: str = imagenet_data.NAME, root: str | Path | None = None) -> imagenet_data.LabelsTable:
    """Find an ImageNet-compatible set and read its checked ``labels.csv`` (with ``targeted_label``).

    ``"imagenet-compatible:<path>"`` names the folder; ``"imagenet-compatible"`` is looked for in
    ``root`` (the folder itself or its ``imagenet-compatible/``), then
    ``$ROBUST_ENS_DATA/imagenet-compatible/`` and the cache's ``data/imagenet-compatible/``.

    Raises:
        DatasetNotFoundError: one line naming every place searched, the layout and how to provide it.
        RobustEnsError: a ``labels.csv`` that does not follow the layout (see
            :func:`robust_ens.imagenet_data.read_labels`).
    """
    if name.startswith(imagenet_data.PREFIX):
        folder = Path(name[len(imagenet_data.PREFIX):]).expanduser()
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"ImageNet-compatible folder {folder} does not exist (dataset {name!r}); "
                f"expected layout: {imagenet_data.LAYOUT}"
            )
        return imagenet_data.read_labels(folder)
    if name != imagenet_data.NAME:
        raise RobustEnsError(f"not an ImageNet-compatible dataset name: {name!r}; use {_KNOWN}")
    searched = imagenet_data.candidates(_data_roots(root))
    for cand in searched:
        if imagenet_data.is_dataset_folder(cand):
            return imagenet_data.read_labels(cand)
    ways = ["set ROBUST_ENS_DATA to a folder that holds imagenet-compatible/"]
    ways += [w for w in (current_hints().root,) if w]
    raise DatasetNotFoundError(imagenet_data.missing_message(searched, _describe_env(), ways))


def _imagenet_compatible_arrays(table: imagenet_data.LabelsTable, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    key = f"imagenet-compatible-{imagenet_data.content_digest(table, size)[:32]}"

    def build() -> tuple[np.ndarray, np.ndarray]:
        log.info("decoding %d images from %s (once; cached in %s)", len(table.filenames), table.folder, cache_dir())
        return imagenet_data.decode_all(table, size, progress)

    return _cached(key, build)


def _digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 1797 x 1 x 8 x 8
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))  # fixed split, independent of the subset seed
    idx = perm[:DIGITS_TEST] if split == "test" else perm[DIGITS_TEST:]
    return x[idx], y[idx]


def _split_folders(path: Path) -> dict[str, Path]:
    """Split name -> folder of an image-folder tree; offered splits never share a folder."""
    val = next((path / v for v in ("val", "validation") if (path / v).is_dir()), None)
    out: dict[str, Path] = {}
    if (path / "train").is_dir():
        out["train"] = path / "train"
    if (path / "test").is_dir():
        out["test"] = path / "test"
        if val is not None:
            out["val"] = val
    elif val is not None:
        out["test"] = val  # ImageNet's layout: train/ and val/, the latter evaluated as the test set
    if not out:
        return {"test": path}  # no split folders: one evaluation set
    seen: dict[Path, str] = {}
    for split, folder in out.items():
        real = folder.resolve()
        if real in seen:
            raise RobustEnsError(
                f"image folder {path}: splits {seen[real]!r} and {split!r} are the same folder {real}; "
                "give each split its own images"
            )
        seen[real] = split
    return out


def _imagefolder_split(path: Path, split: str, name: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"image folder {path} does not exist (dataset {name!r})")
    check_split(name, split)
    return _split_folders(path)[split]


def load_uint8(
    name: str,
    split: str = "test",
    *,
    root: str | Path | None = None,
    download: bool = False,
    size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as uint8 NCHW images and int64 labels (CPU), decoded once and cached.

    Args:
        name: ``"cifar10"``, ``"digits"``, ``"imagefolder:<path>"``, ``"imagenet-compatible"`` or
            ``"imagenet-compatible:<path>"``.
        split: One of :func:`splits` ``(name)``; any other is an error listing those.
        root: Extra folder to search first (before ``$ROBUST_ENS_DATA``).
        download: Allow torchvision to download CIFAR-10 when no local copy is found.
        size: Image size for ``imagefolder:`` and ``imagenet-compatible`` sources (default 224).
        progress: Show a progress bar while decoding for the first time.

    Returns:
        ``(x, y)``: uint8 ``[N, C, H, W]`` and int64 ``[N]`` CPU tensors.
    """
    if split not in ("train", "test", "val"):
        raise RobustEnsError(f"split must be 'train', 'test' or 'val', got {split!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise RobustEnsError(f"size must be a positive integer, got {size!r}")
    if name == "cifar10":
        check_split(name, split)
        x, y = _cifar10_arrays(split, root, download, progress)
    elif name == "digits":
        check_split(name, split)
        x, y = _digits_arrays(split)
    elif name.startswith("imagefolder:"):
        folder = _imagefolder_split(Path(name.split(":", 1)[1]).expanduser(), split, name)
        x, y = _imagefolder_arrays(folder, size or 224, progress, f"imagefolder-{split}")
    elif _is_imagenet_compatible(name):
        check_split(name, split)
        x, y = _imagenet_compatible_arrays(imagenet_labels(name, root), size or imagenet_data.SIZE, progress)
    else:
        raise RobustEnsError(f"unknown dataset {name!r}; use {_KNOWN}")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))


def subset_indices(labels: torch.Tensor, n: int | None, seed: int = 0, balanced: bool = False) -> torch.Tensor:
    """Deterministic subset: the same ``(n, seed)`` always gives the same indices.

    ``balanced=True`` takes ``n // classes`` examples of each class (``n`` must divide evenly).
    Indices come back sorted, so a larger ``n`` with the same seed is not required to contain a
    smaller one, but the same call is bit-for-bit repeatable.
    """
    total = len(labels)
    if n is None:
        return torch.arange(total)
    if not isinstance(n, int) or n < 1:
        raise RobustEnsError(f"n must be a positive integer or None, got {n!r}")
    if n > total:
        raise RobustEnsError(f"n={n} exceeds the {total} examples in this split")
    g = torch.Generator().manual_seed(int(seed))
    if not balanced:
        return torch.randperm(total, generator=g)[:n].sort().values
    classes = torch.unique(labels)
    if n % len(classes):
        raise RobustEnsError(f"balanced=True needs n divisible by the {len(classes)} classes, got n={n}")
    per = n // len(classes)
    chosen = []
    for c in classes.tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per:
            raise RobustEnsError(f"class {c} has only {len(idx)} examples, fewer than the {per} balanced=True needs")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    return torch.cat(chosen).sort().values


def load(
    name: str,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    root: str | Path | None = None,
    device: str | torch.device | None = None,
    balanced: bool = False,
    *,
    download: bool = False,
    size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as float images in [0, 1] (NCHW) and int64 labels.

    Args:
        name: ``"cifar10"``, ``"digits"``, ``"imagefolder:<path>"``, ``"imagenet-compatible"`` or
            ``"imagenet-compatible:<path>"``.
        split: One of :func:`splits` ``(name)`` (``"train"``, ``"test"``; ``"val"`` for image
            folders that have one); any other is an error listing them.
        n: Number of examples (``None``: all). The same ``(n, seed)`` gives the same examples.
        seed: Seed of the subset choice.
        root: Extra folder to search first (before ``$ROBUST_ENS_DATA``).
        device: Where to put the tensors.
        balanced: Take ``n / classes`` examples per class.
        download: Allow torchvision to download CIFAR-10 when no local copy is found.
        size: Image size for ``imagefolder:`` and ``imagenet-compatible`` sources (default 224).
        progress: Show a progress bar while decoding for the first time.

    Returns:
        ``(x, y)``: ``x`` float32 ``[N, C, H, W]`` in [0, 1], ``y`` int64 ``[N]``.

    Raises:
        DatasetNotFoundError: listing every place searched and how to provide the data.

    Example:
        >>> from robust_ens import data
        >>> x, y = data.load("digits", n=10, seed=0)
        >>> x.shape, x.dtype, y.dtype
        (torch.Size([10, 1, 8, 8]), torch.float32, torch.int64)
    """
    xu, y = load_uint8(name, split, root=root, download=download, size=size, progress=progress)
    idx = subset_indices(y, n, seed, balanced)
    x = xu[idx].to(device or "cpu").float().div_(255.0)
    return x, y[idx].to(device or "cpu")

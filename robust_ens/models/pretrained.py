"""Pretrained ImageNet weights by tag, without surprises: the local cache first, the network only when asked.

Two sources, both named the way their libraries name them:

* ``timm:<arch>.<tag>`` (``timm:resnet50.tv_in1k``; a bare ``timm:<arch>`` means timm's default
  tag): the file timm itself would load, looked up in Hugging Face's cache (``$HF_HUB_CACHE``,
  ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``; ``model.safetensors``
  first, then ``pytorch_model.bin``, as timm does) and then in torch hub's ``checkpoints/`` folder
  for tags that only have a URL.
* ``torchvision:<arch>.<WEIGHTS>`` (``torchvision:mobilenet_v2.IMAGENET1K_V2``; a bare arch means
  ``DEFAULT``): torchvision's own builder with its own weights, from torch hub's cache
  (``$TORCH_HOME/hub/checkpoints/<file of the weights' URL>``), the file's sha256 checked against
  the hash prefix torchvision puts in its name. TransferAttack loads its CNNs this way
  (``weights="DEFAULT"``), and timm has no copy of torchvision's ``mobilenet_v2`` weights.

Nothing is downloaded unless ``ROBUST_ENS_ONLINE=1`` is set (then the files go to those same
caches, as ``timm.create_model(..., pretrained=True)`` and torchvision would put them). Without it a
tag that is not cached is refused in one line naming the command that fetches it on a machine with
internet access, so a machine without network never waits on a connection.

Every loaded file's sha256 is what entries record: :func:`weight_files` gives ``{name: sha256}``
(the same mapping as ``Target.files`` in :mod:`robust_ens.bench.targets`), for a tag or for a
``--weights`` file.

:data:`TRANSFERATTACK_MODELS` lists the eight models TransferAttack's README evaluates, with the
weights it loads and the normalization its ``wrap_model`` applies (see :class:`ReferenceModel`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from robust_ens.errors import CheckpointError, RobustEnsError
from robust_ens.models.weights_io import sha256_file

ONLINE_ENV = "ROBUST_ENS_ONLINE"
TIMM = "timm:"
TORCHVISION = "torchvision:"
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order: the safe file first


def online() -> bool:
    """True when ``$ROBUST_ENS_ONLINE`` allows downloads (``1``, ``true`` or ``yes``)."""
    return os.environ.get(ONLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def hf_cache_dir() -> Path:
    """Hugging Face's hub cache, read from the environment now (huggingface_hub's own precedence)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints() -> Path:
    """torch hub's ``checkpoints/`` folder (``$TORCH_HOME/hub/checkpoints``), where URL weights live."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _bare(spec: str, prefix: str) -> str:
    return spec[len(prefix):] if spec.startswith(prefix) else spec


# --------------------------------------------------------------------------- timm


def timm_cfg(tag: str) -> Any:
    """timm's pretrained config of ``tag`` (``arch.tag`` or ``arch`` for its default tag).

    Raises:
        RobustEnsError: timm has no such architecture, or no pretrained weights of that tag
            (naming the tags it has).
    """
    import timm
    from timm.models import get_pretrained_cfg

    tag = _bare(tag, TIMM)
    arch = tag.split(".")[0]
    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch}*")[:5]
        raise RobustEnsError(f"timm has no model {arch!r}; close names: {close or 'none'}")
    try:
        cfg = get_pretrained_cfg(tag)
    except RuntimeError:  # a tag the architecture does not have
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = timm.list_pretrained(f"{arch}.*")
        raise RobustEnsError(f"timm has no pretrained weights {tag!r}; its tags: {', '.join(tags) or 'none'}")
    return cfg


def full_tag(tag: str) -> str:
    """``arch.tag`` with timm's default tag filled in (``vit_base_patch16_224`` -> ``...augreg2_in21k_ft_in1k``)."""
    cfg = timm_cfg(tag)
    return f"{_bare(tag, TIMM).split('.')[0]}.{cfg.tag}" if cfg.tag else _bare(tag, TIMM)


def fetch_command(spec: str) -> str:
    """The command that puts ``spec``'s weights into the local cache on a machine with internet access."""
    if spec.startswith(TORCHVISION):
        arch, weights = _tv_split(spec)
        return (f"python -c \"import torchvision; torchvision.models.get_model('{arch}', "
                f"weights='{weights}')\"")
    return f"python -c \"import timm; timm.create_model('{full_tag(spec)}', pretrained=True)\""


def _hf_candidates(cfg: Any) -> tuple[str, str | None, tuple[str, ...]]:
    repo, _, revision = str(cfg.hf_hub_id).partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
    return repo, revision or None, files


def timm_cached_file(tag: str) -> Path | None:
    """The local file timm would load for ``tag``, or ``None`` when it is not cached. Never networks."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm_cfg(tag)
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        repo, revision, files = _hf_candidates(cfg)
        for name in files:
            found = try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir(), revision=revision)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.url:
        local = torch_hub_checkpoints() / Path(urlparse(cfg.url).path).name
        if local.is_file():
            return local
    return None


def _timm_download(tag: str) -> Path:
    cfg = timm_cfg(tag)
    try:
        if cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            repo, revision, files = _hf_candidates(cfg)
            for name in files:
                try:
                    return Path(hf_hub_download(repo, name, revision=revision, cache_dir=hf_cache_dir()))
                except EntryNotFoundError:
                    continue
        if cfg.url:
            from timm.models._hub import download_cached_file

            return Path(download_cached_file(cfg.url, check_hash=False, progress=False))
    except Exception as err:  # noqa: BLE001 - any network or hub error becomes one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RobustEnsError(f"could not download timm weights {full_tag(tag)!r} ({ONLINE_ENV}=1): {first}") from None
    raise RobustEnsError(f"timm weights {full_tag(tag)!r} name no file that can be downloaded")


def _not_cached(spec: str, where: str) -> RobustEnsError:
    return RobustEnsError(
        f"pretrained weights {spec!r} are not in the local cache ({where}) and this process does not download "
        f"(set {ONLINE_ENV}=1 to allow it); on a machine with internet run: {fetch_command(spec)} and copy its "
        "cache here, or pass --weights FILE"
    )


def timm_weights_path(tag: str) -> Path:
    """The file behind timm tag ``tag``: cached, or downloaded when :func:`online`.

    Raises:
        RobustEnsError: one line naming the tag, where it was looked for and the fetch command.
    """
    found = timm_cached_file(tag)
    if found is not None:
        return found
    if online():
        return _timm_download(tag)
    cfg = timm_cfg(tag)
    where = []
    if cfg.hf_hub_id:
        repo, _, files = _hf_candidates(cfg)
        where.append(f"{hf_cache_dir()} for {repo}: {' or '.join(files)}")
    if cfg.url:
        where.append(str(torch_hub_checkpoints() / Path(urlparse(cfg.url).path).name))
    raise _not_cached(TIMM + full_tag(tag), "; ".join(where))


def create_timm_pretrained(tag: str, *, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """``timm.create_model(tag, pretrained=True, ...)`` loading the file :func:`timm_weights_path` found.

    timm's own loader reads it (its checkpoint filters, classifier reset for another
    ``num_classes``, first-conv adaptation for another ``in_chans``), from that file only.
    """
    import timm

    path = timm_weights_path(tag)
    try:
        return timm.create_model(_bare(tag, TIMM), pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except TypeError as err:
        raise RobustEnsError(f"timm model {tag!r} does not take these options {sorted(kwargs)}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a damaged or unfitting file (safetensors, torch, timm errors)
        why = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{path} could not be loaded into timm model {tag!r}: {why}") from None


# --------------------------------------------------------------------------- torchvision


def _tv_split(spec: str) -> tuple[str, str]:
    arch, _, weights = _bare(spec, TORCHVISION).partition(".")
    return arch, weights or "DEFAULT"


def torchvision_weights(spec: str) -> Any:
    """torchvision's weights enum member for ``torchvision:<arch>[.<WEIGHTS>]`` (``DEFAULT`` resolved).

    Raises:
        RobustEnsError: an unknown architecture or weights name (naming the ones it has).
    """
    import torchvision.models as tvm

    arch, name = _tv_split(spec)
    if arch not in tvm.list_models():
        raise RobustEnsError(f"torchvision has no model {arch!r}; e.g. {', '.join(tvm.list_models()[:6])}, ...")
    enum = tvm.get_model_weights(arch)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise RobustEnsError(
            f"torchvision model {arch!r} has no weights {name!r}; it has: {', '.join(w.name for w in enum)}, DEFAULT"
        ) from None


def torchvision_cached_file(spec: str) -> Path | None:
    """The torch hub file of ``spec``'s weights, or ``None`` when it is not cached. Never networks."""
    local = torch_hub_checkpoints() / Path(urlparse(torchvision_weights(spec).url).path).name
    return local if local.is_file() else None


def _check_tv_hash(path: Path, sha: str) -> None:
    stem = path.stem.rsplit("-", 1)
    if len(stem) == 2 and len(stem[1]) >= 8 and not sha.startswith(stem[1]):
        raise CheckpointError(f"{path}: its sha256 {sha[:12]}... does not start with {stem[1]!r} from its name; "
                              "the download is damaged, delete it and fetch it again")


# What torchvision's builders set when given weights, beyond num_classes (``_ovewrite_named_param``):
# repeated here because the state dict is read by weights_io (tensors only), not by torch.hub's
# unpickler. After loading, the auxiliary heads a caller did not ask for are dropped, as there.
_TV_WEIGHT_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
}
_TV_AUX_DEFAULT = {"inception_v3": True, "googlenet": False}


def _tv_download(weights: Any) -> Path:
    import torch.hub

    local = torch_hub_checkpoints() / Path(urlparse(weights.url).path).name
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, str(local), hash_prefix=local.stem.rsplit("-", 1)[-1],
                                       progress=False)
    except Exception as err:  # noqa: BLE001 - any network error becomes one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RobustEnsError(f"could not download {weights.url} ({ONLINE_ENV}=1): {first}") from None
    return local


def create_torchvision_pretrained(spec: str, *, num_classes: int = 1000, **kwargs: Any) -> tuple[nn.Module, Path]:
    """torchvision's architecture with its pretrained weights, read as tensors from the local cache.

    The file is torch hub's (``$TORCH_HOME/hub/checkpoints``), downloaded there only when
    :func:`online`; its sha256 must start with the hash in its name, and it is read without
    unpickling code. The builder gets what torchvision's own builder sets for weights
    (``num_classes``; Inception's ``transform_input=True``, so TransferAttack's double
    normalization is reproduced).

    Returns:
        The network and the file it loaded.
    """
    import torchvision.models as tvm

    from robust_ens.models.weights_io import load_state_checked, load_tensors

    weights = torchvision_weights(spec)
    arch, _ = _tv_split(spec)
    if num_classes != len(weights.meta["categories"]):
        raise RobustEnsError(f"{spec!r} has {len(weights.meta['categories'])} classes, not num_classes={num_classes}")
    path = torchvision_cached_file(spec)
    if path is None and not online():
        raise _not_cached(f"{TORCHVISION}{arch}.{weights.name}",
                          str(torch_hub_checkpoints() / Path(urlparse(weights.url).path).name))
    if path is None:
        path = _tv_download(weights)
    _check_tv_hash(path, sha256_file(path))
    keep_aux = kwargs.get("aux_logits", _TV_AUX_DEFAULT.get(arch, True))
    build = {**_TV_WEIGHT_KWARGS.get(arch, {}), **kwargs, "num_classes": num_classes}
    if arch in _TV_WEIGHT_KWARGS:
        build["aux_logits"] = True
    if arch.startswith("vit_") and "image_size" not in kwargs:
        build["image_size"] = weights.meta["min_size"][0]
    try:
        net = tvm.get_model(arch, weights=None, **build)
    except TypeError as err:
        raise RobustEnsError(f"torchvision model {arch!r} does not take these options {sorted(kwargs)}: {err}") from None
    load_state_checked(net, load_tensors(path), f"{path} does not fit torchvision {arch!r}")
    if arch in _TV_WEIGHT_KWARGS and not keep_aux:
        net.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(net, name):
                setattr(net, name, None)
    return net, path


# --------------------------------------------------------------------------- records


def weights_path(spec: str) -> Path:
    """The file a pretrained ``timm:`` or ``torchvision:`` spec loads (cached, or downloaded when online)."""
    if spec.startswith(TORCHVISION):
        found = torchvision_cached_file(spec)
        if found is not None:
            return found
        arch, _ = _tv_split(spec)
        w = torchvision_weights(spec)
        if online():
            return _tv_download(w)
        raise _not_cached(f"{TORCHVISION}{arch}.{w.name}", str(torch_hub_checkpoints() / Path(urlparse(w.url).path).name))
    return timm_weights_path(spec)


def record_name(spec: str) -> str:
    """A machine-independent name of ``spec``'s weights file, e.g. ``timm:resnet50.tv_in1k/model.safetensors``."""
    path = weights_path(spec)
    if spec.startswith(TORCHVISION):
        arch, _ = _tv_split(spec)
        return f"{TORCHVISION}{arch}.{torchvision_weights(spec).name}/{path.name}"
    return f"{TIMM}{full_tag(spec)}/{path.name}"


def weight_files(spec: str, weights_file: str | Path | None = None) -> dict[str, str]:
    """``{name: sha256}`` of what ``spec`` loads: its pretrained file, or ``weights_file`` when given.

    The mapping has the shape of ``Target.files`` (:mod:`robust_ens.bench.targets`) and of zoo
    entries' ``files``, so a caller records it as is.

    Args:
        spec: ``timm:<arch>[.<tag>]`` or ``torchvision:<arch>[.<WEIGHTS>]``.
        weights_file: A local weights file (``--weights``) that replaces the pretrained one.

    Raises:
        RobustEnsError: the weights are not cached and :func:`online` is off (one line, with the
            fetch command), or ``weights_file`` does not exist.

    Example:
        >>> from robust_ens.models import pretrained
        >>> pretrained.weight_files("timm:resnet50.tv_in1k")  # doctest: +SKIP
        {'timm:resnet50.tv_in1k/model.safetensors': '...'}
    """
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise RobustEnsError(f"--weights {path} does not exist")
        return {str(path): sha256_file(path)}
    return {record_name(spec): sha256_file(weights_path(spec))}


# --------------------------------------------------------------------------- TransferAttack's models


@dataclass(frozen=True)
class ReferenceModel:
    """One of TransferAttack's evaluation models and how to load it here.

    Attributes:
        name: TransferAttack's name (``utils.cnn_model_paper`` / ``vit_model_paper``).
        spec: What loads the very weights TransferAttack loads (torchvision ``weights="DEFAULT"``
            for the CNNs, ``timm.create_model(name, pretrained=True)`` for the transformers).
        timm_tag: The timm tag holding those weights, where timm has them (``None``: it has not).
        input_size: The side TransferAttack resizes its 224x224 images to inside ``wrap_model``.
        mean: The normalization mean TransferAttack's ``wrap_model`` applies.
        std: Its std.
        note: What differs between the routes, if anything.
    """

    name: str
    spec: str
    timm_tag: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str = ""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def doubly_normalized() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that give a network expecting ``(x - 0.5) / 0.5`` what TransferAttack's Inception gets.

    TransferAttack normalizes with mean = std = 0.5, then torchvision's ``inception_v3`` (its
    DEFAULT weights set ``transform_input=True``) maps that, as if it were ImageNet-normalized,
    to ``z * std_c / 0.5 + (mean_c - 0.5) / 0.5``. The network thus sees
    ``4 std_c x - 2 std_c + 2 mean_c - 1`` = ``(x - m_c) / s_c`` with ``s_c = 1 / (4 std_c)`` and
    ``m_c = (2 std_c - 2 mean_c + 1) / (4 std_c)``: use these with timm's ``inception_v3.tv_in1k``
    (which expects ``(x - 0.5) / 0.5``) to reproduce TransferAttack's numbers.
    """
    mean = tuple((2 * s - 2 * m + 1) / (4 * s) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    std = tuple(1 / (4 * s) for s in IMAGENET_STD)
    return mean, std


TRANSFERATTACK_MODELS: dict[str, ReferenceModel] = {m.name: m for m in (
    ReferenceModel("resnet50", "torchvision:resnet50.IMAGENET1K_V2", "resnet50.tv2_in1k", 224,
                   IMAGENET_MEAN, IMAGENET_STD,
                   "torchvision DEFAULT is IMAGENET1K_V2 (resnet50-11ad3fa6.pth, timm tv2_in1k); "
                   "IMAGENET1K_V1 (tv_in1k) is the older, less robust one (TransferAttack issue #45)"),
    ReferenceModel("vgg16", "torchvision:vgg16.IMAGENET1K_V1", "vgg16.tv_in1k", 224, IMAGENET_MEAN, IMAGENET_STD,
                   "DEFAULT is IMAGENET1K_V1; timm's copy has the classifier as convolutions (same function at 224)"),
    ReferenceModel("mobilenet_v2", "torchvision:mobilenet_v2.IMAGENET1K_V2", None, 224, IMAGENET_MEAN, IMAGENET_STD,
                   "DEFAULT is IMAGENET1K_V2; timm has no copy (mobilenetv2_100.ra_in1k is other weights)"),
    ReferenceModel("inception_v3", "torchvision:inception_v3.IMAGENET1K_V1", "inception_v3.tv_in1k", 299,
                   INCEPTION_MEAN, INCEPTION_STD,
                   "torchvision's model applies transform_input on top of this normalization (see "
                   "doubly_normalized() for timm's copy); timm's file name is torchvision's older "
                   "inception_v3_google-1a9a5a14.pth, DEFAULT's is -0cc3c7bd (not compared offline)"),
    ReferenceModel("vit_base_patch16_224", "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k",
                   "vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, INCEPTION_MEAN, INCEPTION_STD,
                   "timm's default tag since timm 0.9; older timm loaded the augreg in21k->in1k weights by this name"),
    ReferenceModel("pit_b_224", "timm:pit_b_224.in1k", "pit_b_224.in1k", 224, IMAGENET_MEAN, IMAGENET_STD),
    ReferenceModel("visformer_small", "timm:visformer_small.in1k", "visformer_small.in1k", 224,
                   IMAGENET_MEAN, IMAGENET_STD),
    ReferenceModel("swin_tiny_patch4_window7_224", "timm:swin_tiny_patch4_window7_224.ms_in1k",
                   "swin_tiny_patch4_window7_224.ms_in1k", 224, IMAGENET_MEAN, IMAGENET_STD),
)}


__all__ = [
    "ONLINE_ENV", "TRANSFERATTACK_MODELS", "ReferenceModel", "create_timm_pretrained", "create_torchvision_pretrained",
    "doubly_normalized", "fetch_command", "full_tag", "hf_cache_dir", "online", "record_name", "timm_cached_file",
    "timm_cfg", "timm_weights_path", "torch_hub_checkpoints", "torchvision_cached_file", "torchvision_weights",
    "weight_files", "weights_path",
]

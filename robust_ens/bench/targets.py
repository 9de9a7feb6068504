"""Targets: one resolver from a spec to a module that takes [0, 1] images, with what it loaded.

Spec forms (``resolve_target``):

=================================  ===========================================================
``zoo:NAME``                       a committed reference checkpoint (sha256 checked)
``PATH`` (stem, .safetensors,      a checkpoint written by ``models.save_checkpoint``; a folder
.json or a folder)                 of ``member*.json`` checkpoints is an ensemble
``pkg.module:factory``             ``factory()`` returns an ``nn.Module`` taking [0, 1] images;
                                   ``weights=PATH`` loads safetensors or a tensors-only pickle
``timm:NAME``                      a timm architecture sized to the dataset, with ``weights``;
                                   on an ImageNet dataset (1,000 classes) ``timm:ARCH.TAG``
                                   without weights loads the tag's pretrained file from the local
                                   cache (:mod:`robust_ens.models.pretrained`), as :class:`InputSized`
``torchvision:ARCH.WEIGHTS``       torchvision's pretrained weights, the same way (ImageNet only)
``timm-random:NAME@SEED``          a timm ImageNet architecture with random weights drawn from
                                   ``SEED``, wrapped the same way: tests and timing only
``SPEC,SPEC,...``                  the resolved parts joined into one logit-averaging Ensemble
=================================  ===========================================================

Every resolved :class:`Target` records the sha256 of each file it loaded (for a factory without
weights: of its state dict), so entries and adversarial-set keys name exactly what was used.
Surrogates that a protocol trains from a recipe (:func:`resolve_trained`) are trained once and
cached under ``$ROBUST_ENS_CACHE/surrogates``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import data
from robust_ens.canonical import sha256_json
from robust_ens.ensemble import Ensemble
from robust_ens.errors import CheckpointError, RobustEnsError
from robust_ens.evaluation import eval_mode, model_device
from robust_ens.precision import REFERENCE_PRECISION

log = logging.getLogger(__name__)

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class Target:
    """A resolved model.

    Attributes:
        name: Display name (a protocol's surrogate name, or the spec).
        spec: The spec it was resolved from.
        module: The model, in eval mode, taking [0, 1] images and returning logits.
        files: ``{loaded file or state dict: sha256}``.
        architecture: Architecture name(s).
        n_members: Ensemble size (1 for a single model).
        costs: What the checkpoint records of its training and inference cost
            (``train_seconds_per_epoch``, ``inference_seconds_per_example``, ...), when it does.
    """

    name: str
    spec: str
    module: nn.Module
    files: dict[str, str] = field(default_factory=dict)
    architecture: str = "unknown"
    n_members: int = 1
    costs: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256s(self) -> list[str]:
        """The sha256 of every loaded file, in load order."""
        return list(self.files.values())

    @property
    def parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.module.parameters())

    def describe(self) -> dict[str, Any]:
        """JSON description for records and entries."""
        return {"name": self.name, "spec": self.spec, "architecture": self.architecture,
                "n_members": self.n_members, "parameters": self.parameters, "sha256": self.sha256s,
                **({"costs": self.costs} if self.costs else {})}


def _state_sha(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def module_target(module: nn.Module, name: str) -> Target:
    """A model already in memory as a target (its mode untouched); its sha256 is that of its state dict."""
    members = len(module) if isinstance(module, Ensemble) else 1
    return Target(name, name, module, {name: _state_sha(module)}, str(getattr(module, "arch", "unknown")), members)


COST_KEYS = ("train_seconds", "train_seconds_per_epoch", "warmup_seconds_per_epoch", "inference_seconds_per_example",
             "inference_batch", "inference_precision", "device")


def _checkpoint_target(spec: str, model: nn.Module) -> Target:
    rec = getattr(model, "checkpoint", None) or {}
    sha = rec.get("sha256") or _state_sha(model)
    metrics = rec.get("metrics") or {}
    costs = {k: metrics[k] for k in COST_KEYS if isinstance(metrics, dict) and metrics.get(k) is not None}
    members = len(model) if isinstance(model, Ensemble) else 1  # a packed ensemble is one checkpoint of M members
    return Target(spec, spec, model.eval(), {spec: sha}, str(rec.get("arch", getattr(model, "arch", "unknown"))),
                  members, costs)


def _load_weights(module: nn.Module, weights: Path) -> str:
    from robust_ens.models.checkpoint import sha256_file

    if not weights.is_file():
        raise RobustEnsError(f"--weights {weights} does not exist")
    sha = sha256_file(weights)
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one line
        raise CheckpointError(f"--weights {weights} is not a tensors-only checkpoint: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"--weights {weights} holds {type(state).__name__}, not a state dict")
    from robust_ens.models.weights_io import load_state_checked

    load_state_checked(module, state, f"--weights {weights} does not fit the model")
    return sha


def _factory_target(spec: str, weights: Path | None) -> Target:
    mod_name, fn_name = spec.rsplit(":", 1)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise RobustEnsError(f"target {spec!r}: cannot import module {mod_name!r} ({err}); is it on PYTHONPATH?") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise RobustEnsError(f"target {spec!r}: module {mod_name!r} has no callable {fn_name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise RobustEnsError(f"target {spec!r}: {fn_name}() returned {type(model).__name__}, not a torch nn.Module")
    files = {f"{spec}:state_dict": _state_sha(model)} if weights is None else {str(weights): _load_weights(model, weights)}
    return Target(spec, spec, model.eval(), files, f"{spec}")


def _timm_target(spec: str, weights: Path | None, dataset: str | None) -> Target:
    from robust_ens import models

    if data.info(dataset or "cifar10").num_classes == IMAGENET_CLASSES or spec.startswith("torchvision:"):
        return _pretrained_target(spec, weights)
    if weights is None:
        raise RobustEnsError(f"target {spec!r}: a timm architecture needs --weights PATH (nothing is downloaded)")
    ds = data.info(dataset or "cifar10")
    model = models.create(spec, num_classes=ds.num_classes, in_chans=ds.in_chans, mean=ds.mean, std=ds.std)
    sha = _load_weights(model.net if hasattr(model, "net") else model, weights)
    return Target(spec, spec, model.eval(), {str(weights): sha}, spec)


RANDOM_PREFIX = "timm-random:"
_RANDOM = re.compile(r"^timm-random:([A-Za-z0-9_.]+)@(\d+)$")


class InputSized(nn.Module):
    """Resize [0, 1] images to the model's input size first, as TransferAttack's ``wrap_model`` does.

    TransferAttack resizes every image to a model's input size (224, 299 for Inception-v3) before
    its normalization; torchvision's ``Resize`` on tensors is bilinear with antialiasing, which is
    what this does (``F.interpolate``, differentiable, so attacks see the resize). Images already
    at ``size`` pass unchanged.

    Args:
        net: The model (normalization inside, e.g. :class:`~robust_ens.models.wrapper.Normalized`).
        size: The square input size the model was trained at.
    """

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net(x)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def timm_input_wrapped(name: str, net: nn.Module, arch: str) -> nn.Module:
    """A timm ImageNet network wrapped like TransferAttack's ``wrap_model``: its input size, then its normalization.

    Mean, std and input size come from the network's ``pretrained_cfg`` (timm's data config).
    """
    from robust_ens.models.wrapper import Normalized

    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    wrapped = Normalized(net, cfg.get("mean"), cfg.get("std"), arch=arch, num_classes=int(getattr(net, "num_classes", 1000)),
                         in_chans=3)
    return InputSized(wrapped, size)


IMAGENET_CLASSES = 1000


def imagenet_input(spec: str) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """``(mean, std, input size)`` a pretrained ImageNet ``spec`` is wrapped with.

    TransferAttack's models (a spec of :data:`~robust_ens.models.pretrained.TRANSFERATTACK_MODELS`)
    get exactly what its ``wrap_model`` gives them: ImageNet's mean and std at 224 px, Inception-v3
    mean = std = 0.5 at 299 px (with torchvision's ``transform_input``: TransferAttack's double
    normalization), timm models their data config at 224. Any other spec gets its weights' own:
    timm's pretrained config (its test input size where it has one), torchvision's ImageNet mean
    and std at its weights' crop size.
    """
    from robust_ens.models import pretrained as pt

    ref = next((m for m in pt.TRANSFERATTACK_MODELS.values() if m.spec == spec), None)
    if ref is not None:
        return tuple(ref.mean), tuple(ref.std), int(ref.input_size)
    if spec.startswith("torchvision:"):
        crop = pt.torchvision_weights(spec).transforms.keywords.get("crop_size", 224)
        return pt.IMAGENET_MEAN, pt.IMAGENET_STD, int(crop)
    cfg = pt.timm_cfg(spec[len("timm:"):])
    size = getattr(cfg, "test_input_size", None) or cfg.input_size
    return tuple(cfg.mean), tuple(cfg.std), int(size[-1])


def _pretrained_target(spec: str, weights: Path | None) -> Target:
    """A pretrained ImageNet model: the tag's cached file (or ``weights``), wrapped by :func:`imagenet_input`."""
    from robust_ens import models
    from robust_ens.models import pretrained as pt

    mean, std, size = imagenet_input(spec)
    if weights is not None and not weights.is_file():
        raise RobustEnsError(f"--weights {weights} does not exist")
    extra = {"weights_file": str(weights)} if weights is not None else {}
    model = models.create(spec, num_classes=IMAGENET_CLASSES, in_chans=3, mean=mean, std=std,
                          pretrained=weights is None, **extra)
    files = pt.weight_files(spec, weights)
    return Target(spec, spec, InputSized(model, size).eval(), files, spec)


def _random_timm_target(spec: str) -> Target:
    """``timm-random:NAME@SEED``: a timm ImageNet architecture with random weights from ``SEED`` (recorded)."""
    m = _RANDOM.match(spec)
    if m is None:
        raise RobustEnsError(f"target {spec!r}: a random-weight timm model is timm-random:NAME@SEED "
                             "(e.g. timm-random:resnet50@0)")
    import timm

    name, seed = m.group(1), int(m.group(2))
    if name.split(".")[0] not in timm.list_models():
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        raise RobustEnsError(f"target {spec!r}: timm has no model {name!r}; close names: {close or 'none'}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(name, pretrained=False)
    module = timm_input_wrapped(name, net, spec)
    return Target(spec, spec, module.eval(), {f"{spec}:state_dict": _state_sha(module)}, spec)


def _path_target(spec: str) -> Target:
    from robust_ens import models

    p = Path(spec).expanduser()
    if p.is_dir():
        members = sorted(p.glob("member*.json")) or sorted(p.glob("*.json"))
        members = [m for m in members if m.with_suffix(".safetensors").is_file()]
        if not members:
            raise RobustEnsError(f"target {spec!r}: the folder holds no checkpoint (<name>.json + <name>.safetensors)")
        parts = [_checkpoint_target(str(m.with_suffix("")), models.load_checkpoint(m)) for m in members]
        return _join(spec, parts) if len(parts) > 1 else parts[0]
    return _checkpoint_target(spec, models.load_checkpoint(p))


def _join(spec: str, parts: list[Target], combine: str = "logits", precision: str = REFERENCE_PRECISION) -> Target:
    ens = Ensemble([t.module for t in parts], combine=combine, precision=precision).eval()
    files: dict[str, str] = {}
    for t in parts:
        files.update(t.files)
    arch = ",".join(sorted({t.architecture for t in parts}))
    costs = parts[0].costs if len({str(t.costs) for t in parts}) == 1 else {}  # the members of one training run
    return Target(spec, spec, ens, files, arch, sum(t.n_members for t in parts), dict(costs))


def resolve_target(
    spec: str,
    *,
    weights: str | Path | None = None,
    dataset: str | None = None,
    device: torch.device | str = "cpu",
    name: str | None = None,
    combine: str = "logits",
    precision: str = REFERENCE_PRECISION,
) -> Target:
    """Resolve a target spec (see the module docstring) into a :class:`Target` on ``device``.

    Raises:
        RobustEnsError: naming the spec and the form that was tried when it does not resolve.
    """
    from robust_ens.models.zoo import ZOO_PREFIX, index, load

    if not isinstance(spec, str) or not spec.strip():
        raise RobustEnsError("a target spec must be a non-empty string (zoo:NAME, a checkpoint path, pkg.module:factory, timm:NAME)")
    spec = spec.strip()
    wpath = Path(weights).expanduser() if weights is not None else None
    if "," in spec:
        if wpath is not None:
            raise RobustEnsError("--weights applies to one model; give each member as its own checkpoint instead")
        parts = [resolve_target(s, dataset=dataset, device=device) for s in spec.split(",") if s.strip()]
        t = _join(spec, parts, combine, precision)
    elif spec.startswith(ZOO_PREFIX):
        if wpath is not None:
            raise RobustEnsError(f"--weights goes with pkg.module:factory or timm:NAME; {spec} carries its own weights")
        t = _checkpoint_target(spec, load(spec))
        e = index()[spec[len(ZOO_PREFIX):]]
        if "files" in e:  # an ensemble: each member file with its sha256; costs from the manifest
            t.files = {f"{spec}/{f}": sha for f, sha in e["files"].items()}
            t.costs = {k: v for k, v in (e.get("cost") or {}).items() if k in COST_KEYS and v is not None}
        else:
            t.files = {spec: e["sha256"]}
    elif spec.startswith("robustbench:"):
        from robust_ens import models

        t = _checkpoint_target(spec, models.load(spec))
    elif spec.startswith(RANDOM_PREFIX):
        if wpath is not None:
            raise RobustEnsError(f"--weights goes with timm:NAME; {spec} is random weights by its own spec")
        t = _random_timm_target(spec)
    elif spec.startswith(("timm:", "torchvision:")):
        t = _timm_target(spec, wpath, dataset)
    elif _FACTORY.match(spec) and not Path(spec).exists():
        t = _factory_target(spec, wpath)
    else:
        p = Path(spec).expanduser()
        stem_exists = p.exists() or p.with_suffix(".json").exists() or Path(str(p) + ".json").exists()
        if not stem_exists:
            raise RobustEnsError(
                f"target {spec!r} does not resolve: not zoo:NAME, timm:NAME or pkg.module:factory, "
                f"and no checkpoint or folder exists at {p}"
            )
        if wpath is not None:
            raise RobustEnsError("--weights goes with pkg.module:factory or timm:NAME; a checkpoint path carries its own weights")
        t = _path_target(spec)
    if name:
        t.name = name
    t.module = t.module.to(device).eval()
    return t


def check_target(target: Target, x: torch.Tensor, num_classes: int, dataset: str) -> None:
    """Refuse a target whose input shape or class count does not fit the suite's dataset.

    Args:
        target: The resolved target.
        x: A couple of the suite's images (float, [0, 1]).
        num_classes: The dataset's class count.
        dataset: The dataset's name, for the message.

    Raises:
        RobustEnsError: one line naming the target, the dataset's image shape and what went wrong.
    """
    shape = "x".join(map(str, x.shape[1:]))
    declared = {int(c) for m in target.module.modules() if isinstance(c := getattr(m, "in_chans", None), int)}
    if declared and declared != {x.shape[1]}:
        # a 3-channel model would silently broadcast 1-channel images through its normalization
        raise RobustEnsError(
            f"target {target.name!r} takes {'/'.join(map(str, sorted(declared)))}-channel images but {dataset} has "
            f"{x.shape[1]} ({shape}); pick a model trained on this dataset"
        )
    try:
        with torch.no_grad(), eval_mode(target.module):
            out = target.module(x.to(model_device(target.module)))
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RobustEnsError(
            f"target {target.name!r} does not take {dataset} images ({shape}): {first[:200]}; "
            "pick a model trained on this dataset"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustEnsError(f"target {target.name!r} returned {got} for {len(x)} {dataset} images; a classifier returns [n, classes]")
    if out.shape[1] != num_classes:
        raise RobustEnsError(
            f"target {target.name!r} has {out.shape[1]} classes but {dataset} has {num_classes}; "
            "pick a model trained on this dataset"
        )


# --------------------------------------------------------------------------- trained surrogates


def trained_dir(train: dict[str, Any], dataset: str, fingerprint: str) -> Path:
    """Where a recipe's members are cached: keyed by the recipe and the training data."""
    return data.cache_dir() / "surrogates" / f"{dataset}-{sha256_json({'train': train, 'data': fingerprint})[:16]}"


def resolve_trained(
    name: str,
    train: dict[str, Any],
    dataset: str,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Target:
    """Train (once; cached and resumable) the ensemble a protocol's ``train`` table describes.

    The table's keys are those of :func:`~robust_ens.train.parse_train_table`. The cache is keyed
    by the table and the training images, not by the hardware: bf16 training (CPUs with AVX512-BF16,
    GPUs) and the thread count change the weights, so suites whose entries must be re-run exactly
    name committed ``zoo:`` checkpoints (``members``) instead.
    """
    from robust_ens.defenses.train import parse_train_table
    from robust_ens.models.checkpoint import sha256_file

    plan = parse_train_table(train, dataset, what=f"surrogate {name!r}")
    members, arch = plan.members, plan.arch
    xtr, _ = data.load_uint8(dataset, "train")
    folder = trained_dir(train, dataset, hashlib.sha256(xtr.numpy().tobytes()).hexdigest())
    log.info("surrogate %s: %d x %s (cached in %s)", name, members, arch, folder)
    mods, _ = plan.train(dataset, out_dir=folder, device=device, progress=progress)
    files = {str(folder / f"member{i}.safetensors"): sha256_file(folder / f"member{i}.safetensors") for i in range(members)}
    module: nn.Module = mods[0] if members == 1 else Ensemble(mods, precision=REFERENCE_PRECISION)
    return Target(name, f"train:{name}", module.to(device).eval(), files, arch, members)

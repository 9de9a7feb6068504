"""``robustbench:DATASET/THREAT/NAME``: RobustBench's model zoo, offline, without unpickling code.

The architecture comes from the ``robustbench`` package (an optional extra:
``pip install 'robust-ens[robustbench]'``); the checkpoint is read from RobustBench's model folder
layout ``<model_dir>/<dataset>/<threat>/<NAME>.pt`` with ``torch.load(weights_only=True)``, its
sha256 recorded. Nothing is downloaded: when the file is missing the error says where to put it
(RobustBench's own ``load_model`` fetches it from Google Drive). The model folder is
``model_dir``, else ``$ROBUST_ENS_ROBUSTBENCH_DIR``, else RobustBench's default ``./models``.

robustbench 1.1.1 from the registry imports ``autoattack``, which its declared dependency
``pyautoattack`` ships as ``pyautoattack``, and ``pkg_resources``, which setuptools 81 dropped;
:func:`import_robustbench` maps both so the package imports, and names the ``pip install`` for
anything else missing (geotorch, gdown, pandas, torchdiffeq).

Example:
    >>> from robust_ens import models                                   # doctest: +SKIP
    >>> m = models.load("robustbench:cifar10/Linf/Addepalli2021Towards_RN18")  # [0, 1] images in
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_ens.errors import CheckpointError, RobustEnsError

PREFIX = "robustbench:"
ENV_DIR = "ROBUST_ENS_ROBUSTBENCH_DIR"
EXTRA = "pip install 'robust-ens[robustbench]'"
PIP_NAMES = {"yaml": "pyyaml", "bs4": "beautifulsoup4", "autoattack": "pyautoattack", "sklearn": "scikit-learn"}


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``robustbench:cifar10/Linf/NAME`` -> ``("cifar10", "Linf", "NAME")``."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    parts = body.split("/")
    if len(parts) != 3 or not all(parts):
        raise RobustEnsError(f"target {spec!r}: a RobustBench spec is robustbench:DATASET/THREAT/NAME "
                             "(e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled)")
    return parts[0], parts[1], parts[2]


def _shim_pkg_resources() -> None:
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    import importlib.resources as resources

    mod = types.ModuleType("pkg_resources")

    def resource_filename(package: str, path: str) -> str:
        return str(resources.files(package) / path)

    mod.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = mod


def _alias_autoattack() -> None:
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        return  # the import below names the package to install
    pkg = importlib.import_module("pyautoattack")
    sys.modules["autoattack"] = pkg
    for sub in ("state", "autopgd_base", "fab_pt", "square", "checks", "other_utils"):
        try:
            sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
        except ImportError:
            continue


def import_robustbench() -> Any:
    """The ``robustbench`` package, importable as published (see the module docstring).

    Raises:
        RobustEnsError: naming exactly what to install when a module is missing.
    """
    import importlib.metadata

    try:
        importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        # torchattacks' wheel vendors an old `robustbench` package without a distribution record:
        # importable, but not the model zoo this loader needs
        raise RobustEnsError(
            f"robustbench: models need the robustbench extra: {EXTRA} (robustbench is not installed: "
            "pip install robustbench; the `robustbench` that torchattacks bundles is not it)"
        ) from None
    _alias_autoattack()
    _shim_pkg_resources()
    try:
        import robustbench
        import robustbench.model_zoo  # noqa: F401 - imports every architecture
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0] or str(err)
        what = "robustbench" if missing == "robustbench" else PIP_NAMES.get(missing, missing)
        raise RobustEnsError(
            f"robustbench: models need the robustbench extra: {EXTRA} (the module {missing!r} is missing: "
            f"pip install {what})"
        ) from None
    return robustbench


def model_dir(explicit: str | Path | None = None) -> Path:
    """RobustBench's model folder: ``explicit``, else ``$ROBUST_ENS_ROBUSTBENCH_DIR``, else ``./models``."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(ENV_DIR) or "models")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_robustbench(spec: str, *, model_dir_: str | Path | None = None,
                     device: str | torch.device | None = None) -> nn.Module:
    """Load a RobustBench model from its local checkpoint (no download, no unpickled code).

    Returns:
        The model in eval mode; it takes [0, 1] images (RobustBench models normalize inside).
        ``model.checkpoint`` records ``{"sha256", "arch", "file", "spec"}``.

    Raises:
        RobustEnsError: for an unknown dataset, threat model or name, a missing checkpoint (with
            where to put it), or a missing package (with what to install).
    """
    from robust_ens.models.checkpoint import sha256_file
    from robust_ens.models.weights_io import load_state_checked

    dataset, threat, name = parse_spec(spec)
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        ds, tm = BenchmarkDataset(dataset), ThreatModel(threat)
    except ValueError:
        raise RobustEnsError(
            f"target {spec!r}: RobustBench has datasets {', '.join(d.value for d in BenchmarkDataset)} and threat "
            f"models {', '.join(t.value for t in ThreatModel)}"
        ) from None
    zoo = model_dicts.get(ds, {}).get(tm, {})
    if name not in zoo:
        raise RobustEnsError(f"target {spec!r}: RobustBench has no model {name!r} for {dataset}/{threat} "
                             f"({len(zoo)} models there)")
    entry = zoo[name]
    if isinstance(entry.get("gdrive_id"), list):
        raise RobustEnsError(f"target {spec!r}: {name} is an ensemble of several RobustBench checkpoints; "
                             "give its parts as their own targets")
    path = model_dir(model_dir_) / ds.value / tm.value / f"{name}.pt"
    if not path.is_file():
        raise RobustEnsError(
            f"target {spec!r}: no checkpoint at {path}; robust-ens does not download. Put the file there "
            f"(RobustBench's load_model('{name}', model_dir='{model_dir(model_dir_)}', dataset='{dataset}', "
            f"threat_model='{threat}') fetches it, Google Drive id {entry.get('gdrive_id')}) or set ${ENV_DIR}"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one line
        raise CheckpointError(f"robustbench checkpoint {path} is not a tensors-only checkpoint: "
                              f"{str(err).splitlines()[0][:200]}") from None
    if isinstance(ckpt, dict) and "last" in ckpt and isinstance(ckpt["last"], dict):
        ckpt = ckpt["last"]
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) else ckpt
    if not isinstance(state, dict):
        raise CheckpointError(f"robustbench checkpoint {path} holds {type(state).__name__}, not a state dict")
    state = _strip(_strip(state, "module."), "model.")
    model = entry["model"]()
    # ImageNet models wrap the network with a normalization layer (RobustBench adds "model.")
    own = set(model.state_dict())
    variants = [state, {f"model.{k}": v for k, v in state.items()}]
    state = min(variants, key=lambda st: len(set(own) ^ set(st)))
    load_state_checked(model, state, f"robustbench checkpoint {path} does not fit {name}")
    model.checkpoint = {"sha256": sha256_file(path), "arch": f"robustbench:{name}", "file": str(path), "spec": spec}
    return model.to(device or "cpu").eval()

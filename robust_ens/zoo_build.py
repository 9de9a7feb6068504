"""Building the reference zoo (``robust-ens zoo rebuild``): train its entries into a folder and
write the shippable copy in the layout :mod:`robust_ens.models.zoo` reads.

The zoo's build list is ``robust_ens/zoo/<dataset>.toml``: each entry names a defense and a tier
of its recipe (trained by :func:`robust_ens.defenses.train_defense`), or, for a protocol's own
model, a ``train`` table (:func:`robust_ens.defenses.train.parse_train_table`); both resolve their
recipes in :mod:`robust_ens.defenses.recipe_registry`. The digits checkpoints of the quickstart
are rebuilt by :func:`rebuild_digits_zoo`.

The builder sits above training (it trains with :mod:`robust_ens.defenses`) and above the reader
(:mod:`robust_ens.models.zoo`), so that loading a ``zoo:`` checkpoint never imports training.
It never writes into the shipped zoo folder.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robust_ens import data
from robust_ens.atomic import atomic_write, atomic_write_text
from robust_ens.defenses.recipe_registry import default_recipe
from robust_ens.defenses.train import parse_train_table, train_defense
from robust_ens.device import resolve_device
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy
from robust_ens.models import zoo as _zoo
from robust_ens.models.checkpoint import load_checkpoint, read_sidecar, save_checkpoint, sha256_file
from robust_ens.models.registry import create
from robust_ens.precision import REFERENCE_PRECISION
from robust_ens.train import train_classifier

PROTOCOL_EVAL_N = 1000  # test images a protocol model's shipped accuracy is measured on (as the defenses')


def _refuse_shipped(out: Path) -> Path:
    """``out`` resolved, refused when it is (or lies inside) the shipped zoo folder."""
    res = out.expanduser().resolve()
    if res == _zoo.ZOO_DIR or _zoo.ZOO_DIR in res.parents:
        raise RobustEnsError(
            f"--out {out} is the shipped zoo ({_zoo.ZOO_DIR}); rebuild into another folder and compare, "
            "then copy what you mean to ship"
        )
    return res


def rebuild_digits_zoo(out: str | Path, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, dict[str, Any]]:
    """Retrain the digits reference checkpoints (``small_cnn``, one per seed) into ``out``.

    Run as ``robust-ens zoo rebuild --out DIR``; writes ``DIR/<name>.safetensors`` + sidecars and
    ``DIR/index.json`` in the layout of the shipped ``robust_ens/zoo/``.
    """
    dest = _refuse_shipped(Path(out))
    info = data.info("digits")
    xtr, ytr = data.load_uint8("digits", "train")
    xte, yte = data.load_uint8("digits", "test")
    entries: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        name = f"digits_small_cnn_s{seed}"
        cfg = default_recipe("digits").replace(seed=seed, precision=REFERENCE_PRECISION)
        torch.manual_seed(seed)
        model = create("small_cnn", num_classes=10, in_chans=1, mean=info.mean, std=info.std)
        train_classifier(model, xtr, ytr, cfg, device="cpu", progress=False)
        path = save_checkpoint(
            model, dest / name, dataset="digits", recipe=cfg.to_dict(),
            metrics={"test_acc": accuracy(model, xte, yte)},
        )
        entries[name] = {"file": path.name, "sha256": sha256_file(path), "arch": "small_cnn", "dataset": "digits"}
    atomic_write_text(dest / "index.json", json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return entries


@dataclass(frozen=True)
class ZooRecipe:
    """One entry of ``robust_ens/zoo/<dataset>.toml``: how a zoo ensemble is trained.

    Attributes:
        name: Zoo name (``zoo:<name>``).
        defense: Registered defense (``baseline``, ``adp``, ``gal``, ``dverge``, ``trs``).
        arch: Member architecture (``resnet20``, ``packed:resnet20``, ...).
        members: Ensemble size.
        tier: The defense recipe's tier.
        seed: Seed of member 0 and of the training loop.
        init: Another entry whose trained members this one starts from (DVERGE, TRS), or ``None``.
        epochs: The defense's epochs when they depart from the tier (a CPU budget), else ``None``.
        train_n: Training images when they depart from the tier, else ``None``.
        protocol: For a protocol's own model (a surrogate or an attack suite's target), the suite it
            belongs to; such an entry is trained from ``train`` (plain members, like a protocol's
            ``train`` table), not by a defense recipe.
        role: ``"surrogate"`` or ``"target"`` for a protocol's model, else ``None``.
        train: The ``train`` table of a protocol's model (see
            :func:`~robust_ens.defenses.train.parse_train_table`).
    """

    name: str
    defense: str
    arch: str
    members: int
    tier: str
    seed: int = 0
    init: str | None = None
    epochs: int | None = None
    train_n: int | None = None
    protocol: str | None = None
    role: str | None = None
    train: dict[str, Any] | None = None


_RECIPE_KEYS = {"defense", "arch", "members", "tier", "seed", "init", "epochs", "train_n"}
_PROTOCOL_KEYS = {"protocol", "role", "tier", "train"}
_ROLES = ("surrogate", "target")


def _protocol_recipe(path: Path, name: str, table: dict[str, Any], dataset: str) -> ZooRecipe:
    """A protocol's model (``protocol``, ``role``, ``tier``, ``train``) as a :class:`ZooRecipe`."""
    unknown = set(table) - _PROTOCOL_KEYS
    if unknown:
        raise RobustEnsError(f"{path}: [{name}] is a protocol's model (it has 'protocol'); unknown keys "
                             f"{sorted(unknown)}; allowed: {sorted(_PROTOCOL_KEYS)}")
    missing = sorted(_PROTOCOL_KEYS - set(table))
    if missing:
        raise RobustEnsError(f"{path}: [{name}] is a protocol's model but lacks {', '.join(missing)}")
    if table["role"] not in _ROLES:
        raise RobustEnsError(f"{path}: [{name}] role = {table['role']!r}; expected one of {', '.join(_ROLES)}")
    if not isinstance(table["train"], dict):
        raise RobustEnsError(f"{path}: [{name}] train must be a table (arch, members, seed, train_n, epochs, ...)")
    plan = parse_train_table(table["train"], dataset, what=f"{path}: [{name}]")
    return ZooRecipe(name=name, defense="baseline", arch=plan.arch, members=plan.members, tier=str(table["tier"]),
                     seed=plan.seed, epochs=plan.config.epochs, train_n=plan.train_n, protocol=str(table["protocol"]),
                     role=str(table["role"]), train=dict(table["train"]))


def zoo_recipes(dataset: str = "cifar10", recipes: str | Path | None = None) -> dict[str, ZooRecipe]:
    """The zoo recipes of ``dataset`` (``robust_ens/zoo/<dataset>.toml``, or the file ``recipes``), in training order.

    Raises:
        RobustEnsError: no recipe file for ``dataset``, or a bad key (one line naming it).
    """
    path = Path(recipes) if recipes is not None else _zoo.ZOO_DIR / f"{dataset}.toml"
    if not path.is_file():
        have = sorted(p.stem for p in _zoo.ZOO_DIR.glob("*.toml"))
        raise RobustEnsError(f"no zoo recipes for dataset {dataset!r}; recipes exist for: {', '.join(have) or '(none)'}")
    doc = tomllib.loads(path.read_text())
    out: dict[str, ZooRecipe] = {}
    for name, table in doc.items():
        if not isinstance(table, dict):
            continue
        if "protocol" in table:
            out[name] = _protocol_recipe(path, name, table, str(doc.get("dataset", dataset)))
            continue
        unknown = set(table) - _RECIPE_KEYS
        if unknown:
            raise RobustEnsError(f"{path}: [{name}] has unknown keys {sorted(unknown)}; allowed: {sorted(_RECIPE_KEYS)}")
        if table.get("init") is not None and table["init"] not in out:
            raise RobustEnsError(f"{path}: [{name}] init = {table['init']!r} names no entry above it")
        out[name] = ZooRecipe(name=name, **table)
    return out


def _half(src: Path, dst: Path) -> str:
    """Copy checkpoint ``src`` (stem) to ``dst`` (stem) with fp16 floating tensors; the new sha256."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(src.with_suffix(".safetensors")))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    weights = dst.with_suffix(".safetensors")
    atomic_write(weights, lambda tmp: save_file(half, str(tmp)))
    sha = sha256_file(weights)
    record = read_sidecar(src)
    record.update(sha256=sha, weights=weights.name, stored_dtype="float16")
    atomic_write_text(dst.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return sha


def _eval_subset(dataset: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load_uint8(dataset, "test")
    if n is not None and n < len(y):
        idx = data.subset_indices(y, int(n), seed=0)
        x, y = x[idx], y[idx]
    return x, y


def _build_order(table: dict[str, ZooRecipe], names: list[str] | None, dataset: str) -> list[str]:
    """The entries to build: those asked for and every entry they start from, in file order."""
    wanted = list(table) if not names else names
    for n in wanted:
        if n not in table:
            raise RobustEnsError(f"unknown zoo entry {n!r}; {dataset}'s recipes: {', '.join(table)}")
    todo: list[str] = []
    for n in wanted:  # every entry after the one it starts from
        chain = [n]
        while table[chain[-1]].init is not None:
            chain.append(table[chain[-1]].init)  # type: ignore[arg-type]
        todo += [c for c in reversed(chain) if c not in todo]
    return [n for n in table if n in todo]


def rebuild_zoo(
    out: str | Path,
    *,
    dataset: str = "cifar10",
    names: list[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    recipes: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Train the zoo ensembles of ``dataset`` into ``out`` and write the shippable copy.

    Training runs in ``out/train/<name>/`` (resumable: rerun to continue, a finished entry is
    loaded, not retrained). The shippable copy is ``out/<dataset>/<name>/`` (fp16 safetensors +
    sidecars) and ``out/<dataset>/manifest.json``, the layout of ``robust_ens/zoo/<dataset>/``.

    Args:
        out: Folder to write; never the shipped zoo.
        dataset: Whose recipes (``robust_ens/zoo/<dataset>.toml``).
        names: Entries to (re)build (default all); the entries they start from are built too.
        device: Training device (default CUDA if available).
        progress: Progress bars.
        recipes: Another recipe file instead of ``robust_ens/zoo/<dataset>.toml``.

    Returns:
        The manifest's entries.
    """
    dest = _refuse_shipped(Path(out))
    table = zoo_recipes(dataset, recipes)
    order = _build_order(table, names, dataset)
    ship_root = dest / dataset
    manifest_path = ship_root / _zoo.MANIFEST
    manifest: dict[str, Any] = (json.loads(manifest_path.read_text()) if manifest_path.is_file()
                                else {"format": _zoo.MANIFEST_FORMAT, "entries": {}})
    for name in order:
        r = table[name]
        train_dir = dest / "train" / name
        trained = _train_protocol_model(r, train_dir, dataset, device, progress) if r.train is not None else \
            _train_defense_entry(r, dest, train_dir, dataset, device, progress)
        manifest["entries"][name] = _ship(r, train_dir, ship_root / name, dataset, trained)
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dict(manifest["entries"])


def _ship(r: ZooRecipe, train_dir: Path, ship: Path, dataset: str, trained: _Trained) -> dict[str, Any]:
    """Write the fp16 copy of a trained entry into ``ship``; its manifest entry."""
    if ship.exists():
        shutil.rmtree(ship)
    ship.mkdir(parents=True)
    stems = ["packed"] if (train_dir / "packed.json").is_file() else [f"member{i}" for i in range(r.members)]
    files = {f"{s}.safetensors": _half(train_dir / s, ship / s) for s in stems}
    shipped: torch.nn.Module = (load_checkpoint(ship / stems[0]) if len(stems) == 1
                                else Ensemble([load_checkpoint(ship / s) for s in stems]))
    x, y = _eval_subset(dataset, trained["eval_n"])
    entry = {
        "folder": r.name, "files": files, "defense": r.defense, "arch": r.arch, "members": r.members,
        "dataset": dataset, "tier": r.tier, "seed": r.seed, "init": r.init, "epochs": r.epochs, "train_n": r.train_n,
        **({"protocol": r.protocol, "role": r.role} if r.protocol else {}),
        "recipe": trained["recipe"],
        "accuracy": {"test_acc": accuracy(shipped, x, y), "test_acc_fp32": trained["test_acc"],
                     "member_test_acc_fp32": trained["member_test_acc"], "eval_n": len(y)},
        "parameters": trained["parameters"],
        "cost": trained["cost"],
        "bytes": sum((ship / f).stat().st_size for f in files),
    }
    for f, sha in files.items():
        assert sha256_file(ship / f) == sha
    return entry


# what rebuild_zoo records of a trained entry: recipe, fp32 accuracy (ensemble on eval_n test images,
# members), parameters, cost
_Trained = dict[str, Any]


def _train_defense_entry(r: ZooRecipe, dest: Path, train_dir: Path, dataset: str,
                         device: str | torch.device | None, progress: bool) -> _Trained:
    """Train a defense entry with :func:`~robust_ens.defenses.train_defense` (its tier's recipe)."""
    train_defense(
        r.defense, arch=r.arch, n_members=r.members, dataset=dataset, recipe=r.tier, seed=r.seed,
        init=(dest / "train" / r.init) if r.init else None, warmup_epochs=0 if r.init else None,
        epochs=r.epochs, train_n=r.train_n, device=device, progress=progress, out_dir=train_dir,
    )
    summary = json.loads((train_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    return {"recipe": summary["record"], "eval_n": metrics.get("eval_n"), "test_acc": metrics.get("test_acc"),
            "member_test_acc": metrics.get("member_test_acc"), "parameters": metrics.get("parameters"),
            "cost": {k: metrics.get(k) for k in ("train_seconds", "train_seconds_per_epoch", "warmup_seconds",
                                                 "inference_seconds_per_example", "device") if k in metrics}}


def _train_protocol_model(r: ZooRecipe, train_dir: Path, dataset: str, device: str | torch.device | None,
                          progress: bool) -> _Trained:
    """Train a protocol's model from its ``train`` table (plain members, like an uncommitted surrogate).

    A finished run already in ``train_dir`` with the same recipe is loaded, not retrained, so the
    members a protocol trained (its surrogate cache folder) can be copied in and shipped as they are.
    """
    assert r.train is not None
    plan = parse_train_table(r.train, dataset, what=f"zoo entry {r.name!r}")
    mods, records = plan.train(dataset, out_dir=train_dir, device=device, progress=progress)
    x, y = _eval_subset(dataset, PROTOCOL_EVAL_N)
    model = mods[0] if len(mods) == 1 else Ensemble(mods, precision=REFERENCE_PRECISION)
    return {"recipe": {"protocol": r.protocol, "role": r.role, "train": dict(r.train), "arch": plan.arch,
                       "arch_kwargs": plan.arch_kwargs, "train_n": records[0].get("train_n"),
                       "members": [plan.config.replace(seed=plan.seed + i).to_dict() for i in range(len(mods))]},
            "eval_n": PROTOCOL_EVAL_N, "test_acc": accuracy(model, x, y),
            "member_test_acc": [accuracy(m, x, y) for m in mods],
            "parameters": sum(p.numel() for m in mods for p in m.parameters()),
            "cost": {"train_seconds": sum(float(rec.get("train_seconds") or 0.0) for rec in records),
                     "device": str(resolve_device(device))}}


__all__ = ["PROTOCOL_EVAL_N", "ZooRecipe", "rebuild_digits_zoo", "rebuild_zoo", "zoo_recipes"]

"""The one recipe registry: every training recipe of the project is looked up here.

Two kinds of recipe, one module:

* **Named recipes** (:data:`RECIPES`, the project's :class:`~robust_ens.registry.Registry`): a
  :class:`~robust_ens.train.TrainConfig` with, for a model recipe, its architecture. Kind
  ``"dataset"``: the recipe of plain members on a dataset (``digits``, ``cifar10``,
  ``cifar10-full``; :func:`default_recipe`). Kind ``"model"``: a named model, e.g. the tiny 32-px
  ViT surrogates of ViT-EnsembleAttack and a held-out CNN target (``vit_tiny_c10``,
  ``deit_tiny_c10``, ``resnet20_c10``; the ``recipe`` key of a protocol's or zoo entry's ``train``
  table, :func:`model_recipe`).
* **Defense recipes**: ``recipes/<defense>.toml`` beside this module, one table per tier
  (``small``, ``full``) with ``train``, ``defense`` and ``warmup`` sections (:func:`load_recipe`,
  :func:`resolve_recipe` with ``--set`` style overrides, :func:`load_meta`).

The zoo's build list (``robust_ens/zoo/<dataset>.toml``) holds no recipe of its own: its entries
name a defense and tier, or a ``train`` table, and both resolve here.

Example:
    >>> from robust_ens.defenses.recipe_registry import default_recipe, list_recipes, model_recipe
    >>> default_recipe("digits").optimizer
    'adam'
    >>> list_recipes(kind="model")
    ['deit_tiny_c10', 'resnet20_c10', 'vit_tiny_c10']
    >>> model_recipe("vit_tiny_c10").arch
    'timm:vit_tiny_patch16_224'
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from robust_ens.defenses.base import DEFENSES, DefenseSpec, param_names
from robust_ens.errors import RobustEnsError, UnknownNameError
from robust_ens.overrides import COUNT, check_option
from robust_ens.registry import Registry
from robust_ens.train import TrainConfig

KINDS = ("dataset", "model")


@dataclass(frozen=True)
class Recipe:
    """A named training recipe.

    Attributes:
        name: Registry name.
        arch: Architecture for :func:`robust_ens.models.create` (``None`` for a dataset's recipe,
            which applies to any architecture).
        arch_kwargs: Keyword arguments of the architecture.
        config: The training configuration.
    """

    name: str
    arch: str | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig = field(default_factory=TrainConfig)


RECIPES: Registry[Recipe] = Registry("training recipe")


def register_recipe(recipe: Recipe, *, kind: str) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` as a ``"dataset"`` or ``"model"`` recipe."""
    if kind not in KINDS:
        raise RobustEnsError(f"recipe kind must be one of {KINDS}, got {kind!r}")
    return RECIPES.add(recipe.name, recipe, kind=kind)


def list_recipes(pattern: str = "*", *, kind: str | None = None) -> list[str]:
    """Names of the named recipes matching an fnmatch ``pattern`` (of one ``kind`` when given)."""
    return [n for n in RECIPES.list(pattern) if kind is None or RECIPES.meta(n)["kind"] == kind]


def default_recipe(dataset: str) -> TrainConfig:
    """The plain-member recipe for a dataset (``"digits"``, ``"cifar10"``; others use cifar10's)."""
    name = dataset if dataset in list_recipes(kind="dataset") else "cifar10"
    return RECIPES.get(name).config


def model_recipe(name: str) -> Recipe:
    """The model recipe called ``name`` (architecture, its arguments and a training configuration).

    Raises:
        UnknownNameError: naming the known model recipes (a ``KeyError`` too).
    """
    known = list_recipes(kind="model")
    if name not in known:
        raise UnknownNameError(f"unknown recipe {name!r}; known: {', '.join(known)}")
    return RECIPES.get(name)


# --------------------------------------------------------------------------- named recipes

#: Architecture of the tiny 32-px ViTs: patch 4 (64 tokens), 4 blocks of width 64 with 4 heads.
TINY_VIT_ARGS: dict[str, Any] = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}

_ADAMW = TrainConfig(
    epochs=4, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
    warmup_epochs=0.5, label_smoothing=0.0, crop_padding=4, flip=True, grad_clip=1.0,
)

for _recipe, _kind in (
    (Recipe("digits", None, {}, TrainConfig(epochs=12, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=1e-4,
                                            crop_padding=1, flip=False)), "dataset"),
    (Recipe("cifar10", None, {}, TrainConfig(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, nesterov=True)),
     "dataset"),
    (Recipe("cifar10-full", None, {}, TrainConfig(
        epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
        schedule="multistep", milestones=(100, 150))), "dataset"),
    # plain ViT: AdamW, cosine, short warm-up, no label smoothing
    (Recipe("vit_tiny_c10", "timm:vit_tiny_patch16_224", dict(TINY_VIT_ARGS), _ADAMW), "model"),
    # DeiT-style: same backbone family, DeiT's training habits (label smoothing 0.1, longer warm-up)
    (Recipe("deit_tiny_c10", "timm:deit_tiny_patch16_224", dict(TINY_VIT_ARGS),
            _ADAMW.replace(label_smoothing=0.1, warmup_epochs=1.0)), "model"),
    # held-out CNN target
    (Recipe("resnet20_c10", "resnet20", {},
            TrainConfig(epochs=4, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine")),
     "model"),
):
    register_recipe(_recipe, kind=_kind)


# --------------------------------------------------------------------------- defense recipes

TIERS = ("small", "full")
DEFAULT_TIER = "full"
_TOP_KEYS = ("train_n", "eval_n")
_SECTIONS = ("train", "defense", "warmup")
PACKED_KEY = "packed"  # [tier.packed]: settings for packed:<arch> ensembles (shared weights)
MEAN_OF_MEMBERS = "mean_of_members"  # [tier.packed] flag, see robust_ens.defenses.train.member_mean_config


def _defense_file(name: str) -> dict[str, Any]:
    """The parsed ``recipes/<name>.toml`` of a registered defense."""
    DEFENSES.get(name)
    text = resources.files("robust_ens.defenses").joinpath("recipes", f"{name}.toml").read_text()
    return tomllib.loads(text)


def load_meta(name: str) -> dict[str, Any]:
    """The ``[meta]`` table of defense ``name``'s recipe file (``paper``, ...); empty when it has none."""
    meta: dict[str, Any] = _defense_file(name).get("meta", {})
    return meta


def load_recipe(name: str, tier: str = DEFAULT_TIER) -> dict[str, Any]:
    """The recipe of defense ``name`` at ``tier`` from ``recipes/<name>.toml``.

    Returns:
        ``{"train": {...TrainConfig fields}, "defense": {...}, "warmup": {...}, "train_n": ..., "eval_n": ...}``
        (missing sections are empty dicts, missing sizes ``None``).

    Raises:
        RobustEnsError: unknown defense or tier (listing the known ones).
    """
    doc = _defense_file(name)
    tiers = [k for k in doc if k != "meta"]
    if tier not in doc or tier == "meta":
        raise RobustEnsError(f"unknown recipe tier {tier!r} for defense {name!r}; known tiers: {', '.join(tiers)}")
    return _normalize(doc[tier], f"{name}:{tier}", name)


def _normalize(raw: Mapping[str, Any], where: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {s: dict(raw.get(s, {})) for s in _SECTIONS}
    for k in _TOP_KEYS:
        out[k] = raw.get(k)
    out[PACKED_KEY] = _flatten_packed(raw.get(PACKED_KEY, {}), where)
    unknown = set(raw) - set(_SECTIONS) - set(_TOP_KEYS) - {PACKED_KEY}
    if unknown:
        raise RobustEnsError(
            f"recipe {where} has unknown key(s) {sorted(unknown)}; a tier holds {list(_TOP_KEYS)} and the "
            f"tables {[*_SECTIONS, PACKED_KEY]}"
        )
    spec = DEFENSES.get(name)
    for section in _SECTIONS:
        for option, value in out[section].items():
            _check_range(spec, section, option, value, f"recipe {where} {section}.{option}")
    for k in _TOP_KEYS:
        _check_range(spec, k, k, out[k], f"recipe {where} {k}")
    return out


def _check_range(spec: DefenseSpec, section: str, option: str, value: Any, label: str) -> None:
    """Refuse, before any work, a value outside the range its option declares (one line naming ``label``)."""
    if section in _TOP_KEYS:
        if value is not None:
            COUNT.check(value, label)
        return
    check_option(spec.params_cls if section == "defense" else TrainConfig, option, value, label)


def _flatten_packed(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``[tier.packed]`` (and ``[tier.packed.warmup]``) as flat override names (``lr``, ``warmup.lr``)."""
    flat: dict[str, Any] = {}
    for k, v in dict(table).items():
        if isinstance(v, Mapping):
            if k != "warmup":
                raise RobustEnsError(f"recipe {where}: [packed] may hold options and a [packed.warmup] table, not {k!r}")
            flat.update({f"warmup.{wk}": wv for wk, wv in v.items()})
        else:
            flat[k] = v
    return flat


def resolve_recipe(
    name: str, recipe: str | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
    *, packed: bool = False,
) -> dict[str, Any]:
    """Recipe tier (name, dict or ``None`` = ``"full"``) with flat ``overrides`` routed to their section.

    An override key is dotted, naming its section: ``train.<field>`` (a
    :class:`~robust_ens.train.TrainConfig` field of the defense's training), ``warmup.<field>``
    (the baseline warm-up of DVERGE/TRS), ``defense.<field>`` (a hyperparameter of the defense);
    or ``train_n``/``eval_n``; or a bare name that exists in exactly one of ``train`` and
    ``defense`` (a bare training option never reaches the warm-up). A bare name that is both
    (DVERGE's ``momentum``) is refused with both candidates; unknown keys raise listing all.

    With ``packed=True`` (a ``packed:<arch>`` ensemble) the tier's ``[tier.packed]`` table is
    applied first, as overrides in the same form, then ``overrides``: the settings where the
    papers' independent-member recipes do not carry over to shared weights.
    """
    spec = DEFENSES.get(name)
    if recipe is None or isinstance(recipe, str):
        tier = recipe or DEFAULT_TIER
        rec = load_recipe(name, tier)
        rec["tier"] = tier
    elif isinstance(recipe, Mapping):
        body = {k: v for k, v in recipe.items() if k != "tier"}
        if any(k in body for k in _SECTIONS):
            rec = _normalize(body, f"{name}:<dict>", name)
        else:  # flat option names, routed like overrides
            rec = _route(spec, {}, body, f"{name}:<dict>")
        rec["tier"] = str(recipe.get("tier", "custom"))
    else:
        raise RobustEnsError(f"recipe must be a tier name {TIERS}, a dict or None, got {type(recipe).__name__}")
    if packed and rec.get(PACKED_KEY):
        table = dict(rec[PACKED_KEY])
        mean = bool(table.pop(MEAN_OF_MEMBERS, False))
        rec = _route(spec, rec, table, f"{name}:{rec.get('tier')}.packed")
        rec["packed_applied"] = True
        rec[MEAN_OF_MEMBERS] = mean
    if overrides:
        rec = _route(spec, rec, overrides, "overrides")
    return rec


def _route(spec: DefenseSpec, base: Mapping[str, Any], flat: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``base`` with each flat option of ``flat`` put in its section (see :func:`resolve_recipe`)."""
    rec: dict[str, Any] = {s: dict(base.get(s, {})) for s in _SECTIONS}
    for k in (*_TOP_KEYS, "tier", PACKED_KEY, "packed_applied", MEAN_OF_MEMBERS):
        if k in base:
            rec[k] = base[k]
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    defense_fields = param_names(spec.params_cls)
    known = {"train": train_fields, "warmup": train_fields, "defense": defense_fields}
    for key, value in flat.items():
        section, dot, option = key.partition(".")
        if dot:  # dotted: train.<option>, defense.<option>, warmup.<option>
            if section not in known or option not in known[section]:
                raise RobustEnsError(
                    f"unknown option {key!r} in {where} for defense {spec.name!r}; dotted options are "
                    f"train.<{'|'.join(train_fields)}>, warmup.<the same>, defense.<{'|'.join(defense_fields)}>"
                )
            rec[section][option] = value
        elif key in _TOP_KEYS:
            section = option = key
            rec[key] = value
        else:
            section, option = _home(spec, key, known, where), key
            rec[section][key] = value
        _check_range(spec, section, option, value, key if where == "overrides" else f"{where} {key}")
    for k in _TOP_KEYS:
        rec.setdefault(k, None)
    return rec


def _home(spec: DefenseSpec, key: str, known: Mapping[str, list[str]], where: str) -> str:
    """The one section (``train`` or ``defense``) a bare option name belongs to."""
    homes = [s for s in ("train", "defense") if key in known[s]]
    if len(homes) > 1:
        raise RobustEnsError(
            f"option {key!r} is ambiguous for defense {spec.name!r}: it is both a training option "
            f"(train.{key}) and a {spec.name} hyperparameter (defense.{key}); pass train.{key}=... or "
            f"defense.{key}=..."
        )
    if not homes:
        raise RobustEnsError(
            f"unknown option {key!r} in {where} for defense {spec.name!r}; training options: {known['train']}; "
            f"{spec.name} hyperparameters: {known['defense']}; also {list(_TOP_KEYS)}, and train.<option>, "
            "defense.<option>, warmup.<training option>"
        )
    return homes[0]


__all__ = [
    "DEFAULT_TIER",
    "KINDS",
    "MEAN_OF_MEMBERS",
    "PACKED_KEY",
    "RECIPES",
    "TIERS",
    "TINY_VIT_ARGS",
    "Recipe",
    "default_recipe",
    "list_recipes",
    "load_meta",
    "load_recipe",
    "model_recipe",
    "register_recipe",
    "resolve_recipe",
]

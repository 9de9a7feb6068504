"""Training recipes for tiny ViT surrogates (and a held-out CNN target) at 32 px, for ViT-EnsembleAttack.

Each recipe is a named :class:`~robust_ens.train.TrainConfig` plus the architecture arguments that
:func:`robust_ens.models.create` needs, so a surrogate is trained with the foundation's one loop::

    >>> from robust_ens.attacks.vit_recipes import VIT_RECIPES
    >>> r = VIT_RECIPES["vit_tiny_c10"]
    >>> r.arch, r.config.optimizer
    ('timm:vit_tiny_patch16_224', 'adamw')

    # members, records = train_ensemble(r.arch, 3, "cifar10", recipe=r.config, arch_kwargs=r.arch_kwargs)

The ImageNet path needs no recipe: build surrogates with ``models.create("timm:vit_base_patch16_224",
pretrained=...)`` from weights on disk and load ``imagefolder:<path>`` data at ``size=224``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robust_ens.train import TrainConfig

#: Architecture of the tiny 32-px ViTs: patch 4 (64 tokens), 4 blocks of width 64 with 4 heads.
TINY_VIT_ARGS: dict[str, Any] = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}


@dataclass(frozen=True)
class Recipe:
    """A named surrogate recipe.

    Attributes:
        name: Recipe name.
        arch: Architecture name for :func:`robust_ens.models.create`.
        arch_kwargs: Keyword arguments of the architecture.
        config: The training configuration.
    """

    name: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig = field(default_factory=TrainConfig)


_ADAMW = TrainConfig(
    epochs=4, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
    warmup_epochs=0.5, label_smoothing=0.0, crop_padding=4, flip=True, grad_clip=1.0,
)

VIT_RECIPES: dict[str, Recipe] = {
    # plain ViT: AdamW, cosine, short warm-up, no label smoothing
    "vit_tiny_c10": Recipe("vit_tiny_c10", "timm:vit_tiny_patch16_224", dict(TINY_VIT_ARGS), _ADAMW),
    # DeiT-style: same backbone family, DeiT's training habits (label smoothing 0.1, longer warm-up)
    "deit_tiny_c10": Recipe(
        "deit_tiny_c10", "timm:deit_tiny_patch16_224", dict(TINY_VIT_ARGS),
        _ADAMW.replace(label_smoothing=0.1, warmup_epochs=1.0),
    ),
    # held-out CNN target
    "resnet20_c10": Recipe(
        "resnet20_c10", "resnet20", {},
        TrainConfig(epochs=4, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine"),
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (one of :data:`VIT_RECIPES`).

    Raises:
        KeyError: naming the known recipes.
    """
    try:
        return VIT_RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(VIT_RECIPES))}") from None


__all__ = ["TINY_VIT_ARGS", "VIT_RECIPES", "Recipe", "get_recipe"]

"""Training recipes for tiny ViT surrogates (and a held-out CNN target) at 32 px, for ViT-EnsembleAttack.

The recipes themselves live in the project's one recipe registry,
:mod:`robust_ens.defenses.recipe_registry` (kind ``"model"``); this module keeps the names it
always exported. Each recipe is a named :class:`~robust_ens.train.TrainConfig` plus the
architecture arguments that :func:`robust_ens.models.create` needs, so a surrogate is trained
with the foundation's one loop::

    >>> from robust_ens.attacks.vit_recipes import VIT_RECIPES
    >>> r = VIT_RECIPES["vit_tiny_c10"]
    >>> r.arch, r.config.optimizer
    ('timm:vit_tiny_patch16_224', 'adamw')

    # from robust_ens.defenses.train import train_ensemble
    # members, records = train_ensemble(r.arch, 3, "cifar10", recipe=r.config, arch_kwargs=r.arch_kwargs)

The ImageNet path needs no recipe: build surrogates with ``models.create("timm:vit_base_patch16_224",
pretrained=...)`` from weights on disk and load ``imagefolder:<path>`` data at ``size=224``.
"""

from __future__ import annotations

from robust_ens.defenses.recipe_registry import TINY_VIT_ARGS, Recipe, list_recipes, model_recipe

#: The model recipes by name (a read-only view of the registry's ``"model"`` recipes).
VIT_RECIPES: dict[str, Recipe] = {name: model_recipe(name) for name in list_recipes(kind="model")}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (one of :data:`VIT_RECIPES`).

    Raises:
        KeyError: naming the known recipes.
    """
    return model_recipe(name)


__all__ = ["TINY_VIT_ARGS", "VIT_RECIPES", "Recipe", "get_recipe"]

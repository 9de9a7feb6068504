"""The dependency set imports together (torchattacks pins an old requests; timm pulls huggingface_hub)."""

import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["torch", "torchvision", "timm", "torchattacks", "requests", "huggingface_hub", "safetensors",
               "pydantic", "tabulate", "tqdm", "sklearn", "scipy"],
)
def test_dependency_imports(module):
    importlib.import_module(module)


def test_pydantic_is_v2_and_torch_in_supported_range():
    import pydantic
    import torch

    assert int(pydantic.VERSION.split(".")[0]) == 2
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    assert (2, 3) <= (major, minor) < (2, 15)


def test_console_script_entry_point_is_installed():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("robust-ens") == "robust_ens.cli:main"


def test_attacks_and_defenses_import_under_one_name():
    import robust_ens.attacks
    import robust_ens.defenses

    assert robust_ens.attacks.__name__ == "robust_ens.attacks"
    assert robust_ens.defenses.__name__ == "robust_ens.defenses"

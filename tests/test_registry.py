import pytest

from robust_ens.errors import RobustEnsError, UnknownNameError
from robust_ens.registry import Registry


def make() -> Registry:
    reg: Registry = Registry("widget")
    for name in ("resnet20", "resnet32", "small_cnn", "vit_tiny"):
        reg.add(name, lambda name=name, **kw: (name, kw))
    return reg


def test_list_filters_with_fnmatch_and_exclude():
    reg = make()
    assert reg.list() == ["resnet20", "resnet32", "small_cnn", "vit_tiny"]
    assert reg.list("resnet*") == ["resnet20", "resnet32"]
    assert reg.list(["*cnn", "vit*"]) == ["small_cnn", "vit_tiny"]
    assert reg.list("*", exclude="resnet*") == ["small_cnn", "vit_tiny"]


def test_duplicate_name_is_an_error():
    reg = make()
    with pytest.raises(RobustEnsError, match="already registered"):
        reg.add("resnet20", object())
    with pytest.raises(RobustEnsError, match="already registered"):
        reg.register("small_cnn")(lambda: None)


def test_unknown_name_lists_known_and_close_matches():
    reg = make()
    with pytest.raises(UnknownNameError) as info:
        reg.get("resnet21")
    msg = str(info.value)
    assert "unknown widget 'resnet21'" in msg and "Did you mean" in msg and "small_cnn" in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_create_passes_arguments_and_decorator_uses_function_name():
    reg = make()
    assert reg.create("resnet20", depth=3) == ("resnet20", {"depth": 3})

    @reg.register(flavour="x")
    def fancy():
        return 1

    assert "fancy" in reg and reg.meta("fancy") == {"flavour": "x"} and reg.create("fancy") == 1

"""Pretrained weights by tag (timm, torchvision) from local caches only: nothing here reaches the network.

Each test points Hugging Face's and torch hub's caches at its own folder and lays out files the
way those libraries do (``models--timm--<tag>/refs/main`` + ``snapshots/<commit>/<file>``; torch
hub's ``checkpoints/<file of the URL>``), with random weights of timm's tiny ``test_vit`` and
torchvision's ``squeezenet1_1``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from robust_ens import models
from robust_ens.errors import CheckpointError, RobustEnsError
from robust_ens.models import pretrained

TAG = "test_vit.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", pretrained.ONLINE_ENV):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download: {args}")

    import huggingface_hub
    import timm.models._builder as timm_builder
    import timm.models._hub as timm_hub
    import torch.hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    # timm's own routes to the hub, which loading a cached tag must never take
    for name in ("hf_hub_download", "download_cached_file"):
        monkeypatch.setattr(timm_hub, name, no_network)
    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(timm_builder, name, no_network)


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def random_state(arch: str = "test_vit", seed: int = 0) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}


def put_in_hf_cache(tmp_path: Path, tag: str, state: dict[str, torch.Tensor], filename: str = "model.safetensors") -> Path:
    repo = tmp_path / "hf" / "hub" / f"models--timm--{tag}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    if filename.endswith(".safetensors"):
        save_file(state, str(snap / filename))
    else:
        torch.save(state, snap / filename)
    return snap / filename


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_cached_tag_loads_offline_with_its_normalization_and_sha256(tmp_path: Path) -> None:
    state = random_state()
    file = put_in_hf_cache(tmp_path, TAG, state)
    m = models.create(f"timm:{TAG}", num_classes=1000, pretrained=True)
    got = m.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    assert m.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}  # test_vit's pretrained_cfg
    assert pretrained.weight_files(f"timm:{TAG}") == {f"timm:{TAG}/model.safetensors": sha(file)}
    # timm's default tag of a bare name resolves to the same file and the same record
    assert pretrained.full_tag("timm:test_vit") == TAG
    assert pretrained.weight_files("timm:test_vit") == {f"timm:{TAG}/model.safetensors": sha(file)}
    assert m(torch.rand(1, 3, 160, 160)).shape == (1, 1000)


def test_the_pickle_file_is_read_when_no_safetensors_is_cached(tmp_path: Path) -> None:
    state = random_state(seed=1)
    file = put_in_hf_cache(tmp_path, TAG, state, "pytorch_model.bin")
    m = models.create(f"timm:{TAG}", num_classes=1000, pretrained=True)
    assert all(torch.equal(m.net.state_dict()[k], v) for k, v in state.items())
    assert pretrained.weight_files(f"timm:{TAG}") == {f"timm:{TAG}/pytorch_model.bin": sha(file)}


def test_another_head_size_keeps_the_body_and_resets_the_classifier(tmp_path: Path) -> None:
    state = random_state()
    put_in_hf_cache(tmp_path, TAG, state)
    m = models.create(f"timm:{TAG}", num_classes=10, pretrained=True)
    assert torch.equal(m.net.state_dict()["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    assert m.net.state_dict()["head.weight"].shape[0] == 10


def test_a_missing_tag_is_refused_in_one_line_with_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(RobustEnsError) as err:
        models.create(f"timm:{TAG}", num_classes=1000, pretrained=True)
    msg = one_line(err)
    assert f"'timm:{TAG}'" in msg and str(tmp_path / "hf" / "hub") in msg and pretrained.ONLINE_ENV in msg
    assert f"timm.create_model('{TAG}', pretrained=True)" in msg and "--weights FILE" in msg
    with pytest.raises(RobustEnsError, match="not in the local cache") as err:
        pretrained.weight_files("timm:test_vit")  # the default tag is named, not the bare arch
    assert f"'timm:{TAG}'" in one_line(err)


def test_a_damaged_cached_file_is_one_line_naming_it(tmp_path: Path) -> None:
    file = put_in_hf_cache(tmp_path, TAG, random_state())
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        models.create(f"timm:{TAG}", num_classes=1000, pretrained=True)
    assert str(file) in one_line(err)


def test_online_opt_in_downloads_into_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    state = random_state(seed=2)
    asked = []

    def fake_download(repo: str, filename: str, *, revision: str | None = None, cache_dir: Path | None = None) -> str:
        asked.append((repo, filename, Path(cache_dir or "")))
        return str(put_in_hf_cache(tmp_path, TAG, state, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv(pretrained.ONLINE_ENV, "1")
    m = models.create(f"timm:{TAG}", num_classes=1000, pretrained=True)
    assert asked == [(f"timm/{TAG}", "model.safetensors", tmp_path / "hf" / "hub")]
    assert all(torch.equal(m.net.state_dict()[k], v) for k, v in state.items())


def test_a_weights_file_loads_and_its_sha256_is_recorded(tmp_path: Path) -> None:
    state = random_state(seed=3)
    file = tmp_path / "mine.safetensors"
    save_file(state, str(file))
    for spec in ("timm:test_vit", f"timm:{TAG}"):
        m = models.create(spec, num_classes=1000, weights_file=str(file))
        assert all(torch.equal(m.net.state_dict()[k], v) for k, v in state.items())
        assert "weights_file" not in m.arch_kwargs
        assert pretrained.weight_files(spec, weights_file=file) == {str(file): sha(file)}
    with pytest.raises(RobustEnsError, match="does not exist") as err:
        pretrained.weight_files("timm:test_vit", weights_file=tmp_path / "nope.safetensors")
    one_line(err)


def test_unknown_names_and_tags_are_one_line() -> None:
    with pytest.raises(RobustEnsError, match="its tags: test_vit.r160_in1k") as err:
        pretrained.weight_files("timm:test_vit.nonexistent")
    one_line(err)
    with pytest.raises(RobustEnsError, match="timm has no model 'no_such_net.x'") as err:
        models.create("timm:no_such_net.x", num_classes=1000, pretrained=True)
    one_line(err)
    with pytest.raises(RobustEnsError, match="has no weights 'IMAGENET9K'") as err:
        pretrained.weight_files("torchvision:squeezenet1_1.IMAGENET9K")
    one_line(err)


def put_in_torch_hub(tmp_path: Path, spec: str, state: dict[str, torch.Tensor]) -> Path:
    w = pretrained.torchvision_weights(spec)
    file = tmp_path / "torch" / "hub" / "checkpoints" / Path(w.url).name
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, file)
    return file


def test_torchvision_weights_come_from_torch_hubs_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models as tvm

    spec = "torchvision:squeezenet1_1"  # DEFAULT = IMAGENET1K_V1
    with pytest.raises(RobustEnsError) as err:
        models.create(spec, num_classes=1000, pretrained=True)
    msg = one_line(err)
    assert "'torchvision:squeezenet1_1.IMAGENET1K_V1'" in msg and "squeezenet1_1-b8a52dc0.pth" in msg
    assert "get_model('squeezenet1_1', weights='IMAGENET1K_V1')" in msg
    torch.manual_seed(0)
    state = tvm.squeezenet1_1(weights=None).state_dict()
    file = put_in_torch_hub(tmp_path, spec, state)
    with pytest.raises(CheckpointError, match="does not start with 'b8a52dc0'") as err:  # not torchvision's file
        models.create(spec, num_classes=1000, pretrained=True)
    one_line(err)
    monkeypatch.setattr(pretrained, "_check_tv_hash", lambda path, digest: None)
    m = models.create(spec, num_classes=1000, pretrained=True)
    assert all(torch.equal(m.net.state_dict()[k], v) for k, v in state.items())
    assert m.normalization["mean"] == pytest.approx(list(pretrained.IMAGENET_MEAN))
    assert pretrained.weight_files(spec) == {"torchvision:squeezenet1_1.IMAGENET1K_V1/squeezenet1_1-b8a52dc0.pth": sha(file)}


def test_transferattack_models_name_real_tags_and_the_inception_normalization() -> None:
    import timm
    import torchvision.models as tvm

    assert list(pretrained.TRANSFERATTACK_MODELS) == [
        "resnet50", "vgg16", "mobilenet_v2", "inception_v3",
        "vit_base_patch16_224", "pit_b_224", "visformer_small", "swin_tiny_patch4_window7_224"]
    for ref in pretrained.TRANSFERATTACK_MODELS.values():
        if ref.timm_tag:
            assert ref.timm_tag in timm.list_pretrained(ref.timm_tag)
        if ref.spec.startswith("torchvision:"):  # TransferAttack's weights="DEFAULT"
            arch, name = ref.spec[len("torchvision:"):].split(".")
            assert tvm.get_model_weights(arch).DEFAULT.name == name
        else:
            assert pretrained.full_tag(ref.name) == ref.timm_tag  # timm's default tag of the bare name
    mean, std = pretrained.doubly_normalized()
    x = torch.rand(2, 3, 8, 8)
    ta = (x - 0.5) / 0.5  # TransferAttack's wrap_model for torchvision Inception ...
    m, s = torch.tensor(pretrained.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(pretrained.IMAGENET_STD).view(1, 3, 1, 1)
    ta = ta * s / 0.5 + (m - 0.5) / 0.5  # ... then torchvision's transform_input
    ours = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(ours, ta, atol=1e-6)

import json
import pickle

import pytest
import torch

from robust_ens import Ensemble, models
from robust_ens.errors import CheckpointError, RobustEnsError, UnknownNameError


def test_registry_lists_and_filters():
    assert {"resnet20", "small_cnn"} <= set(models.list_models())
    assert models.list_models("resnet*") == ["resnet20", "resnet32"]
    assert "small_cnn" not in models.list_models("*", exclude="small*")


def test_duplicate_model_name_is_an_error():
    with pytest.raises(RobustEnsError, match="already registered"):
        models.register_model("resnet20")(lambda **kw: torch.nn.Identity())


def test_unknown_model_lists_known():
    with pytest.raises(UnknownNameError, match="resnet20"):
        models.create("resnet99")


def test_resnet20_shape_params_and_layer_names():
    m = models.create("resnet20", num_classes=10)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    n_params = sum(p.numel() for p in m.parameters())
    assert 0.26e6 < n_params < 0.29e6  # ResNet-20 has ~0.27M parameters
    names = dict(m.named_modules())
    assert {"net.layer1", "net.layer2.1", "net.layer3.2.conv2", "net.linear"} <= set(names)


@pytest.mark.parametrize("size,chans", [(8, 1), (28, 1), (32, 3), (13, 2)])
def test_small_cnn_any_size_and_channels(size, chans):
    m = models.create("small_cnn", num_classes=7, in_chans=chans)
    assert m(torch.rand(3, chans, size, size)).shape == (3, 7)


def test_wrapper_normalizes_inside():
    m = models.create("small_cnn", in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)).eval()
    x = torch.rand(2, 3, 8, 8)
    expected = m.net((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    torch.testing.assert_close(m(x), expected)


def test_timm_passthrough_with_kwargs_and_no_download():
    m = models.create("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert m.arch == "timm:vit_tiny_patch16_224" and m.arch_kwargs == {"img_size": 32, "patch_size": 4}
    with pytest.raises(RobustEnsError, match="timm has no model"):
        models.create("timm:not_a_real_model")


def test_checkpoint_round_trip_records_sidecar(tmp_path):
    m = models.create("small_cnn", num_classes=10, in_chans=1, mean=(0.3,), std=(0.38,)).eval()
    with torch.no_grad():
        m.net.features[1].running_mean.add_(0.5)  # buffers must round-trip too
    path = models.save_checkpoint(m, tmp_path / "m0", dataset="digits", recipe={"lr": 0.1}, metrics={"acc": 0.9})
    record = json.loads((tmp_path / "m0.json").read_text())
    assert record["arch"] == "small_cnn" and record["dataset"] == "digits" and record["metrics"] == {"acc": 0.9}
    assert record["sha256"] == models.sha256_file(path)
    loaded = models.load_checkpoint(tmp_path / "m0.safetensors")
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(loaded(x), m(x))
    assert loaded.normalization == m.normalization


def test_sha256_mismatch_is_refused(tmp_path):
    m = models.create("small_cnn", in_chans=1)
    path = models.save_checkpoint(m, tmp_path / "m")
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        models.load_checkpoint(tmp_path / "m")
    models.save_checkpoint(m, tmp_path / "ok")
    with pytest.raises(CheckpointError, match="the caller expects"):
        models.load_checkpoint(tmp_path / "ok", sha256="0" * 64)


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    m = models.create("small_cnn", in_chans=1)
    models.save_checkpoint(m, tmp_path / "evil")
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    record = json.loads((tmp_path / "evil.json").read_text())
    record.update(weights="evil.pt", sha256=None)
    (tmp_path / "evil.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="unpickling arbitrary code"):
        models.load_checkpoint(tmp_path / "evil.json")
    assert not marker.exists()


def test_weights_only_state_dict_pt_loads(tmp_path):
    m = models.create("small_cnn", in_chans=1).eval()
    models.save_checkpoint(m, tmp_path / "w")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    record = json.loads((tmp_path / "w.json").read_text())
    record.update(weights="w.pt", sha256=models.sha256_file(tmp_path / "w.pt"))
    (tmp_path / "w.json").write_text(json.dumps(record))
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(models.load_checkpoint(tmp_path / "w").eval()(x), m(x))


def test_missing_sidecar_and_unsupported_format_have_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint record"):
        models.load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(UnknownNameError, match="zoo"):
        models.load("zoo:does_not_exist")


def test_zoo_checkpoints_load_and_verify():
    names = models.list_zoo()
    assert names, "the package ships at least one reference checkpoint"
    for name in names:
        m = models.load(f"zoo:{name}")
        parts = list(m.members) if isinstance(m, Ensemble) and "zoo" in m.checkpoint else [m]
        for part in parts:  # a zoo ensemble: every member file checked against the manifest
            assert part.checkpoint["sha256"] and part.num_classes == 10


def test_timm_weights_file_on_disk_loads_without_download(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=4)
    src = models.create("timm:vit_tiny_patch16_224", num_classes=10, **kw).eval()
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = models.create("timm:vit_tiny_patch16_224", num_classes=10, weights_file=tmp_path / "w.safetensors", **kw).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    assert "weights_file" not in dst.arch_kwargs
    with pytest.warns(UserWarning, match="fresh init"):  # another head size: the body loads, the head does not
        other = models.create("timm:vit_tiny_patch16_224", num_classes=5, weights_file=tmp_path / "w.safetensors", **kw)
    torch.testing.assert_close(other.net.blocks[0].attn.qkv.weight, src.net.blocks[0].attn.qkv.weight)
    with pytest.raises(RobustEnsError, match="do not fit"):
        models.create("timm:vit_tiny_patch16_224", num_classes=10, weights_file=tmp_path / "w.safetensors",
                      img_size=32, patch_size=4, depth=3, embed_dim=64, num_heads=4)


def test_models_layers_import_downwards_only():
    """registry sits at the bottom of models/ (architectures and packed register into it, checkpoint
    builds on it): no module imports one above it, at top level or inside a function."""
    import ast
    from pathlib import Path

    import robust_ens.models as pkg

    order = ["weights_io", "wrapper", "registry", "architectures", "packed_layers", "packed", "checkpoint"]
    root = Path(pkg.__file__).parent
    for i, name in enumerate(order):
        above = set(order[i + 1 :])
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robust_ens.models"):
                mods = {node.module.rsplit(".", 1)[-1], *(a.name for a in node.names)}
                assert not mods & above, f"models/{name}.py imports {sorted(mods & above)} from above it"

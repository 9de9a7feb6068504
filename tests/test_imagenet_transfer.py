"""The imagenet-transfer protocol (issue 24): TransferAttack's track, run here on images and models made here.

Offline and in seconds: the ImageNet-compatible folder is random PNGs written in ``tmp_path``
(TransferAttack's layout), the models are timm's tiny ``test_*`` architectures with random weights
(``timm-random:NAME@SEED``) or fixed-rule modules of this file, and the pretrained caches point at
empty folders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robust_ens import cli
from robust_ens.bench import ProtocolError, get_suite, load_protocol
from robust_ens.bench.examples import load_examples
from robust_ens.bench.runner import run_suite
from robust_ens.bench.targets import InputSized, resolve_target
from robust_ens.errors import RobustEnsError
from robust_ens.leaderboard import entry_path, validate
from robust_ens.leaderboard.schema import Entry
from tests.attack_fixtures import single_thread  # noqa: F401
from tests.imagenet_transfer_data import make_folder

SUITE = "imagenet-transfer"
EPS_LEVELS = 16  # 16/255


pytestmark = pytest.mark.usefixtures("single_thread")  # tests.attack_fixtures: one torch thread


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The smoke tier run once through the command line, with entries: its folder, store and data."""
    root = tmp_path_factory.mktemp("imagenet-smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUST_ENS_DATA", str(make_folder(root / "data", 6)))
        mp.setenv("ROBUST_ENS_CACHE", str(root / "cache"))
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rc = cli.main(["--quiet", "bench", "run", SUITE, "--tier", "smoke", "--out", str(root / "run"),
                           "--store", str(root / "store"), "--entries"])
            yield {"rc": rc, "run": root / "run", "store": root / "store",
                   "examples": load_examples(get_suite(SUITE), get_suite(SUITE).tier("smoke"))}
        finally:
            torch.set_num_threads(before)


# --------------------------------------------------------------------------- the protocol


def test_the_protocol_is_transferattacks() -> None:
    p = get_suite(SUITE)
    assert p.kind == "attack" and p.dataset == "imagenet-compatible" and p.success == "all-images"
    full = p.tier("full")
    assert full.n == 1000 and full.eps == (16 / 255,) and full.filter is None
    for name in full.attacks:  # 10 iterations; TA's step sizes: 1.6/255, CWA 3.2/255
        atk = p.attacks[name].build(16 / 255, steps=full.steps)
        assert atk.steps == 10 and atk.alpha == pytest.approx((3.2 if name == "cwa" else 1.6) / 255)
    assert set(full.attacks) >= {"mifgsm", "sgm", "ghost", "ens", "svre", "adaea", "cwa", "smer", "vit_ensemble"}
    assert p.surrogates[full.surrogates_for("ens")[0]].members == (
        "torchvision:resnet50.IMAGENET1K_V2", "torchvision:vgg16.IMAGENET1K_V1",
        "torchvision:mobilenet_v2.IMAGENET1K_V2", "torchvision:inception_v3.IMAGENET1K_V1")
    panel = [m for t in full.targets for m in p.surrogates[t].members]
    assert len([m for m in panel if not m.startswith("robustbench:")]) == 8
    assert any(m.startswith("robustbench:imagenet/Linf/") for m in panel)
    assert p.tier("smoke").n <= p.tier("small").n <= full.n


def test_filter_and_success_rule_enter_the_digest_only_when_set() -> None:
    p = get_suite(SUITE)
    assert p.with_filter("smoke", "all-targets-correct").digest("smoke") != p.digest("smoke")
    assert p.with_filter("smoke", None).digest("smoke") == p.digest("smoke")
    with pytest.raises(ProtocolError, match="filter must be one of all-targets-correct"):
        p.with_filter("smoke", "clean")


def test_bad_filter_or_success_in_a_protocol_file_names_the_key(tmp_path: Path) -> None:
    src = (Path(__file__).resolve().parents[1] / "robust_ens/bench/protocols/imagenet-transfer.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace('success = "all-images"', 'success = "all"'))
    with pytest.raises(ProtocolError, match="success: must be one of clean-correct, all-images"):
        load_protocol(bad)
    bad.write_text(src.replace("[tiers.smoke]\n", '[tiers.smoke]\nfilter = "some"\n'))
    with pytest.raises(ProtocolError, match="tiers.smoke.filter: must be one of all-targets-correct"):
        load_protocol(bad)


# --------------------------------------------------------------------------- smoke, end to end


def test_smoke_tier_runs_end_to_end_with_an_entry_per_attack(smoke: dict) -> None:
    assert smoke["rc"] == 0
    summary = json.loads((smoke["run"] / "summary.json").read_text())
    attacks = get_suite(SUITE).tier("smoke").attacks
    assert summary["dataset"] == "imagenet-compatible" and set(summary["attack_view"]) == set(attacks)
    files = sorted((smoke["run"] / "entries").glob("*.json"))
    assert {f.stem for f in files} == set(attacks)
    for f in files:
        validate(f)
        e = Entry.model_validate_json(f.read_text())
        assert e.kind == "attack" and e.model.config["success"] == "all-images" and "filter" not in e.model.config
        assert entry_path(e, "board") == Path("board/imagenet/imagenet-transfer") / f.name
        for c in e.results.cells:  # TransferAttack's ASR: 1 - accuracy on every image
            assert c.n == 4 and c.success_rate == pytest.approx(1 - c.robust_acc)
        for t in e.model.config["targets"].values():  # random weights, recorded by state-dict sha256
            assert t["spec"].startswith("timm-random:") and len(t["sha256"]) == 1


def test_every_stored_set_holds_the_eps_budget(smoke: dict) -> None:
    clean = smoke["examples"].x_u8.int()
    sets = sorted(smoke["store"].rglob("*.safetensors"))
    assert len(sets) == len(get_suite(SUITE).tier("smoke").attacks)
    for path in sets:
        adv = load_file(str(path))["x_adv"]
        assert adv.dtype == torch.uint8 and adv.shape == clean.shape
        change = (adv.int() - clean).abs().amax()
        assert 0 < int(change) <= EPS_LEVELS, path
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["max_change_levels"] <= EPS_LEVELS and record["enforced_eps"] <= 16 / 255 + 1e-12


# --------------------------------------------------------------------------- the filter


class _Rule(nn.Module):
    """Class 7 for every image (``bright=False``), or 7 for bright images and 3 for dark ones."""

    def __init__(self, bright: bool) -> None:
        super().__init__()
        self.bright = bright
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = torch.full((x.shape[0],), 7, dtype=torch.long, device=x.device)
        cls = torch.where(x.mean((1, 2, 3)) > 0.5, seven, 3) if self.bright else seven
        return F.one_hot(cls, 1000).to(x.dtype) * self.scale + 0 * x.sum((1, 2, 3))[:, None]


def always7() -> nn.Module:
    """A target that predicts class 7 for every image."""
    return _Rule(bright=False)


def bright7() -> nn.Module:
    """A target that predicts 7 for bright images, 3 for dark ones."""
    return _Rule(bright=True)


ALWAYS7, BRIGHT7 = "tests.test_imagenet_transfer:always7", "tests.test_imagenet_transfer:bright7"
LABELS = [7, 7, 7, 3, 7, 7]
BRIGHT = [0.9, 0.9, 0.1, 0.9, 0.9, 0.2]  # always7 right on 0,1,2,4,5; bright7 right on 0,1,4


def _small_protocol(tmp_path: Path) -> Path:
    toml = tmp_path / "imagenet-mini.toml"
    toml.write_text('''suite = "imagenet-mini"
version = 1
kind = "attack"
task = "transfer"
success = "all-images"
dataset = "imagenet-compatible"
[surrogates.rn]
members = ["timm-random:test_resnet@0"]
[attacks.mifgsm]
attack = "mifgsm"
alpha = "eps/10"
params = { steps = 2, decay = 1.0 }
[tiers.smoke]
n = 6
batch_size = 4
eps = ["16/255"]
attacks = ["mifgsm"]
surrogates = ["rn"]
''')
    return toml


@pytest.fixture
def rule_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROBUST_ENS_DATA", str(make_folder(tmp_path / "data", 6, size=32, labels=LABELS,
                                                          brightness=BRIGHT)))
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    return _small_protocol(tmp_path)


def test_filter_keeps_what_every_target_gets_right_and_the_entry_says_how_many(rule_data: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    alone = run_suite(str(rule_data), "smoke", [ALWAYS7], tmp_path / "a", store=tmp_path / "s", progress=False,
                      filter="all-targets-correct")
    assert alone["n"] == 5  # always7 gets 5 of the 6 images right
    rc = cli.main(["--quiet", "bench", "run", str(rule_data), "--tier", "smoke", "--target", ALWAYS7, "--target",
                   BRIGHT7, "--filter", "all-targets-correct", "--out", str(tmp_path / "b"), "--store",
                   str(tmp_path / "s"), "--entries"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["n"] == 3  # bright7 misclassifies images 3 (bright, label 3) and 5 (dark, label 7): removed
    for row in summary["targets"].values():
        assert row["clean"]["acc"] == 1.0 and row["filter/kept"] == 3 and row["filter/of"] == 6
    e = Entry.model_validate_json((tmp_path / "b" / "entries" / "mifgsm.json").read_text())
    assert e.protocol.n_examples == 3 and e.model.config["filter"] == {"rule": "all-targets-correct", "kept": 3, "of": 6}
    assert e.results.metrics["filter/kept"] == 3 and e.results.metrics["filter/of"] == 6


def test_a_run_folder_filtered_with_another_panel_is_refused(rule_data: Path, tmp_path: Path) -> None:
    run_suite(str(rule_data), "smoke", [ALWAYS7], tmp_path / "r", store=tmp_path / "s", progress=False,
              filter="all-targets-correct")
    with pytest.raises(RobustEnsError, match=r"filtered \(all-targets-correct\) with other targets: 5 of 6 .* 3 now"):
        run_suite(str(rule_data), "smoke", [ALWAYS7, BRIGHT7], tmp_path / "r", store=tmp_path / "s", progress=False,
                  filter="all-targets-correct")


def test_regress_reruns_a_filtered_entry_under_its_filter(rule_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # a registered attack suite whose tier has its own panel: regress re-runs it, filtered as recorded
    from robust_ens.bench import protocol
    from robust_ens.bench.regress import filter_rule, regress

    toml = tmp_path / "imagenet-mini.toml"
    toml.write_text(rule_data.read_text() + f'targets = ["{ALWAYS7}", "{BRIGHT7}"]\n')
    monkeypatch.setitem(protocol.SUITES._entries, "imagenet-mini", toml)
    rc = cli.main(["--quiet", "bench", "run", "imagenet-mini", "--tier", "smoke", "--filter", "all-targets-correct",
                   "--out", str(tmp_path / "b"), "--store", str(tmp_path / "s"), "--entries"])
    assert rc == 0
    files = sorted((tmp_path / "b" / "entries").glob("*.json"))
    e = Entry.model_validate_json(files[0].read_text())
    assert filter_rule(e) == "all-targets-correct" and e.protocol.n_examples == 3
    rep = regress(files, store=tmp_path / "s", progress=False)
    assert rep.ok and rep.checked and rep.exact == len(rep.checked), rep.table()


def test_data_option_names_the_folder_and_a_run_folder_refuses_other_images(rule_data: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:
    # --data finds TransferAttack's layout without $ROBUST_ENS_DATA
    other = make_folder(tmp_path / "other", 6, size=32, labels=LABELS, seed=1)
    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "nothing-here"))
    run = ["--quiet", "bench", "run", str(rule_data), "--tier", "smoke", "--target", ALWAYS7, "--out",
           str(tmp_path / "r"), "--store", str(tmp_path / "s")]
    assert cli.main([*run, "--data", str(tmp_path / "data")]) == 0
    first = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert first["n"] == 6
    capsys.readouterr()
    # the same --out on other images: refused in one line, never resumed on the old cells
    assert cli.main([*run, "--data", str(other)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a run on other images" in err and "pick a new --out" in err
    assert cli.main([*run, "--data", str(tmp_path / "data")]) == 0  # the first folder again: resumes


def test_without_the_filter_every_image_counts(rule_data: Path, tmp_path: Path) -> None:
    s = run_suite(str(rule_data), "smoke", [ALWAYS7, BRIGHT7], tmp_path / "r", store=tmp_path / "s", progress=False)
    assert s["n"] == 6 and "filter/kept" not in s["targets"][BRIGHT7]
    rate = s["attack_view"]["mifgsm"]["0.0627451"]["per_target"][BRIGHT7]
    assert rate["n"] == 6  # all images: bright7's 3 clean errors count as successes
    assert rate["success"] == pytest.approx(1 - s["targets"][BRIGHT7]["cells"][0]["acc"])


# --------------------------------------------------------------------------- refusals, one line each


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_missing_data_is_one_line_saying_where_and_what(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ROBUST_ENS_DATA", str(tmp_path / "empty"))
    rc = cli.main(["--quiet", "bench", "run", SUITE, "--tier", "smoke", "--out", str(tmp_path / "r")])
    err = _one_line(capsys)
    assert rc == 2 and "ImageNet-compatible set not found" in err and "labels.csv" in err
    assert not (tmp_path / "r").exists()


def test_an_uncached_pretrained_tag_is_one_line_with_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ROBUST_ENS_DATA", str(make_folder(tmp_path / "data", get_suite(SUITE).tier("small").n, size=8)))
    monkeypatch.setenv("ROBUST_ENS_CACHE", str(tmp_path / "cache"))
    for var in ("HF_HOME", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "ROBUST_ENS_ONLINE"):
        monkeypatch.delenv(var, raising=False)
    rc = cli.main(["--quiet", "bench", "run", SUITE, "--tier", "small", "--out", str(tmp_path / "r")])
    err = _one_line(capsys)
    assert rc == 2 and "torchvision:resnet50.IMAGENET1K_V2" in err and "ROBUST_ENS_ONLINE=1" in err
    assert not (tmp_path / "r").exists()


def test_a_robustbench_target_without_its_extra_or_checkpoint_is_one_line(rule_data: Path, tmp_path: Path) -> None:
    with pytest.raises(RobustEnsError) as err:
        run_suite(str(rule_data), "smoke", ["robustbench:imagenet/Linf/Wong2020Fast"], tmp_path / "r",
                  store=tmp_path / "s", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "robustbench:imagenet/Linf/Wong2020Fast" in msg
    assert "pip install" in msg or "no checkpoint at" in msg  # the extra missing, or its file
    assert not (tmp_path / "r").exists()


def test_a_bad_random_spec_is_one_line() -> None:
    with pytest.raises(RobustEnsError, match="timm-random:NAME@SEED"):
        resolve_target("timm-random:test_resnet")
    with pytest.raises(RobustEnsError, match="timm has no model 'no_such_net'"):
        resolve_target("timm-random:no_such_net@0")


# --------------------------------------------------------------------------- models wrapped like TransferAttack's


def test_random_models_are_seeded_recorded_and_resized_to_their_input_size() -> None:
    a, b = resolve_target("timm-random:test_resnet@3"), resolve_target("timm-random:test_resnet@3")
    assert a.files == b.files and a.files != resolve_target("timm-random:test_resnet@4").files
    m = a.module
    assert isinstance(m, InputSized) and m.size == 160  # timm's test_resnet: 160 px, like Inception's 299
    seen: list[tuple[int, ...]] = []
    m.net.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    m(x).sum().backward()
    assert seen == [(2, 3, 160, 160)] and x.grad is not None and x.grad.abs().sum() > 0
    assert m.net.normalization["mean"] == pytest.approx([0.5, 0.5, 0.5])  # its own data config


def test_a_cached_pretrained_tag_is_wrapped_like_transferattacks_models(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models as tvm

    from robust_ens.models import pretrained
    from tests.test_pretrained_weights import put_in_hf_cache, put_in_torch_hub, random_state

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "ROBUST_ENS_ONLINE"):
        monkeypatch.delenv(var, raising=False)
    file = put_in_hf_cache(tmp_path, "test_vit.r160_in1k", random_state())
    vit = resolve_target("timm:test_vit.r160_in1k", dataset="imagenet-compatible")
    assert isinstance(vit.module, InputSized) and vit.module.size == 160  # its data config's input size
    assert vit.files == pretrained.weight_files("timm:test_vit.r160_in1k") and len(vit.files) == 1
    assert file.is_file()
    spec = "torchvision:inception_v3.IMAGENET1K_V1"  # TransferAttack's: 299 px, mean = std = 0.5
    torch.manual_seed(0)
    put_in_torch_hub(tmp_path, spec, tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict())
    monkeypatch.setattr(pretrained, "_check_tv_hash", lambda path, digest: None)  # not torchvision's own file
    inc = resolve_target(spec, dataset="imagenet-compatible")
    assert isinstance(inc.module, InputSized) and inc.module.size == 299
    assert inc.module.net.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert inc.module.net.net.transform_input  # torchvision's own on top: TransferAttack's double normalization
    assert inc.module(torch.rand(1, 3, 224, 224)).shape == (1, 1000)

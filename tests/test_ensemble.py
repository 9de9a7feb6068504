import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import Ensemble, models
from robust_ens.errors import RobustEnsError


class Fixed(nn.Module):
    """A 'model' returning fixed logits, for exact combine checks."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))
        self.num_classes = self.logits.shape[-1]

    def forward(self, x):
        return self.logits.expand(len(x), -1)


LOGITS = [[2.0, 1.0, 0.0], [0.0, 3.0, 0.5], [1.5, 0.0, 1.4]]


def fixed_ensemble(combine):
    return Ensemble([Fixed(row) for row in LOGITS], combine=combine, precision="fp32")


def test_member_logits_shape():
    x = torch.rand(4, 1, 8, 8)
    assert fixed_ensemble("logits").member_logits(x).shape == (3, 4, 3)


def test_combine_logits_is_the_mean_of_logits():
    out = fixed_ensemble("logits")(torch.rand(2, 1, 8, 8))
    torch.testing.assert_close(out[0], torch.tensor(LOGITS).mean(0))


def test_combine_probs_softmax_is_the_mean_probability():
    out = fixed_ensemble("probs")(torch.rand(2, 1, 8, 8))
    mean_probs = F.softmax(torch.tensor(LOGITS), -1).mean(0)
    torch.testing.assert_close(F.softmax(out[0], -1), mean_probs)


def test_combine_vote_counts_votes_and_breaks_ties_by_probability():
    out = fixed_ensemble("vote")(torch.rand(2, 1, 8, 8))
    # votes: class 0 (members 0 and 2) beats class 1 (member 1)
    assert out.argmax(-1).tolist() == [0, 0]
    tie = Ensemble([Fixed([5.0, 0.0]), Fixed([0.0, 1.0])], combine="vote", precision="fp32")
    assert tie(torch.rand(1, 1, 4, 4)).argmax(-1).item() == 0  # mean prob favours class 0


def test_members_must_agree_on_classes():
    with pytest.raises(RobustEnsError, match="disagree on the number of classes"):
        Ensemble([models.create("small_cnn", num_classes=10, in_chans=1), models.create("small_cnn", num_classes=5, in_chans=1)])


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.rand(1, 8, 8), "shaped"),
        (torch.randint(0, 255, (1, 1, 8, 8), dtype=torch.uint8), "floating-point"),
        (torch.rand(1, 1, 8, 8) * 2 - 0.5, r"\[0, 1\]"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_inputs_are_refused(x, match):
    ens = fixed_ensemble("logits")
    with pytest.raises(RobustEnsError, match=match):
        ens(x)


def test_bad_arguments_are_refused():
    with pytest.raises(RobustEnsError, match="combine must be"):
        Ensemble([Fixed([1.0, 2.0])], combine="median")
    with pytest.raises(RobustEnsError, match="precision must be"):
        Ensemble([Fixed([1.0, 2.0])], precision="fp8")
    with pytest.raises(RobustEnsError, match="at least one member"):
        Ensemble([])


def test_weights_are_applied():
    ens = Ensemble([Fixed([1.0, 0.0]), Fixed([0.0, 3.0])], weights=[3, 1], precision="fp32")
    torch.testing.assert_close(ens(torch.rand(1, 1, 2, 2))[0], torch.tensor([0.75, 0.75]))


def test_bf16_logits_close_to_fp32():
    torch.manual_seed(0)
    members = [models.create("resnet20").eval() for _ in range(2)]
    x = torch.rand(8, 3, 32, 32)
    fp32 = Ensemble(members, precision="fp32")(x)
    bf16 = Ensemble(members, precision="bf16")(x)
    assert bf16.dtype == torch.float32
    rel = (bf16 - fp32).norm() / fp32.norm()
    assert rel < 0.05, rel
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.75


def test_gradients_flow_to_inputs():
    ens = Ensemble([models.create("small_cnn", in_chans=1).eval() for _ in range(2)], precision="fp32")
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    ens(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_compile_option_matches_eager():
    torch.manual_seed(0)
    members = [models.create("small_cnn", in_chans=1).eval() for _ in range(2)]
    x = torch.rand(4, 1, 8, 8)
    eager = Ensemble(members, precision="fp32")(x)
    compiled = Ensemble(members, precision="fp32", compile=True)
    try:
        out = compiled(x)
    except Exception as err:  # a missing C compiler in the user's environment is not our bug
        pytest.skip(f"torch.compile unavailable here: {err}")
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


def test_member_forward_matches_member_logits_and_checks_index():
    torch.manual_seed(0)
    ens = Ensemble([models.create("small_cnn", in_chans=1).eval() for _ in range(3)], precision="fp32")
    x = torch.rand(4, 1, 8, 8)
    stacked = ens.member_logits(x)
    for k in range(3):
        torch.testing.assert_close(ens.member_forward(k, x), stacked[k])
    with pytest.raises(RobustEnsError, match="out of range"):
        ens.member_forward(3, x)


def test_precision_is_chosen_at_construction_with_one_default():
    from robust_ens import precision

    assert Ensemble([Fixed([1.0, 2.0])]).precision == precision.DEFAULT_PRECISION == "auto"
    assert precision.validate(None) == precision.DEFAULT_PRECISION
    ens = Ensemble([Fixed([1.0, 2.0]), Fixed([0.0, 1.0])], precision="bf16")
    view = ens.with_precision("fp32")
    assert (view.precision, ens.precision) == ("fp32", "bf16")  # a view; the original is unchanged
    assert view.members is ens.members and view.weights is ens.weights
    assert len(list(view.parameters())) == len(list(ens.parameters()))
    with pytest.raises(RobustEnsError, match="precision must be"):
        ens.with_precision("fp8")
    with pytest.raises(RobustEnsError, match="precision must be"):
        ens.precision = "fp8"  # the attribute stays settable for scripts, and is validated


def test_packed_with_precision_keeps_the_batched_forward():
    ens = models.create("packed:small_cnn", members=3, in_chans=1, width=4, seed=0).eval()
    view = ens.with_precision("fp32")
    assert type(view) is type(ens) and view.precision == "fp32" and ens.precision == "auto"
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(view.member_logits(x), Ensemble(list(ens.members), precision="fp32").member_logits(x))


def test_predict_labels_is_the_argmax_of_the_core_predict():
    from robust_ens.evaluation import predict

    ens = fixed_ensemble("logits").train()
    x = torch.rand(5, 1, 4, 4)
    labels = ens.predict_labels(x, batch_size=2)
    assert torch.equal(labels, predict(ens, x).argmax(-1))
    assert ens.training  # eval mode is restored
    assert not hasattr(Ensemble, "predict")  # logits come from evaluation.predict, labels from predict_labels


def test_resolve_device_is_the_one_default():
    from robust_ens.device import default_device, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None) == resolve_device("") == default_device()
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")

"""The ensemble runtime: ``Ensemble(members, combine=..., precision=...)``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import precision as _precision
from robust_ens import streams as _streams
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import model_dtype, predict
from robust_ens.models.folding import fold_batchnorm, weights_signature

Combine = Literal["logits", "probs", "vote"]
COMBINES = ("logits", "probs", "vote")


def check_images(x: torch.Tensor, what: str = "x") -> None:
    """Refuse anything that is not a float NCHW batch of images in [0, 1].

    Raises:
        RobustEnsError: naming the argument and what to do.
    """
    if not isinstance(x, torch.Tensor):
        raise RobustEnsError(f"{what} must be a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise RobustEnsError(
            f"{what} must be a batch of images shaped [N, C, H, W], got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if not x.is_floating_point():
        raise RobustEnsError(
            f"{what} must be a floating-point tensor in [0, 1], got dtype {x.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise RobustEnsError(
            f"{what} must hold images in [0, 1] (got min {x.min().item():.4g}, max {x.max().item():.4g}); "
            "models normalize inputs themselves, so pass un-normalized images"
        )


def _num_classes(m: nn.Module) -> int | None:
    n = getattr(m, "num_classes", None)
    return int(n) if n is not None else None


class Ensemble(nn.Module):
    """A set of classifiers evaluated together.

    Args:
        members: Models taking [0, 1] images (``nn.Module`` s returning logits ``[N, K]``).
        combine: How ``forward`` combines members: ``"logits"`` (mean of logits), ``"probs"``
            (log of the mean softmax, so ``softmax(forward(x))`` is the mean probability), or
            ``"vote"`` (log of the vote share; ties broken by the mean probability; not
            differentiable).
        precision: ``"auto"`` (bf16 autocast + channels_last on CUDA and on CPUs with native
            bf16, fp32 elsewhere), ``"fp32"`` or ``"bf16"``; ``None`` (default) is
            :data:`robust_ens.precision.DEFAULT_PRECISION` (``"auto"``). Fixed here: for another
            precision take a view with :meth:`with_precision`.
        weights: Optional non-negative member weights (normalized to sum 1) for logits/probs.
        compile: Wrap each member in ``torch.compile`` (first call is slow; later calls faster).
        streams: On the CPU, run the members' forwards and input gradients as parallel
            single-threaded streams (:mod:`robust_ens.streams`): much faster beside a busy process,
            for members without parameter gradients (an attack's folded bf16 view). Opt-in, since
            the float rounding may differ from the default path. ``None`` (default) reads
            ``ROBUST_ENS_STREAMS`` (``1``: on), so engine runs can turn it on too.
        check_inputs: Validate that inputs are float NCHW in [0, 1] on every call.

    Example:
        >>> import torch
        >>> from robust_ens import Ensemble, models
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(3)]).eval()
        >>> ens.member_logits(torch.rand(4, 1, 8, 8)).shape
        torch.Size([3, 4, 10])
    """

    weights: torch.Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: Combine | str = "logits",
        precision: _precision.Precision | str | None = None,
        *,
        weights: Sequence[float] | None = None,
        compile: bool = False,
        check_inputs: bool = True,
        streams: bool | None = None,
    ) -> None:
        super().__init__()
        self._init_ensemble(members, combine, precision, weights=weights, compile=compile, check_inputs=check_inputs,
                            streams=streams)

    def _init_ensemble(
        self,
        members: Sequence[nn.Module],
        combine: Combine | str,
        precision: _precision.Precision | str | None,
        *,
        weights: Sequence[float] | None,
        compile: bool,
        check_inputs: bool,
        register: bool = True,
        streams: bool | None = False,
    ) -> None:
        """Validate and store the members and options (``register=False``: keep the members out of
        the module tree, for members that are views of one shared network, see ``models.packed``)."""
        members = list(members)
        if not members:
            raise RobustEnsError("an Ensemble needs at least one member")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise RobustEnsError(f"ensemble member {i} must be an nn.Module, got {type(m).__name__}")
        if combine not in COMBINES:
            raise RobustEnsError(f"combine must be one of {COMBINES}, got {combine!r}")
        chosen = _precision.validate(precision)
        classes = {i: _num_classes(m) for i, m in enumerate(members)}
        known = {n for n in classes.values() if n is not None}
        if len(known) > 1:
            detail = ", ".join(f"member {i}: {n}" for i, n in classes.items())
            raise RobustEnsError(f"ensemble members disagree on the number of classes ({detail})")
        self.members: nn.ModuleList | list[nn.Module] = nn.ModuleList(members) if register else members
        self.num_classes: int | None = known.pop() if known else None
        self.combine: str = combine
        self._chosen_precision: str = chosen
        self.check_inputs = check_inputs
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
        if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
            raise RobustEnsError(
                f"weights must be {len(members)} non-negative numbers with a positive sum, got {weights!r}"
            )
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self._compiled: list[nn.Module] | None = None
        if compile:
            self._compiled = [torch.compile(m) for m in members]  # type: ignore[misc]
        self._layout_device: torch.device | None = None
        self.streams: bool = _streams.default_streams() if streams is None else bool(streams)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def precision(self) -> str:
        """The precision chosen at construction (``"auto"``, ``"fp32"`` or ``"bf16"``)."""
        return self._chosen_precision

    @precision.setter
    def precision(self, value: str) -> None:
        # Kept for existing scripts; library code builds the precision in or takes with_precision().
        self._chosen_precision = _precision.validate(value)

    def with_precision(self, precision: _precision.Precision | str) -> Ensemble:
        """The same ensemble computing in ``precision``: a view, the original is left as it is.

        Members, weights and options are shared, not copied (a trained ensemble evaluated in fp32
        costs no memory). Use it where an ensemble already exists; otherwise pass ``precision`` to
        the constructor.

        Example:
            >>> import torch
            >>> from robust_ens import Ensemble, models
            >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
            >>> view = ens.with_precision("fp32")
            >>> (view.precision, ens.precision, view.members is ens.members)
            ('fp32', 'auto', True)
        """
        chosen = _precision.validate(precision)
        view = copy.copy(self)
        # Own registries (the same modules and tensors in them), so the view never edits the original's.
        view.__dict__.update(_modules=dict(self._modules), _parameters=dict(self._parameters),
                             _buffers=dict(self._buffers), _chosen_precision=chosen)
        return view

    def folded(self, probe: torch.Tensor) -> Ensemble:
        """A view whose members are eval-mode copies with BatchNorm folded into the convolutions
        (:func:`robust_ens.models.folding.fold_batchnorm`): the same function, fewer passes. Attacks
        in bf16 use it (:class:`robust_ens.attacks.Attack`); it has no parameter gradients.

        The copies are cached and rebuilt when any member's weights or buffers change (a training
        step, a load, a move); they hold one more copy of the members' weights. A member that
        cannot be folded (no conv -> BatchNorm pair, not traceable by fx, or different logits on
        ``probe[:2]``) is used as it is; an ensemble with nothing to fold or one of views of a
        shared network returns itself. A compiled ensemble (``compile=True``) compiles the folded
        copies in its view: inductor then fuses what folding leaves between the convolutions (ReLU,
        residual adds, ReLU's backward, gradient accumulation) into a few kernels.

        Args:
            probe: An input batch of the shape the members take (two images are used).
        """
        if not isinstance(self.members, nn.ModuleList):
            return self
        members = list(self.members)
        key = (weights_signature(members), probe.device, tuple(probe.shape[1:]))
        cached = self.__dict__.get("_fold_cache")
        if cached is not None and cached[0] == key:
            return cached[1] if cached[1] is not None else self
        sample = probe[:2].detach().float()
        copies = [fold_batchnorm(m, sample.to(model_dtype(m))) for m in members]
        view = None  # nothing folded: the ensemble itself (not cached as a reference to itself)
        if any(c is not None for c in copies):
            view = copy.copy(self)
            chosen = [c if c is not None else m for c, m in zip(copies, members, strict=True)]
            compiled = None if self._compiled is None else [torch.compile(m) for m in chosen]
            view.__dict__.update(_modules={**self._modules, "members": nn.ModuleList(chosen)},
                                 _parameters=dict(self._parameters), _buffers=dict(self._buffers),
                                 _layout_device=None, _fold_cache=None, _compiled=compiled)
        self.__dict__["_fold_cache"] = (key, view)
        return view if view is not None else self

    def resolved_precision(self, device: torch.device | str) -> str:
        """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device``."""
        return _precision.resolve(self.precision, device)

    def _runners(self) -> list[nn.Module]:
        return self._compiled if self._compiled is not None else list(self.members)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        bf16 = self.resolved_precision(x.device) == "bf16"
        if bf16:
            if self._layout_device != x.device:
                # channels_last is what oneDNN/cuDNN bf16 kernels want; converting once is enough.
                for m in self.members:
                    m.to(memory_format=torch.channels_last)
                self._layout_device = x.device
            x = x.contiguous(memory_format=torch.channels_last)
        return x, bf16

    def _run(self, m: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        if bf16:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return m(x).float()
        return m(x).float()

    def member_forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K]`` (float32) of member ``k`` alone, under the ensemble's precision policy.

        Strategies that step through members one at a time (SVRE, CWA's inner loop) use this.
        """
        if not 0 <= k < len(self.members):
            raise RobustEnsError(f"member index {k} out of range for an ensemble of {len(self.members)}")
        if self.check_inputs:
            check_images(x)
        x, bf16 = self._prepare(x)
        return self._run(self._runners()[k], x, bf16)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member, stacked: ``[M, N, K]`` in float32."""
        if self.check_inputs:
            check_images(x)
        x, bf16 = self._prepare(x)
        runners = self._runners()
        if self.streams and _streams.applies(runners, x, self._compiled is not None):
            return _streams.streamed_logits(lambda k, xk: self._run(runners[k], xk, bf16), len(runners), x)
        return _streams.stack_logits([self._run(m, x, bf16) for m in runners])

    def combine_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Combine member logits ``[M, N, K]`` into ensemble scores ``[N, K]`` per ``combine``."""
        w = self.weights.to(logits.device).view(-1, 1, 1)
        if self.combine == "logits":
            return (w * logits).sum(0)
        probs = (w * F.softmax(logits, dim=-1)).sum(0)
        if self.combine == "probs":
            return probs.clamp_min(1e-12).log()
        k = logits.shape[-1]
        votes = F.one_hot(logits.argmax(-1), k).float().mean(0)
        # probs < 1 < M * (1/M), so the tie-break never reorders different vote counts.
        share = votes + probs / (len(self) + 1)
        return share.clamp_min(1e-12).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble scores ``[N, K]`` (logits-like: ``argmax`` is the ensemble's prediction)."""
        return self.combine_logits(self.member_logits(x))

    def predict_labels(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted labels ``[N]``: the argmax of :func:`robust_ens.evaluation.predict` (forward only,
        in batches, eval mode restored; logits come from that ``predict``)."""
        return predict(self, x, batch_size=batch_size).argmax(-1)

    def extra_repr(self) -> str:
        # streams only when on: the repr is part of an adversarial set's key (bench.craft.module_fingerprint),
        # so a set made on streams is never served to a run without them, and older keys stay valid
        out = f"n_members={len(self)}, combine={self.combine!r}, precision={self.precision!r}"
        return out + (", streams=True" if self.streams else "")

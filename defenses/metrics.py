"""Diversity metrics of an ensemble: transferability matrix, vulnerability overlap, gradient cosine.

All three work on examples that *every* member classifies correctly (as in DVERGE's and TRS's
evaluation code), put members in eval mode, and restore their modes afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.distill import distill_features, eval_mode, linf_pgd
from robust_ens.defenses.features import check_layers, feature_layers
from robust_ens.defenses.gal import input_gradients
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import correct

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


def _members(ensemble: Ensemble | Sequence[nn.Module]) -> list[nn.Module]:
    members = list(ensemble.members) if isinstance(ensemble, Ensemble) else list(ensemble)
    if len(members) < 2:
        raise RobustEnsError(f"diversity metrics need an ensemble of >= 2 members, got {len(members)}")
    return members


def _as_ensemble(ensemble: Ensemble | Sequence[nn.Module]) -> Ensemble:
    return ensemble if isinstance(ensemble, Ensemble) else Ensemble(list(ensemble), precision="fp32")


@torch.no_grad()
def correct_by_all(members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Boolean mask ``[N]`` of the examples every member classifies correctly."""
    ok = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for m in members:
        ok &= correct(m, x, y, batch_size=batch_size)
    return ok


def default_attack(eps: float = 0.03, steps: int = 50, seed: int = 0) -> Attack:
    """PGD with random start (step ``2.5 * eps / steps``): DVERGE's transferability protocol uses 50 steps."""

    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return linf_pgd(model, x, y, eps=eps, alpha=2.5 * eps / steps, steps=steps, generator=gen)

    return attack


@dataclass
class TransferMatrix:
    """Result of :func:`transferability_matrix`.

    Attributes:
        matrix: ``[N, N + 1]`` attack success rates: row ``i`` = examples crafted on member ``i``;
            column ``j < N`` = fraction misclassified by member ``j``; the last column = by the ensemble.
            The diagonal is the white-box success rate on the source member.
        n_examples: Examples used (those all members classify correctly).
        n_offered: Examples offered.
    """

    matrix: torch.Tensor
    n_examples: int
    n_offered: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"matrix": self.matrix.tolist(), "n_examples": self.n_examples, "n_offered": self.n_offered}

    def off_diagonal_mean(self) -> float:
        """Mean success rate of member-to-other-member transfer (lower = more diverse)."""
        n = self.matrix.shape[0]
        mask = ~torch.eye(n, dtype=torch.bool)
        return float(self.matrix[:, :n][mask].mean())


def transferability_matrix(
    ensemble: Ensemble | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack | None = None,
    *,
    batch_size: int = 250,
) -> TransferMatrix:
    """Transfer success of adversarial examples among the members and to the whole ensemble.

    Args:
        ensemble: An :class:`~robust_ens.Ensemble` or a list of members.
        x: Clean images in [0, 1].
        y: Labels.
        attack: ``attack(model, x, y)`` returning adversarial images or an object with ``x_adv``
            (e.g. ``robust_ens.attacks.PGD(...)``); default :func:`default_attack` (PGD eps 0.03,
            50 steps).
        batch_size: Examples per attack call.

    Returns:
        A :class:`TransferMatrix` (``matrix`` is ``[N, N + 1]``).
    """
    members = _members(ensemble)
    ens = _as_ensemble(ensemble)
    attack = attack or default_attack()
    ok = correct_by_all(members, x, y)
    xs, ys = x[ok], y[ok]
    n = len(members)
    fooled = torch.zeros(n, n + 1)
    if len(xs) == 0:
        raise RobustEnsError("no example is classified correctly by every member; the matrix is undefined")
    with eval_mode(members):
        for i, src in enumerate(members):
            for b in range(0, len(xs), batch_size):
                xb, yb = xs[b : b + batch_size], ys[b : b + batch_size]
                out = attack(src, xb, yb)
                adv = (out.x_adv if hasattr(out, "x_adv") else out).detach()
                for j, tgt in enumerate(members):
                    fooled[i, j] += float((~correct(tgt, adv, yb)).sum())
                fooled[i, n] += float((~correct(ens, adv, yb)).sum())
    return TransferMatrix(fooled / len(xs), len(xs), len(x))


def vulnerability_overlap(
    ensemble: Ensemble | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 0.07,
    steps: int = 10,
    layers: Sequence[str] | None = None,
    batch_size: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """DVERGE's vulnerability-overlap matrix: cross-entropy w.r.t. the *target* label.

    Each batch of sources is paired with a random other batch of targets (all from examples every
    member classifies correctly) and distilled at a layer drawn per batch (step ``eps / steps``).
    Entry ``[i, j]`` is member ``j``'s mean cross-entropy, w.r.t. the target's label, on images
    distilled on member ``i``. A low value means member ``j`` sees the target class in the
    non-robust features of member ``i``: the diagonal measures each member's own vulnerability and
    high off-diagonal values mean vulnerabilities that do not overlap (DVERGE's Fig. 4).

    Args:
        ensemble: Ensemble or members.
        x: Images in [0, 1].
        y: Labels.
        eps: Distillation budget.
        steps: Distillation steps.
        layers: Candidate layers (default: :func:`~.features.feature_layers` of the first member).
        batch_size: Sources per layer draw (the authors use 10).
        seed: Seed of the pairing and the layer draws.

    Returns:
        ``[N, N]`` float tensor.
    """
    members = _members(ensemble)
    cand = list(layers) if layers else feature_layers(members[0])
    for m in members:
        check_layers(m, cand)
    ok = correct_by_all(members, x, y)
    xs, ys = x[ok], y[ok]
    if len(xs) < 2:
        raise RobustEnsError("vulnerability_overlap needs >= 2 examples classified correctly by every member")
    gen = torch.Generator().manual_seed(seed)
    src_order = torch.randperm(len(xs), generator=gen).to(xs.device)
    tgt_order = torch.randperm(len(xs), generator=gen).to(xs.device)
    n = len(members)
    total = torch.zeros(n, n)
    with eval_mode(members):
        for b in range(0, len(xs), batch_size):
            si = src_order[b : b + batch_size]
            ti = tgt_order[b : b + batch_size]
            layer = cand[int(torch.randint(len(cand), (1,), generator=gen))]
            distilled = distill_features(members, xs[si], xs[ti], layer, eps=eps, alpha=eps / steps, steps=steps)
            with torch.no_grad():
                for i, d in enumerate(distilled):
                    for j, m in enumerate(members):
                        total[i, j] += float(F.cross_entropy(m(d).float(), ys[ti], reduction="sum"))
    return total / len(xs)


def gradient_cosine(
    ensemble: Ensemble | Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 250,
    correct_only: bool = True,
) -> torch.Tensor:
    """Mean cosine similarity of the members' input gradients (of cross-entropy), per pair.

    Args:
        ensemble: Ensemble or members.
        x: Images in [0, 1].
        y: Labels.
        batch_size: Examples per gradient computation.
        correct_only: Use only the examples every member classifies correctly.

    Returns:
        ``[N, N]`` matrix (ones on the diagonal); the mean pairwise cosine is
        :func:`mean_gradient_cosine`.
    """
    members = _members(ensemble)
    if correct_only:
        ok = correct_by_all(members, x, y)
        x, y = x[ok], y[ok]
    if len(x) == 0:
        raise RobustEnsError("no examples left to compute gradient cosines on")
    n = len(members)
    sums = torch.zeros(n, n)
    with eval_mode(members):
        for b in range(0, len(x), batch_size):
            _, grads = input_gradients(members, x[b : b + batch_size], y[b : b + batch_size], create_graph=False)
            unit = torch.stack([F.normalize(g.detach().float(), dim=1) for g in grads])  # [N, B, D]
            sums += torch.einsum("ibd,jbd->ij", unit, unit).cpu()
    return sums / len(x)


def mean_gradient_cosine(
    ensemble: Ensemble | Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, **kwargs: Any
) -> float:
    """Mean over member pairs of :func:`gradient_cosine` (lower = more diverse gradients)."""
    c = gradient_cosine(ensemble, x, y, **kwargs)
    n = c.shape[0]
    return float(c[~torch.eye(n, dtype=torch.bool)].mean())

"""The examples a run evaluates: uint8 images, labels, their indices, fixed batches, and each batch's seed.

Every route that attacks a dataset -- the engine's protocols, ``robust-ens attack``, the
quickstart's transfer table -- cuts its examples into fixed batches here and seeds batch ``b``
with :func:`batch_seed`, so a number never depends on how many processes ran the batches or in
which order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from robust_ens import data
from robust_ens.bench.advsets import dataset_fingerprint
from robust_ens.bench.protocol import Protocol, Tier
from robust_ens.canonical import sha256_json
from robust_ens.errors import RobustEnsError


def batch_seed(seed: int, cell: str, batch: int) -> int:
    """The seed of batch ``batch`` of ``cell``: the one batch-seed rule of the project.

    It depends on (seed, cell, batch index) only -- never on the batch size of a process, the
    number of processes or the order batches run in -- like the corruptions' per-example seeds.
    The engine passes the protocol seed and a cell id (``mifgsm@zoo2@0.1``, ``sanity:pgd3@0.2``,
    ``autoattack-standard@0.0313725``); ``robust-ens attack`` and
    :func:`~robust_ens.bench.transfer_task.transfer_table` pass the user's seed and the attack's
    own cell id (:func:`attack_cell_id`).

    Returns:
        A non-negative integer below ``2**60`` (the first 15 hex digits of a sha256).
    """
    return int(sha256_json({"seed": seed, "cell": cell, "batch": batch})[:15], 16)


def attack_cell_id(attack: str, surrogate: str, eps: float) -> str:
    """The id of an (attack, surrogate, eps) cell: ``mifgsm@zoo2@0.1`` (eps with 6 significant digits)."""
    return f"{attack}@{surrogate}@{eps:.6g}"


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Fixed batches ``[0, b), [b, 2b), ...`` of ``n`` examples."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@dataclass
class Examples:
    """Examples to evaluate: uint8 images, labels, their indices into the split, and batches."""

    x_u8: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    label: str
    fingerprint: str
    num_classes: int
    batch_size: int
    batches: list[slice] = field(default_factory=list)

    @classmethod
    def of(cls, x_u8: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, label: str, num_classes: int,
           batch_size: int) -> Examples:
        """Examples from tensors (CPU, uint8 images), with their fingerprint and fixed batches."""
        x_u8, y = x_u8.contiguous(), y.contiguous()
        return cls(x_u8, y, indices, label, dataset_fingerprint(x_u8, y, label), num_classes, batch_size,
                   batch_slices(len(y), batch_size))


def dataset_label(name: str) -> str:
    """What entries call the data actually found: ``cifar10-jpeg`` for the JPEG copies."""
    if name == "cifar10":
        kind, path = data.find_cifar10(split="test")
        if kind is not None and "jpeg" in str(path).lower():
            return "cifar10-jpeg"
        return "cifar10" if kind is not None else name
    return name


def load_examples(protocol: Protocol, tier: Tier, root: str | Path | None = None) -> Examples:
    """The tier's examples (the same ``(n, seed)`` always gives the same ones); ``root`` is searched first."""
    xu, y = data.load_uint8(protocol.dataset, protocol.split, root=root)
    if tier.n > len(y):
        raise RobustEnsError(
            f"tier {tier.name!r} of {protocol.suite} needs n={tier.n} examples but {protocol.dataset} {protocol.split} "
            f"has {len(y)}; use a smaller tier"
        )
    idx = data.subset_indices(y, tier.n, protocol.seed)
    return Examples.of(xu[idx], y[idx], idx, dataset_label(protocol.dataset), data.info(protocol.dataset).num_classes,
                       tier.batch_size)

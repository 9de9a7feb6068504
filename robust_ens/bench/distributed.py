"""Scale-out with ``torchrun``: batches sharded across processes, per-example results gathered.

Started as ``torchrun --nproc-per-node N -m robust_ens.cli bench run ...`` each process sees
``WORLD_SIZE``/``RANK`` and joins one process group (gloo on CPU, NCCL on CUDA). Batch ``b`` is
processed by rank ``b % world``; since every batch's seed derives from (protocol seed, cell,
batch index), the numbers do not depend on how many processes ran them. No scheduler of our own.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Join the process group ``torchrun`` describes (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mine(batch: int) -> bool:
    """Whether this process handles ``batch``."""
    rank, world = rank_world()
    return batch % world == rank


def gather(local: dict[Any, Any]) -> dict[Any, Any]:
    """Merge every process's ``{batch: value}`` (each process gets the union)."""
    _, world = rank_world()
    if world == 1:
        return dict(local)
    parts: list[dict[Any, Any] | None] = [None] * world
    dist.all_gather_object(parts, local)
    out: dict[Any, Any] = {}
    for p in parts:
        out.update(p or {})
    return out


def barrier() -> None:
    """Wait for every process (no-op for one)."""
    if rank_world()[1] > 1:
        dist.barrier()


def is_main() -> bool:
    """Rank 0 writes the run folder's files."""
    return rank_world()[0] == 0

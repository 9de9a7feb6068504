"""Per-example random streams, so a corrupted set does not depend on how it is batched.

Every random draw of a corruption comes from a ``torch.Generator`` seeded by a 63-bit key derived
from ``(seed, example index, corruption name, severity, stream)``. Example ``i`` of a batch always
receives the same numbers whether it is corrupted alone, in a batch of 16 or in a batch of 10,000,
on the same device (CPU and CUDA generators produce different streams, as everywhere in torch).

Each example draws its numbers with *one* generator call per stream (a flat block that the
corruption slices), so the Python overhead is one call per example and stream, never per pixel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def base_key(seed: int, name: str, severity: int, stream: str) -> int:
    """A 64-bit key for one (seed, corruption, severity, stream), independent of the example."""
    digest = hashlib.blake2b(f"{int(seed)}|{name}|{int(severity)}|{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def example_seeds(seed: int, index: torch.Tensor, name: str, severity: int, stream: str) -> list[int]:
    """One 63-bit generator seed per example index (deterministic, batch-independent)."""
    base = base_key(seed, name, severity, stream)
    return [_splitmix64(base ^ _splitmix64(int(i))) >> 1 for i in index.tolist()]


class ExampleRNG:
    """Draws per-example random blocks for one corruption call.

    Args:
        seed: The user's seed.
        index: Example indices, int64 ``[N]``.
        name: Corruption name.
        severity: Severity 1..5.
        device: Device of the batch; numbers are generated there.
    """

    def __init__(self, seed: int, index: torch.Tensor, name: str, severity: int, device: torch.device) -> None:
        self.seed = int(seed)
        self.index = index
        self.name = name
        self.severity = int(severity)
        self.device = device
        self._gen = torch.Generator(device=device)

    def __len__(self) -> int:
        return int(self.index.numel())

    def _draw(self, stream: str, shape: Sequence[int], fill: str, dtype: torch.dtype, **kw: float) -> torch.Tensor:
        n = len(self)
        out = torch.empty((n, *shape), dtype=dtype, device=self.device)
        g = self._gen
        for i, s in enumerate(example_seeds(self.seed, self.index, self.name, self.severity, stream)):
            g.manual_seed(s)
            if fill == "normal":
                out[i].normal_(kw.get("mean", 0.0), kw.get("std", 1.0), generator=g)
            else:
                out[i].uniform_(kw.get("low", 0.0), kw.get("high", 1.0), generator=g)
        return out

    def normal(self, stream: str, shape: Sequence[int], mean: float = 0.0, std: float = 1.0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[N, *shape]`` normal samples, one block per example."""
        return self._draw(stream, shape, "normal", dtype, mean=mean, std=std)

    def uniform(self, stream: str, shape: Sequence[int], low: float = 0.0, high: float = 1.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[N, *shape]`` samples from U[low, high), one block per example."""
        return self._draw(stream, shape, "uniform", dtype, low=low, high=high)

    def randint(self, stream: str, shape: Sequence[int], low: int, high: int) -> torch.Tensor:
        """``[N, *shape]`` integers uniform in ``[low, high)`` (int64)."""
        u = self.uniform(stream, shape)
        return (u * (high - low)).long().clamp_(max=high - low - 1) + low

    def poisson(self, stream: str, rates: torch.Tensor) -> torch.Tensor:
        """Poisson samples with per-element ``rates`` ``[N, ...]`` (float), one generator per example."""
        out = torch.empty_like(rates)
        g = self._gen
        for i, s in enumerate(example_seeds(self.seed, self.index, self.name, self.severity, stream)):
            g.manual_seed(s)
            out[i] = torch.poisson(rates[i], generator=g)
        return out

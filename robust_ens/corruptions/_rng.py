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
import math
from collections.abc import Sequence
from functools import lru_cache

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


#: Bins of the guide table of the table-driven Poisson sampler (per rate).
_GUIDE_BINS = 2048


def _build_tables(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF tables for Poisson sampling at the rates ``r`` (1-D).

    Returns ``(cdf, guide)``: ``cdf [R, K]`` float32 cumulative probabilities (last entry forced to
    1, the tail beyond it is below 1e-15), and ``guide [R, B]`` int16: the inverse CDF at the bin's
    lower edge ``b / B`` when the whole bin ``[b/B, (b+1)/B)`` maps to it, else ``-(k + 1)`` with
    ``k`` the inverse CDF at the lower edge (the sampler then walks up the CDF from ``k``).
    """
    r = r.to(torch.float64).clamp_min(0).view(-1, 1)
    rmax = float(r.max()) if r.numel() else 0.0
    kmax = int(rmax + 12.0 * math.sqrt(rmax) + 24)
    k = torch.arange(kmax, dtype=torch.float64).view(1, -1)
    logp = k * torch.log(r.clamp_min(1e-300)) - r - torch.lgamma(k + 1)
    pmf = torch.where(r > 0, torch.exp(logp), (k == 0).double())
    cdf = pmf.cumsum(1).clamp_(max=1.0).float()
    cdf[:, -1] = 1.0
    # start[b] = #{k : cdf[k] <= b / B} = #{k : ceil(B cdf[k]) <= b} (B is a power of two: exact)
    edges = torch.ceil(cdf * _GUIDE_BINS).long()
    hist = torch.zeros(len(r), _GUIDE_BINS + 1, dtype=torch.int64).scatter_add_(1, edges, torch.ones_like(edges))
    start = hist.cumsum(1)[:, :_GUIDE_BINS].clamp_(max=kmax - 1)
    upper = (torch.arange(1, _GUIDE_BINS + 1, dtype=torch.float32) / _GUIDE_BINS).expand(len(r), -1)
    exact = cdf.gather(1, start) >= upper
    guide = torch.where(exact, start, -(start + 1)).to(torch.int16)
    return cdf, guide


@lru_cache(maxsize=256)
def _poisson_tables(rates: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_build_tables` for a fixed list of rates, cached (shot and ISO noise reuse one row;
    dark has one row per image range)."""
    return _build_tables(torch.tensor(rates, dtype=torch.float64))


def poisson_from_uniform(u: torch.Tensor, level: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """Exact inverse-CDF Poisson samples for rates that take few distinct values.

    Args:
        u: Uniforms in [0, 1), float32 ``[N, ...]``.
        level: int ``[N, ...]``: which rate each element uses (0..255 for images on the uint8 grid).
        rates: float ``[R, L]`` rate per (row, level); ``R`` is 1 (shared) or ``N`` (per example).

    Returns:
        float32 counts, shape of ``u``. Sampling is exact up to float32's 2**-24 resolution of the
        uniforms and the cumulative probabilities (a total-variation error below 1e-6 per draw).
    """
    n = u.shape[0]
    nl = rates.shape[1]
    rows, inverse = torch.unique(rates.double().cpu(), dim=0, return_inverse=True)
    tables = [_poisson_tables(tuple(row.tolist())) for row in rows]  # cached per rate row
    kmax = max(c.shape[1] for c, _ in tables)
    cdf = torch.ones(len(rows), nl, kmax)
    for i, (c, _) in enumerate(tables):
        cdf[i, :, : c.shape[1]] = c
    cdf = cdf.to(u.device).view(-1)
    guide = torch.stack([g for _, g in tables]).to(u.device).view(-1)
    row = inverse.to(u.device, torch.int32) if len(rows) > 1 and rates.shape[0] == n else None
    lev = level.to(torch.int32)
    if row is not None:
        lev = lev + (row * nl).view(n, *([1] * (u.dim() - 1)))
    idx = (u * _GUIDE_BINS).to(torch.int32).clamp_(max=_GUIDE_BINS - 1).add_(lev * _GUIDE_BINS)
    k = guide.index_select(0, idx.view(-1)).to(torch.int32)
    todo = (k < 0).nonzero().squeeze(1)
    if todo.numel():
        kk = -(k.index_select(0, todo) + 1)
        base = lev.view(-1).index_select(0, todo) * kmax
        uu = u.reshape(-1).index_select(0, todo)
        for _ in range(4):  # walk up the CDF: most ambiguous bins hold one or two CDF jumps
            step = uu >= cdf.index_select(0, base + kk)
            if not bool(step.any()):
                break
            kk += step.to(kk.dtype)
        else:  # the rest (bins in the far tail span many counts): binary search in their own CDF rows
            step = uu >= cdf.index_select(0, base + kk)
            rest = step.nonzero().squeeze(1)
            if rest.numel():
                own = cdf.view(-1, kmax).index_select(0, torch.div(base.index_select(0, rest), kmax, rounding_mode="floor"))
                found = torch.searchsorted(own, uu.index_select(0, rest).unsqueeze(1), right=True).squeeze(1)
                kk.index_copy_(0, rest, found.to(kk.dtype).clamp_(max=kmax - 1))
        k.index_copy_(0, todo, kk)
    return k.view(u.shape).to(torch.float32)


def uint8_levels(x: torch.Tensor) -> torch.Tensor | None:
    """``round(255 x)`` as int32 when ``x`` lies on the 256 uint8 levels (within 1e-4 of a level), else None."""
    v = x * 255.0
    lev = (v + 0.5).to(torch.int32)  # x >= 0: truncation of v + 1/2 rounds
    lo, hi = torch.aminmax(v.sub_(lev))
    if float(lo) < -1e-4 or float(hi) > 1e-4:
        return None
    return lev


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

    def subset(self, sel: torch.Tensor) -> ExampleRNG:
        """The streams of the examples at positions ``sel`` of this batch (same numbers as here)."""
        return ExampleRNG(self.seed, self.index[sel.cpu()], self.name, self.severity, self.device)

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
        """``[N, *shape]`` integers uniform in ``[low, high)`` (int32)."""
        u = self.uniform(stream, shape)
        return (u * (high - low)).to(torch.int32).clamp_(max=high - low - 1).add_(low)

    def poisson_levels(self, stream: str, level: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """Poisson samples whose rate is ``rates[row, level]`` (``row`` 0, or the example when ``rates``
        has one row per example): one batched inverse-CDF lookup, see :func:`poisson_from_uniform`."""
        u = self.uniform(stream, level.shape[1:])
        return poisson_from_uniform(u, level, rates)

    def poisson(self, stream: str, rates: torch.Tensor) -> torch.Tensor:
        """Poisson samples with per-element ``rates`` ``[N, ...]`` (float), one generator per example
        (``torch.poisson``; the general path when the rates do not come from a small table)."""
        out = torch.empty_like(rates)
        g = self._gen
        for i, s in enumerate(example_seeds(self.seed, self.index, self.name, self.severity, stream)):
            g.manual_seed(s)
            out[i] = torch.poisson(rates[i], generator=g)
        return out

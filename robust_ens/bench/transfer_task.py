"""The ``transfer`` task: adversarial sets made once on the surrogates, every target evaluated forward-only.

For every (attack, surrogate, eps) cell, the fixed global batches are attacked once on the
surrogate (the store caches each batch's uint8 set) and every target is evaluated on them. Each
target also gets white-box sanity cells (PGD with ``steps`` and ``2 * steps`` at the largest eps
on the first ``sanity.n`` examples) for the flags. An attack suite (``kind = "attack"``) adds the
success of each attack on each target (:class:`~.evaluate.AttackEpsView`): over the target's
clean-correct examples, or over every example when the protocol says ``success = "all-images"``
(TransferAttack's ASR, ``1 - accuracy``).

A tier with ``filter = "all-targets-correct"`` (or ``robust-ens bench run --filter``) first keeps
only the examples every target classifies correctly (TA-Bench's rule, :func:`apply_filter`); the
kept count and the count it was taken from go into each target's metrics (``filter/kept``,
``filter/of``) and from there into the entries.

:func:`transfer_table` is the same route for models in memory (the quickstart's table).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.attacks import ATTACKS, Attack, create_attack
from robust_ens.bench import aggregate as agg
from robust_ens.bench.advsets import AdvSetStore, enforced_eps
from robust_ens.bench.craft import attack_batch, craft_set
from robust_ens.bench.evaluate import AttackCell, AttackEpsView, RunContext, RunResult, SanityResult, Success
from robust_ens.bench.examples import Examples, attack_cell_id, batch_seed
from robust_ens.bench.flops import ensemble_forward_flops
from robust_ens.bench.targets import Target, module_target
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import accuracy, correct, eval_mode, predict

#: The run folder's record of a filter's kept examples (a pseudo-target: one vector per rule).
FILTER_RECORD = "(filter)"


def transfer_cells(ctx: RunContext) -> list[AttackCell]:
    """The tier's (attack, surrogate, eps) cells, in a fixed order."""
    t = ctx.tier
    return [AttackCell(attack_cell_id(a, s, e), a, s, e)
            for s in t.all_surrogates for a in t.attacks if s in t.surrogates_for(a) for e in t.eps]


def advset(ctx: RunContext, cell: AttackCell, b: int, sl: slice) -> torch.Tensor:
    """The uint8 adversarial batch ``b`` of ``cell`` (from the store, or made now)."""
    atk = ctx.protocol.attacks[cell.attack].build(cell.eps, steps=ctx.tier.steps)
    ex = ctx.ex
    got = attack_batch(ctx.store, atk, ctx.surrogate(cell.surrogate), ex.x_u8[sl], ex.y[sl], ex.indices[sl],
                       batch_seed(ctx.protocol.seed, cell.id, b), ex.fingerprint, device=ctx.device,
                       on_cost=ctx.cost.add_attack)
    if got.hit:
        ctx.cost.advsets_reused += 1
    else:
        ctx.cost.advsets_made += 1
    return got.x_adv


def transfer(ctx: RunContext, t: Target, cell: AttackCell) -> torch.Tensor:
    """Per-example correctness of target ``t`` on the cell's adversarial sets."""
    def compute(b: int, sl: slice) -> torch.Tensor:
        adv = advset(ctx, cell, b, sl)
        t0 = time.perf_counter()
        ok = correct(t.module, adv.to(ctx.device), ctx.ex.y[sl].to(ctx.device), batch_size=ctx.ex.batch_size)
        seconds = time.perf_counter() - t0
        # counted after the forward, on one image, cached per architecture: the result is untouched
        ctx.cost.add_eval(seconds, len(adv) * ensemble_forward_flops(t.module, tuple(adv.shape[1:]), ctx.device))
        return ok
    return ctx.cell(t.name, cell.id, compute)


def sanity(ctx: RunContext, t: Target, eps: float) -> SanityResult | None:
    """White-box sanity measurements on the first ``sanity.n`` examples (see :func:`agg.whitebox_flags`)."""
    s = ctx.tier.sanity
    n = min(s.n, len(ctx.ex.y))
    if n <= 0:
        return None
    x, y = ctx.batch(slice(0, n))
    with torch.no_grad():
        a, b = predict(t.module, x), predict(t.module, x)
    randomized = not torch.allclose(a, b, rtol=0, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    with eval_mode(t.module):
        loss = F.cross_entropy(t.module(xg), y, reduction="sum")
    g = torch.autograd.grad(loss, xg, allow_unused=True)[0]
    g = torch.zeros_like(x) if g is None else g
    accs = []
    for steps in (s.steps, 2 * s.steps):
        cell = f"sanity:pgd{steps}@{eps:.6g}"
        vec = ctx.folder.load(t.name, cell)
        if vec is None or len(vec) != n:
            atk = create_attack("pgd", eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
            res = atk(t.module, x, y, seed=batch_seed(ctx.protocol.seed, cell, 0))
            vec = correct(t.module, res.x_adv, y).cpu()
            ctx.folder.save(t.name, cell, vec, ctx.ex.indices[:n])
        accs.append(float(vec.float().mean()))
    return SanityResult(n=n, eps=eps, steps=s.steps, randomized=randomized,
                        nonfinite_grad=bool((~torch.isfinite(g)).any()),
                        zero_grad_fraction=float((g.flatten(1).abs().amax(1) == 0).float().mean()),
                        whitebox_acc=accs[0], whitebox_acc_2x=accs[1])


def apply_filter(ctx: RunContext, targets: Sequence[Target]) -> tuple[int, int] | None:
    """Keep only the examples every target classifies correctly (the tier's ``filter``); ``(kept, of)``.

    Each target's clean correctness on the tier's examples is a cell of its own (``filter:clean``),
    so a resumed run reads it back; the kept vector is recorded in the run folder, and a folder
    filtered with another panel (other kept examples) is refused. ``ctx.ex`` becomes the kept
    examples (their own fingerprint and batches), so the sets are crafted on them alone.

    Returns:
        ``None`` when the tier has no filter, else the kept count and the count before filtering.

    Raises:
        RobustEnsError: the run folder holds another kept set, or no example is kept.
    """
    rule = ctx.tier.filter
    if rule is None:
        return None
    full = ctx.ex

    def clean_ok(t: Target, b: int, sl: slice) -> torch.Tensor:
        x, y = ctx.batch(sl)
        return correct(t.module, x, y, batch_size=full.batch_size)

    keep = torch.ones(len(full.y), dtype=torch.bool)
    for t in targets:
        keep &= ctx.cell(t.name, "filter:clean", functools.partial(clean_ok, t))
    old = ctx.folder.load(FILTER_RECORD, rule)
    if old is not None and not torch.equal(old, keep):
        raise RobustEnsError(f"{ctx.folder.root} was filtered ({rule}) with other targets: {int(old.sum())} of {len(old)} "
                             f"examples kept there, {int(keep.sum())} now; pick a new --out")
    if not bool(keep.any()):
        raise RobustEnsError(f"filter {rule}: none of the {len(keep)} examples is classified correctly by every target "
                             f"({', '.join(t.name for t in targets)}); nothing is left to attack")
    ctx.folder.save(FILTER_RECORD, rule, keep, full.indices)
    ctx.ex = Examples.of(full.x_u8[keep], full.y[keep], full.indices[keep], full.label, full.num_classes,
                         full.batch_size)
    return int(keep.sum()), len(keep)


def attack_view(targets: Sequence[Target], cells: Sequence[AttackCell], cleans: Mapping[str, torch.Tensor],
                per_target: Mapping[str, Mapping[str, torch.Tensor]], *,
                all_images: bool = False) -> dict[str, dict[str, AttackEpsView]]:
    """Per attack: success rate per target at each eps, with their mean and minimum.

    ``all_images``: the success rate is over every example (``1 - accuracy``, TransferAttack's
    ASR) instead of over the target's clean-correct examples.
    """
    view: dict[str, dict[str, AttackEpsView]] = {}
    for c in cells:
        rates = {t.name: Success.of(torch.ones_like(cleans[t.name]) if all_images else cleans[t.name],
                                    per_target[t.name][c.id]) for t in targets}
        succ = [r.success for r in rates.values()]
        view.setdefault(c.attack, {})[f"{c.eps:.6g}"] = AttackEpsView(c.surrogate, rates, sum(succ) / len(succ),
                                                                        min(succ))
    return view


def run_transfer(ctx: RunContext, targets: list[Target]) -> RunResult:
    """Run the transfer task on resolved targets."""
    kept = apply_filter(ctx, targets)
    cells = transfer_cells(ctx)
    result = ctx.result(cells, enforced_eps={f"{e:.6g}": enforced_eps(e) for e in ctx.tier.eps})
    bar = ctx.bar(len(targets) * (len(cells) + 1))
    cleans: dict[str, torch.Tensor] = {}
    per_target: dict[str, dict[str, torch.Tensor]] = {t.name: {} for t in targets}
    for t in targets:
        cleans[t.name] = ctx.clean(t)
        bar.update(1)
    # cell-major: each adversarial batch is made (or read) once and evaluated on every target
    for cell in cells:
        for t in targets:
            per_target[t.name][cell.id] = transfer(ctx, t, cell)
            bar.update(1)
    bar.close()
    e_max = max(ctx.tier.eps)
    for t in targets:
        row = ctx.target_result(t, cleans[t.name], cells, per_target[t.name])
        worst = {float(k): v.acc for k, v in (row.worst_case or {}).items()}
        row.flags += agg.eps_flags(worst, len(ctx.ex.y))
        san = sanity(ctx, t, e_max)
        if san is not None:
            n = san.n
            w = agg.worst_case([cleans[t.name][:n], *(per_target[t.name][c.id][:n] for c in cells if c.eps == e_max)])
            transfer_worst = float(w.float().mean())
            row.sanity = SanityResult(**{**san.to_dict(), "transfer_worst": transfer_worst})
            row.flags += agg.whitebox_flags(san.to_dict(), transfer_worst)
        if kept is not None:
            row.metrics.update({"filter/kept": float(kept[0]), "filter/of": float(kept[1])})
        if ctx.protocol.success == "all-images":
            row.metrics["success/all_images"] = 1.0
        result.targets[t.name] = row
    if ctx.protocol.kind == "attack":
        result.attack_view = attack_view(targets, cells, cleans, per_target,
                                         all_images=ctx.protocol.success == "all-images")
    return result


# --------------------------------------------------------------------------- models in memory


def _build(name: str | Attack, eps: float, kwargs: Mapping[str, Any]) -> Attack:
    if isinstance(name, Attack):
        return name.replace(eps=eps)
    params = inspect.signature(ATTACKS.get(name)).parameters
    accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in kwargs.items() if accepts_all or k in params}
    return create_attack(name, eps=eps, **kw)


def transfer_table(
    attacks: Sequence[str | Attack],
    surrogate: nn.Module,
    targets: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    *,
    seed: int = 0,
    batch_size: int = 256,
    store: str | Path | None = None,
    progress: bool = False,
    **attack_kwargs: Any,
) -> list[dict[str, Any]]:
    """Robust accuracy of models in memory under transfer attacks: the engine's route for one table.

    Each (attack, eps) set is crafted on ``surrogate`` through the adversarial-set store like a
    protocol cell (fixed batches, :func:`~.examples.batch_seed` from ``seed`` and the cell,
    uint8 within ``floor(255 eps)`` levels) and every target is evaluated on it forward-only.

    Args:
        attacks: Registered names (built with ``eps`` and the ``attack_kwargs`` each accepts)
            or attack objects (copied with each ``eps``).
        surrogate: Model or Ensemble the attacks run on (white-box).
        targets: Name -> model evaluated on the adversarial images (forward only).
        x: Clean images: uint8, or float in [0, 1] (rounded to the 1/255 grid the store holds).
        y: Labels.
        eps: Budgets.
        seed: Attack seed.
        batch_size: Attack batch size.
        store: Adversarial-set store folder (default ``$ROBUST_ENS_CACHE/advsets``).
        progress: Progress bars.
        **attack_kwargs: Hyperparameters passed to every named attack that accepts them.

    Returns:
        One row per (attack, eps): ``attack``, ``eps``, ``surrogate`` (white-box accuracy on the
        stored set), one accuracy per target name, clean accuracies under ``clean/<name>``, and
        ``seconds``.

    Example:
        >>> import tempfile, torch
        >>> from robust_ens import Ensemble, models
        >>> from robust_ens.bench.transfer_task import transfer_table
        >>> sur = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
        >>> tgt = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
        >>> rows = transfer_table(["mifgsm", "cwa"], sur, {"target": tgt}, torch.rand(8, 1, 8, 8),
        ...                       torch.arange(8), eps=[4/255, 8/255], steps=2, store=tempfile.mkdtemp())
        >>> [(r["attack"], round(r["eps"] * 255)) for r in rows]
        [('mifgsm', 4), ('mifgsm', 8), ('cwa', 4), ('cwa', 8)]
    """

    x_u8 = (x if x.dtype == torch.uint8 else x.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8)).cpu()
    y = y.cpu()
    device = x.device
    ex = Examples.of(x_u8, y, torch.arange(len(y)), "tensors", int(y.max()) + 1 if len(y) else 0, batch_size)
    sur = module_target(surrogate, "surrogate")
    box = AdvSetStore(store)  # None: the machine-wide store
    clean = {f"clean/{k}": accuracy(m, x_u8.to(device), y.to(device)) for k, m in targets.items()}
    rows: list[dict[str, Any]] = []
    for a in attacks:
        name = a if isinstance(a, str) else type(a).__name__
        for e in eps:
            atk = _build(a, float(e), attack_kwargs)
            t0 = time.perf_counter()
            crafted = craft_set(box, atk, sur, ex, seed=seed, cell=attack_cell_id(name, "surrogate", float(e)),
                                device=device, progress=progress)
            adv, yd = crafted.x_adv.to(device), y.to(device)
            row: dict[str, Any] = {"attack": name, "eps": float(e), "surrogate": accuracy(surrogate, adv, yd)}
            row.update({k: accuracy(m, adv, yd) for k, m in targets.items()})
            row.update(clean)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    return rows

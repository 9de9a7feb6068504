"""Benchmark protocols: versioned TOML files loaded into typed, validated objects.

A protocol declares everything that moves a number: dataset, split, seed, threat model, surrogates,
attacks with their hyperparameters, metrics and the three tiers (``smoke``: seconds, for
``make test``; ``small``: a 2-core CPU in minutes; ``full``: the papers' scale, for a GPU).
The files live in ``robust_ens/bench/protocols/`` (package data) and are held in one registry,
:data:`SUITES`. Changing anything that moves a number bumps ``version``.

Example:
    >>> from robust_ens.bench import get_suite, list_suites
    >>> "digits-transfer" in list_suites()
    True
    >>> p = get_suite("digits-transfer")
    >>> p.tier("smoke").n > 0
    True
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robust_ens.attacks import ATTACKS, Attack, create_attack, parse_eps
from robust_ens.canonical import sha256_json
from robust_ens.errors import RobustEnsError, UnknownNameError
from robust_ens.overrides import PIXEL_BUDGET, OutOfRange
from robust_ens.registry import Registry

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
TIERS = ("smoke", "demo", "small", "full")
TASKS = ("transfer", "whitebox", "corruptions", "depth")
KINDS = ("defense", "attack")
#: An attack suite's success rate per target: over the target's clean-correct examples (default), or
#: over every example (``1 - accuracy``, TransferAttack's ASR: its clean errors count as successes).
SUCCESS_RULES = ("clean-correct", "all-images")
#: Example filters a tier may apply before any attack: ``all-targets-correct`` keeps the examples
#: every target of the run classifies correctly (TA-Bench's rule).
FILTERS = ("all-targets-correct",)


class ProtocolError(RobustEnsError):
    """A protocol file with an unknown, missing or wrongly typed key (the message names file and key)."""


# --------------------------------------------------------------------------- typed pieces


@dataclass(frozen=True)
class SurrogateSpec:
    """A surrogate (ensemble) the transfer attacks are crafted on.

    Either ``members`` (target specs such as ``zoo:NAME``, resolved like any target) or ``train``
    (a recipe trained once and cached: ``arch``, ``members``, ``seed``, ``train_n``, ``epochs``
    and any other :class:`~robust_ens.train.TrainConfig` field).
    """

    name: str
    members: tuple[str, ...] = ()
    train: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """JSON description."""
        return {"name": self.name, "members": list(self.members), "train": dict(self.train)}


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a protocol: a registered attack, its hyperparameters and an eps-relative step.

    ``alpha`` may be a number or ``"eps/K"`` / ``"eps*K"`` (the step follows eps); ``steps`` of the
    tier, when given, overrides the attack's own.
    """

    name: str
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    alpha: str | float | None = None

    def build(self, eps: float, *, steps: int | None = None) -> Attack:
        """The attack at ``eps`` (an :class:`~robust_ens.attacks.Attack`)."""
        params = dict(self.params)
        if self.alpha is not None:
            params["alpha"] = _relative(self.alpha, eps)
        if steps is not None and "steps" in _accepted(self.attack):
            params["steps"] = steps
        return create_attack(self.attack, eps=eps, **params)


@dataclass(frozen=True)
class Sanity:
    """The sanity checks' budget: white-box PGD on ``n`` examples with ``steps`` and ``2 * steps``."""

    n: int = 0
    steps: int = 10


@dataclass(frozen=True)
class Tier:
    """One size of a protocol.

    Every attack is crafted on every surrogate of ``surrogates``, except the attacks named in
    ``attack_surrogates`` (``[tiers.X.attack_surrogates]``: attack -> its own surrogate list), for
    attacks that need surrogates of another kind (ViT-EnsembleAttack augments ViT blocks).
    ``filter`` (one of :data:`FILTERS`, or ``None``) restricts the examples before any attack.
    """

    name: str
    n: int
    batch_size: int
    eps: tuple[float, ...] = ()
    attacks: tuple[str, ...] = ()
    surrogates: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    steps: int | None = None
    sanity: Sanity = Sanity()
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    attack_surrogates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    filter: str | None = None

    def surrogates_for(self, attack: str) -> tuple[str, ...]:
        """The surrogates ``attack`` is crafted on: its own list in ``attack_surrogates``, else the tier's."""
        return self.attack_surrogates.get(attack, self.surrogates)

    @property
    def all_surrogates(self) -> tuple[str, ...]:
        """Every surrogate some attack of the tier is crafted on, the tier's own first."""
        if not self.attack_surrogates:
            return self.surrogates
        out = [s for s in self.surrogates if any(s in self.surrogates_for(a) for a in self.attacks)]
        for a in self.attacks:
            out += [s for s in self.surrogates_for(a) if s not in out]
        return tuple(out)


@dataclass(frozen=True)
class Protocol:
    """A benchmark protocol (one suite at one version), with its tiers."""

    suite: str
    version: int
    kind: str
    task: str
    description: str
    reference: str
    dataset: str
    split: str
    seed: int
    norm: str
    metrics: tuple[str, ...]
    attacks: dict[str, AttackSpec]
    surrogates: dict[str, SurrogateSpec]
    tiers: dict[str, Tier]
    source: str = ""
    success: str = "clean-correct"

    def tier(self, name: str) -> Tier:
        """The named tier, or an error listing the tiers this suite has."""
        if name not in self.tiers:
            raise UnknownNameError(
                f"suite {self.suite!r} has no tier {name!r}; its tiers: {', '.join(self.tiers)}"
            )
        return self.tiers[name]

    def with_filter(self, tier: str, rule: str | None) -> Protocol:
        """This protocol with ``tier``'s example filter set to ``rule`` (``None``: no filter).

        Raises:
            ProtocolError: ``rule`` is not one of :data:`FILTERS`.
        """
        if rule is not None and rule not in FILTERS:
            raise ProtocolError(f"filter must be one of {', '.join(FILTERS)}, got {rule!r}")
        return replace(self, tiers={**self.tiers, tier: replace(self.tier(tier), filter=rule)})

    def digest(self, tier: str) -> str:
        """sha256 of what defines ``tier``'s numbers; run folders record it and refuse another.

        It covers the version, the data, the tier, the surrogates and every attack as built at each
        eps (its canonical config with every default, and its ``code_version``). The success rule and a
        tier's filter enter only when set, so the digests of protocols without them never moved.
        """
        t = self.tier(tier)
        return sha256_json({
            "suite": self.suite, "version": self.version, "task": self.task, "dataset": self.dataset,
            "split": self.split, "seed": self.seed, "norm": self.norm,
            # each attack as it is built at each eps, with its code version: a changed default or a
            # changed implementation changes the digest, so a run folder never mixes the two
            "attacks": {a: {"spec": vars(self.attacks[a]), "built": [
                {**(atk := self.attacks[a].build(e, steps=t.steps)).config(), "code_version": type(atk).code_version}
                for e in t.eps]} for a in t.attacks},
            "surrogates": {s: self.surrogates[s].config() for s in t.all_surrogates},
            **({"success": self.success} if self.success != "clean-correct" else {}),
            # attack_surrogates only when given, so a tier without it keeps the digest it always had
            "tier": {**{k: v for k, v in vars(t).items() if k not in ("sanity", "attack_surrogates", "filter")},
                     **({"filter": t.filter} if t.filter is not None else {}),
                     "sanity": vars(t.sanity),
                     **({"attack_surrogates": {a: list(v) for a, v in sorted(t.attack_surrogates.items())}}
                        if t.attack_surrogates else {})},
        })


# --------------------------------------------------------------------------- parsing


def _relative(value: str | float, eps: float) -> float:
    if isinstance(value, int | float):
        return float(value)
    text = value.replace(" ", "")
    for op in ("/", "*"):
        if text.startswith("eps" + op):
            k = float(text[4:])
            return eps / k if op == "/" else eps * k
    raise RobustEnsError(f"alpha must be a number, 'eps/K' or 'eps*K', got {value!r}")


@functools.cache  # build() asks for every batch of every cell
def _accepted(attack: str) -> frozenset[str]:
    """The keyword arguments ``attack`` takes; a factory's ``**kw`` counts as what its attack's ``config()`` names.

    A factory such as ``mdi2fgsm(**kw)`` hides its attack's parameters from its signature; reading
    only the signature once let such an attack keep its own step count where a tier set another.
    """
    import inspect

    params = inspect.signature(ATTACKS.get(attack)).parameters
    named = {k for k, v in params.items() if v.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        named |= set(create_attack(attack, eps=8 / 255).config())
    return frozenset(named)


class _Reader:
    """Reads one table of a TOML file, naming the file and key in every error."""

    def __init__(self, table: dict[str, Any], where: str, source: str) -> None:
        self.table, self.where, self.source = table, where, source
        self.used: set[str] = set()

    def _err(self, key: str, what: str) -> ProtocolError:
        return ProtocolError(f"{self.source}: {self.where}{key}: {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, item: type | None = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self._err(key, "missing (required)")
            return default
        v = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
        if ok and item is not None:
            ok = all(isinstance(e, item) and not (isinstance(e, bool) and item is not bool) for e in v)
        if not ok:
            want = " or ".join(k.__name__ for k in kinds) + (f" of {item.__name__}" if item else "")
            raise self._err(key, f"must be {want}, got {v!r}")
        return v

    def sub(self, key: str) -> _Reader:
        t = self.get(key, dict, {})
        return _Reader(t, f"{self.where}{key}.", self.source)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self._err(unknown[0], f"unknown key (known here: {', '.join(sorted(self.used))})")


def _eps_list(r: _Reader, key: str) -> tuple[float, ...]:
    raw = r.get(key, list, [])
    out = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise r._err(key, f"must be a list of numbers or fractions like '8/255', got {v!r}")
        e = parse_eps(v)
        try:  # the one range check of pixel budgets (robust_ens.overrides): (0, 1] on images in [0, 1]
            PIXEL_BUDGET.check(e, key)
        except OutOfRange as err:
            raise r._err(key, f"holds {v!r}: {err.range.describe()}") from None
        out.append(e)
    return tuple(out)


def _read_tier(t: _Reader, name: str) -> Tier:
    """A tier's table as a :class:`Tier` (types checked; references are checked by the caller)."""
    sn = t.sub("sanity")
    sanity = Sanity(n=sn.get("n", int, 0), steps=sn.get("steps", int, 10))
    sn.finish()
    asub = t.sub("attack_surrogates")
    per_attack = {a: tuple(asub.get(a, list, item=str)) for a in asub.table}
    asub.finish()
    tier = Tier(
        name=name, n=t.get("n", int), batch_size=t.get("batch_size", int, 100), eps=_eps_list(t, "eps"),
        attacks=tuple(t.get("attacks", list, [], item=str)),
        surrogates=tuple(t.get("surrogates", list, [], item=str)),
        targets=tuple(t.get("targets", list, [], item=str)), steps=t.get("steps", int, None), sanity=sanity,
        corruptions=tuple(t.get("corruptions", list, [], item=str)),
        severities=tuple(t.get("severities", list, [], item=int)),
        options=dict(t.get("options", dict, {})), attack_surrogates=per_attack,
        filter=t.get("filter", str, None),
    )
    t.finish()
    return tier


def parse_protocol(doc: dict[str, Any], source: str) -> Protocol:
    """Validate a parsed TOML document and build the :class:`Protocol`.

    Raises:
        ProtocolError: naming ``source`` and the key for an unknown, missing or wrongly typed key.
    """
    r = _Reader(doc, "", source)
    suite = r.get("suite", str)
    version = r.get("version", int)
    kind = r.get("kind", str)
    if kind not in KINDS:
        raise r._err("kind", f"must be one of {KINDS}, got {kind!r}")
    task = r.get("task", str)
    if task not in TASKS:
        raise r._err("task", f"must be one of {TASKS}, got {task!r}")
    attacks: dict[str, AttackSpec] = {}
    at = r.sub("attacks")
    for name in at.table:
        a = at.sub(name)
        spec = AttackSpec(name=name, attack=a.get("attack", str), params=dict(a.get("params", dict, {})),
                          alpha=a.get("alpha", (str, int, float), None))
        a.finish()
        if spec.attack not in ATTACKS:
            raise a._err("attack", f"unknown attack {spec.attack!r}; known: {', '.join(ATTACKS.list())}")
        try:
            spec.build(0.01)
        except RobustEnsError as err:
            raise ProtocolError(f"{source}: attacks.{name}: {err}") from None
        attacks[name] = spec
    at.finish()
    surrogates: dict[str, SurrogateSpec] = {}
    st = r.sub("surrogates")
    for name in st.table:
        s = st.sub(name)
        spec_s = SurrogateSpec(name=name, members=tuple(s.get("members", list, [], item=str)),
                               train=dict(s.get("train", dict, {})))
        s.finish()
        if bool(spec_s.members) == bool(spec_s.train):
            raise s._err("", "give exactly one of 'members' (target specs) or 'train' (a recipe)")
        surrogates[name] = spec_s
    st.finish()
    tiers: dict[str, Tier] = {}
    tt = r.sub("tiers")
    for name in tt.table:
        if name not in TIERS:
            raise tt._err(name, f"unknown tier; tiers are {', '.join(TIERS)}")
        tier = _read_tier(tt.sub(name), name)
        per_attack = tier.attack_surrogates
        if tier.filter is not None and tier.filter not in FILTERS:
            raise tt._err(f"{name}.filter", f"must be one of {', '.join(FILTERS)}, got {tier.filter!r}")
        if tier.n < 1 or tier.batch_size < 1:
            raise tt._err(name, "n and batch_size must be positive")
        for a_name in tier.attacks:
            if a_name not in attacks:
                raise tt._err(f"{name}.attacks", f"names {a_name!r}, which [attacks] does not define")
        for s_ in tier.surrogates:
            if s_ not in surrogates:
                raise tt._err(f"{name}.surrogates", f"names {s_!r}, which [surrogates] does not define")
        for a_name, listed in per_attack.items():
            where = f"{name}.attack_surrogates.{a_name}"
            if a_name not in tier.attacks:
                raise tt._err(where, f"{a_name!r} is not one of this tier's attacks ({', '.join(tier.attacks)})")
            if not listed:
                raise tt._err(where, "give at least one surrogate")
            for s_ in listed:
                if s_ not in surrogates:
                    raise tt._err(where, f"names {s_!r}, which [surrogates] does not define")
        if kind == "attack":  # an attack entry's success rate per target is over one surrogate
            for a_name in tier.attacks:
                if len(tier.surrogates_for(a_name)) != 1:
                    raise tt._err(f"{name}.surrogates", f"an attack suite crafts each attack on exactly one surrogate; "
                                  f"{a_name!r} has {len(tier.surrogates_for(a_name))} (use attack_surrogates)")
        if task == "transfer" and not (tier.eps and tier.attacks and tier.surrogates):
            raise tt._err(name, "a transfer tier needs eps, attacks and surrogates")
        tiers[name] = tier
    tt.finish()
    if not tiers:
        raise r._err("tiers", "a protocol needs at least one tier")
    success = r.get("success", str, "clean-correct")
    if success not in SUCCESS_RULES:
        raise r._err("success", f"must be one of {', '.join(SUCCESS_RULES)}, got {success!r}")
    proto = Protocol(
        suite=suite, version=version, kind=kind, task=task, description=r.get("description", str, ""),
        reference=r.get("reference", str, ""), dataset=r.get("dataset", str), split=r.get("split", str, "test"),
        seed=r.get("seed", int, 0), norm=r.get("norm", str, "Linf"),
        metrics=tuple(r.get("metrics", list, [], item=str)), attacks=attacks, surrogates=surrogates,
        tiers=tiers, source=source, success=success,
    )
    r.finish()
    return proto


def load_protocol(path: str | Path) -> Protocol:
    """Load and validate a protocol TOML file.

    Raises:
        ProtocolError: for unreadable or invalid TOML and for any bad key (file and key named).
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ProtocolError(f"cannot read protocol file {p}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ProtocolError(f"{p}: not valid TOML: {err}") from None
    return parse_protocol(doc, str(p))


# --------------------------------------------------------------------------- the registry

SUITES: Registry[Path] = Registry("suite")
for _f in sorted(PROTOCOL_DIR.glob("*.toml")):
    SUITES.add(_f.stem, _f)


def list_suites(pattern: str = "*") -> list[str]:
    """Names of the registered suites (fnmatch ``pattern``)."""
    return SUITES.list(pattern)


def get_suite(name: str) -> Protocol:
    """The protocol of a registered suite, or of a TOML file path given instead of a name."""
    if name.endswith(".toml") and Path(name).is_file():
        return load_protocol(name)
    path = SUITES.get(name)
    proto = load_protocol(path)
    if proto.suite != name:
        raise ProtocolError(f"{path}: suite: says {proto.suite!r} but the file is named {name!r}")
    return proto

"""The benchmark engine: protocols -> targets -> adversarial-set store -> evaluate -> entries.

See ``../shared/DESIGN.md``, "Benchmark engine". Commands and pytest suites only call this.
"""

from robust_ens.bench.protocol import (
    SUITES,
    AttackSpec,
    Protocol,
    ProtocolError,
    SurrogateSpec,
    Tier,
    get_suite,
    list_suites,
    load_protocol,
)

__all__ = [
    "SUITES",
    "AttackSpec",
    "Protocol",
    "ProtocolError",
    "SurrogateSpec",
    "Tier",
    "get_suite",
    "list_suites",
    "load_protocol",
]

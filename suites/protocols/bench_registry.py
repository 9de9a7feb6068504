"""Every registered suite has its pytest module here (timm's habit: the registry is the test list)."""

from __future__ import annotations

from pathlib import Path

from robust_ens.bench import list_suites


def test_every_registered_suite_has_a_protocol_module() -> None:
    here = Path(__file__).parent
    missing = [s for s in list_suites() if not (here / f"bench_{s.replace('-', '_')}.py").is_file()]
    assert not missing, f"add suites/protocols/bench_<suite>.py for: {', '.join(missing)}"

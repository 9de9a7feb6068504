"""glibc allocator settings applied by ``import robust_ens`` (robust_ens.allocator): on, off, and the user's own choice."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings exist only for glibc")

# Input gradients of a ResNet-20 (what an attack step does): with glibc's defaults freed activations go
# back to the kernel and page-fault again on their next use; with the settings applied they are reused.
PROBE = """
import resource, torch
import robust_ens
from robust_ens import models
from robust_ens.allocator import keep_freed_memory
torch.set_num_threads(1)
torch.manual_seed(0)
m = models.create("resnet20", num_classes=10).eval()
x = torch.rand(64, 3, 32, 32)

def step():
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(m(xg).logsumexp(1).sum(), xg)

for _ in range(3):  # the heap grows to its working size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ROBUST_ENS_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


def test_import_keeps_freed_tensor_memory_and_the_switch_turns_it_off() -> None:
    applied, faults_on = _probe()
    assert applied == "True"
    off, faults_off = _probe(ROBUST_ENS_MALLOC="0")
    assert off == "False"
    assert faults_on * 2 < faults_off, (faults_on, faults_off)  # seen here: 1,500-4,100 against 32,000-65,500


def test_the_users_own_glibc_settings_stand() -> None:
    applied, _ = _probe(MALLOC_TRIM_THRESHOLD_="0")
    assert applied == "False"

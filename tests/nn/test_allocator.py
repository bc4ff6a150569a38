"""The allocator policy set when nn is imported: freed array memory serves the next arrays (no new page faults)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")

# Steps shaped like a training step's arrays: twenty live arrays of 0.5-12 MB, each with a temporary, all freed.
PATTERN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "nn":
        import nn
        print(nn.allocator.KEEPING_FREED_MEMORY)
    else:
        print(None)
    def step():
        kept = []
        for mb in (0.5, 1, 2, 4, 8, 3, 6, 1.5, 12, 0.75) * 2:
            a = np.empty(int(mb * (1 << 20)) // 4, dtype=np.float32)
            a.fill(1.0)
            kept.append(a)
            t = a * 2
            del t
        del kept
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")


def faults_per_step(mode: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    return out[0], float(out[1])


def test_after_import_nn_the_memory_a_step_frees_serves_the_next_step():
    _, plain = faults_per_step("plain")
    keeping, with_nn = faults_per_step("nn")
    assert plain > 2000          # glibc's defaults: much of each step's memory comes fresh from the kernel
    assert keeping == "True"
    assert with_nn < 0.05 * plain


def test_the_users_own_glibc_settings_are_left_alone():
    keeping, _ = faults_per_step("nn", MALLOC_TRIM_THRESHOLD_="131072")
    assert keeping == "False"

"""k15rl.malloc: glibc returns freed large blocks to the OS once the thresholds are set."""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import torch
from k15rl.malloc import return_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "set":
    assert return_freed_memory()
base = rss_mb()
for _ in range(3):  # 8 MiB blocks made and freed while others stay: glibc raises its threshold
    keep = [torch.ones(2**21) for _ in range(50)]  # 400 MiB in 8 MiB tensors
    del keep[::2]
    del keep
print(round(rss_mb() - base))
"""


def _retained(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_go_back_to_the_os():
    """Without the setting glibc keeps freed 8 MiB tensors on its heap (after the first
    one freed, its mmap threshold is above their size); with it, they are returned."""
    assert _retained("set") < 50
    assert _retained("default") > 150


def test_a_users_malloc_setting_stands(monkeypatch):
    from k15rl.malloc import return_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_freed_memory() is False


TRIM_SCRIPT = r"""
import torch
from k15rl.malloc import release_free_memory, return_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

return_freed_memory()
base = rss_mb()
keep = [torch.ones(2**18) for _ in range(400)]  # 400 MiB in 1 MiB tensors: below the mmap threshold
del keep[::2]  # 200 MiB of free chunks between live ones: the heap's top cannot be trimmed
before = rss_mb() - base
released = release_free_memory()
print(round(before), round(rss_mb() - base), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_chunks_between_live_ones_go_back_to_the_os():
    """Freed 1 MiB tensors between live ones stay resident (about 400 MiB for 200 live)
    until release_free_memory, which gives their pages back (about 200 MiB left)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True, env=env, check=True)
    before, after, released = out.stdout.split()
    assert int(before) > 350 and released == "True", out.stdout
    assert int(after) < 250, out.stdout


def test_no_trim_under_another_allocator(monkeypatch):
    from k15rl.malloc import release_free_memory

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert release_free_memory() is False

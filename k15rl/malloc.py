"""Freed memory goes back to the operating system (glibc on Linux).

glibc's malloc serves a large block from mmap only above a threshold that it raises each
time such a block is freed (up to 32 MiB on 64-bit). After the first iterations the
tensors of a few MiB a training step makes and frees (activations, logits, KV caches,
state-dict copies) come from the heap, whose free space glibc keeps, so a process's
resident memory climbs iteration by iteration past what it ever uses at once. Fixing the
mmap threshold (mallopt M_MMAP_THRESHOLD, which also turns the adjustment off) returns
such blocks when they are freed (tests/test_malloc.py). The trim threshold stays high:
with it at a few MiB glibc gives the heap's top back after each large free and faults it
in again on the next step, which made an update up to twice as slow. The two values were
chosen by measurement (benchmarks/allocator.py, docs/sharded_training.md). No library exposes
mallopt; ctypes on the C library is the way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

MMAP_THRESHOLD_BYTES = 4 << 20  # blocks of 4 MiB and more: mmap, returned on free
TRIM_THRESHOLD_BYTES = 128 << 20  # free heap top kept up to 128 MiB (glibc default: 128 KiB)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


@functools.cache
def _libc_function(name: str):
    """The C library's function `name`, or None (not glibc: macOS, musl). Looked up once:
    find_library runs ldconfig, too slow for every rollout and update."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (MMAP_/TRIM_THRESHOLD_BYTES) for this process;
    True if set. Not glibc, or the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (their
    choice stands): nothing changes."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def release_free_memory() -> bool:
    """Give the heap's free pages back to the operating system (glibc's malloc_trim);
    True if any went back.

    The thresholds above return large blocks; the smaller tensors of a phase (a prefill's
    per-layer KV, activations, optimizer moments of small weights) come from the heap, and
    when a phase ends they leave free chunks between live ones. glibc trims only the heap's
    top, so those pages stay resident and the next phase's allocations, which rarely fit the
    same holes, add to them: a run's resident memory grows phase after phase. Called at the
    end of a rollout and of an update. Not glibc, or another allocator preloaded (jemalloc,
    tcmalloc: malloc_trim would not be theirs): nothing happens."""
    if "LD_PRELOAD" in os.environ:
        return False
    trim = _libc_function("malloc_trim")
    return trim is not None and bool(trim(0))

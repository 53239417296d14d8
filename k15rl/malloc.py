"""Freed memory goes back to the operating system (glibc on Linux).

glibc's malloc serves a large block from mmap only above a threshold that it raises each
time such a block is freed (up to 32 MiB on 64-bit). After the first iterations the
tensors of a few MiB a training step makes and frees (activations, logits, KV caches,
state-dict copies) come from the heap, whose free space glibc keeps, so a process's
resident memory climbs iteration by iteration past what it ever uses at once. Fixing the
thresholds (mallopt M_MMAP_THRESHOLD, which also turns the adjustment off, and
M_TRIM_THRESHOLD) returns such blocks when they are freed (tests/test_malloc.py; the
effect on SmolLM2's peak memory: docs/hf_models.md). No library exposes mallopt; ctypes
on the C library is the way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

THRESHOLD_BYTES = 1 << 20  # blocks of 1 MiB and more: mmap, returned on free
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def return_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to THRESHOLD_BYTES for this process; True if
    set. Not glibc, or the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (their
    choice stands): nothing changes."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES))

"""Process settings the entry points apply once: glibc keeps training's large per-step buffers on its heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_large_buffers_on_heap(mmap_threshold_mb: int = 64) -> bool:
    """Fixes glibc's mmap and trim thresholds so per-step buffers of a few MB are reused, not mapped afresh.

    glibc maps every allocation above a threshold that starts at 128 KiB and only rises after a larger
    block is freed, so whether DADRL's `(clients, parameters)` buffers (a few MB each step) are
    page-faulted in anew each step depended on what the process had allocated before (10-20% of a
    server step; BENCHMARKS.md, clients). Returns whether the thresholds were set: not on other C
    libraries, and not when the user set glibc's own variables.
    """
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    for megabytes in (mmap_threshold_mb, 32):  # older glibc caps the threshold at 32 MiB
        threshold = megabytes << 20
        if mallopt(M_MMAP_THRESHOLD, threshold):
            return bool(mallopt(M_TRIM_THRESHOLD, 2 * threshold))
    return False

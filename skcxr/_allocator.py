"""glibc's allocator in worker processes that turned its adaptive mmap threshold off.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that freed memory
goes back to the OS). Setting that variable also switches off glibc's *dynamic* mmap
threshold, which would otherwise rise to the size of the blocks a process keeps freeing.
It then stays at 128 KiB, so every tensor above that size is a fresh ``mmap`` whose pages
fault in on first touch and are unmapped again on ``free``: a fit in such a worker ran
1.5-1.7x slower than the same fit on the same single thread in a plain process (measured in
``benchmarks/bench_parallel.py``'s setting, see ``docs/scaling.md``).

When a process starts with an explicit trim threshold and no explicit mmap threshold, importing
skcxr raises the mmap threshold to glibc's own upper bound for the dynamic one (32 MiB on
64-bit), which is where the dynamic threshold would have gone by itself; the trim threshold
the user (or Dask) chose is kept, so the heap's free top still goes back to the OS.
Anything the user sets explicitly (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``) wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc


def adaptive_mmap_threshold_lost() -> bool:
    """True when glibc's dynamic mmap threshold was switched off by the environment alone."""
    env = os.environ
    return (sys.platform.startswith("linux") and "MALLOC_TRIM_THRESHOLD_" in env
            and "MALLOC_MMAP_THRESHOLD_" not in env and "GLIBC_TUNABLES" not in env)


def restore_large_heap_blocks() -> bool:
    """Serve blocks up to 32 MiB from the heap again (see the module docstring).

    Returns whether the setting was changed.
    """
    if not adaptive_mmap_threshold_lost():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False

"""glibc's allocator: large tensors served from the heap while skcxr computes, and in
worker processes that turned its adaptive mmap threshold off.

**While a fit or a batch run computes** (:func:`heap_for_tensors`). glibc serves every
block above its mmap threshold (at most 32 MiB on 64-bit, however it is set) with a fresh
``mmap``, and gives the heap's free top back to the OS above its trim threshold. A training
step of lite0 at 224 px frees and allocates activations of 30-150 MB: each was a new
mapping whose pages fault in again on first touch (1.9 million minor faults in an
all-layers fit of 128 images, 2 epochs), and page faults are slow in a virtual machine.
Inside the context, glibc takes every block from the heap (``M_MMAP_MAX=0``) and keeps
what is freed (``M_TRIM_THRESHOLD`` at its maximum), so a step reuses the pages of the
step before, as torch's CUDA caching allocator does on a GPU; on leaving, glibc's bounds
come back and ``malloc_trim`` returns the free memory to the OS, where the process's
resident memory grew by more than glibc's trim threshold while the context was open (a fit,
a large batch run); a small batch run keeps its few pages for the next one (a trim after every
``predict_proba`` of one image made the next one fault 3,300-3,800 pages in again; now about
200; a call of 8 images grows the resident memory by ~120 MB and is still trimmed). Measured
on the
development machine (one process, glibc's settings switched back and forth between fits,
three fits each): lite0 trained whole from pixels 21.4 -> 27.6 img/s, with 60 thousand
page faults instead of 1.9 million; c=16 from the cached prefix 1.1x (360 thousand faults
-> 16 thousand); peak RSS the same. Settings a user made (``MALLOC_MMAP_MAX_``,
``MALLOC_MMAP_THRESHOLD_``, malloc ``GLIBC_TUNABLES``) are left alone.

**Worker processes.**

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

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
DEFAULT_MMAP_MAX = 65536  # glibc's DEFAULT_MMAP_MAX
KEEP_ALL = 2**31 - 1  # the largest trim threshold: mallopt takes an int

_lock = threading.Lock()
_depth = 0  # contexts open in this process (threads share the allocator)
_resident_at_entry = 0  # the process's resident bytes when the first context opened


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
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


@functools.cache
def _glibc():
    """glibc's malloc functions, or None (not Linux, or a libc without mallopt: musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (AttributeError: not glibc)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _user_chose_large_blocks() -> bool:
    env = os.environ
    return ("MALLOC_MMAP_MAX_" in env or "MALLOC_MMAP_THRESHOLD_" in env
            or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""))


def _trim_threshold_after() -> int:
    """The trim threshold outside the context: the user's (Dask's nanny sets one), else
    where glibc's dynamic one goes once a block of the maximal mmap threshold was freed."""
    try:
        return min(int(os.environ["MALLOC_TRIM_THRESHOLD_"]), KEEP_ALL)
    except (KeyError, ValueError):
        return 2 * MMAP_THRESHOLD


def _restore_bounds(libc) -> int:
    """glibc's bounds outside ``heap_for_tensors``; returns the trim threshold set."""
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    threshold = _trim_threshold_after()
    libc.mallopt(M_TRIM_THRESHOLD, threshold)
    return threshold


@contextlib.contextmanager
def heap_for_tensors():
    """Serve every block from glibc's heap and keep freed memory while the body runs, then
    restore glibc's bounds and, where the body's resident memory grew by more than the trim
    threshold, return free memory to the OS (see the module docstring).
    Nests, and is shared by threads: the settings change when the first enters and come
    back when the last leaves. A no-op without glibc or where the user set these."""
    global _depth, _resident_at_entry
    libc = _glibc()
    if libc is None or _user_chose_large_blocks():
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _resident_at_entry = resident_bytes()
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                threshold = _restore_bounds(libc)
                # glibc's own rule for its heap's top, on what the contexts made resident
                if resident_bytes() - _resident_at_entry > threshold:
                    libc.malloc_trim(0)


def _after_fork_in_child() -> None:
    """A child forked while another thread computed inside ``heap_for_tensors`` has no such
    context open (that thread stayed in the parent): glibc's bounds come back, the count and
    its lock start afresh."""
    global _depth, _lock
    _lock = threading.Lock()
    if _depth:
        _depth = 0
        libc = _glibc()
        if libc is not None:
            _restore_bounds(libc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

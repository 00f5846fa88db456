"""Shared by the benchmark scripts: run one side of a comparison in its own process."""

from __future__ import annotations

import multiprocessing as mp
import resource


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_process(target, *args):
    """Call ``target(*args, queue)`` in a fresh (spawned) process and return what it puts.

    Each side gets its own process so that its peak RSS is its own and no state (caches,
    thread pools, compiled kernels) leaks from one side into the other.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result

"""Shared by the benchmark scripts: the data (the examples' helpers), and one side of a
comparison run in its own process."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
# DATA: the shared data folder beside the repository (the --data default);
# kermany(data, split, n): paths and targets of kermany224/<split>, a stratified subset of n.
# The spawned process of run_in_process imports the benchmark script, hence this module and
# _common, before it runs its target: nothing here may import torch, numpy or pandas at the
# top. A spawned process that had imported torch (or pandas) at that point ran OpenVINO at a
# third of its speed (bench_features, 1,024 images: 94-130 vs 256-311 img/s; importing them
# inside the target is fine; the cause is not known).
from _common import DATA, kermany  # noqa: E402, F401


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
    while True:  # a side that dies (crash, out of memory) must not hang the benchmark
        try:
            result = queue.get(timeout=1)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{target.__name__} died with exit code "
                                   f"{proc.exitcode} before reporting a result") from None
    proc.join()
    return result

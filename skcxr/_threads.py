"""How many cores a call may use, and waiting that does not take cores from others.

skcxr sizes its torch and OpenVINO threads to the cores it has been *given*, never to the
machine. What it has been given is torch's intra-op thread count in the calling process
(:func:`thread_budget`), which already follows every way scikit-learn users limit native
threads:

* ``threadpoolctl.threadpool_limits(n)`` (torch's OpenMP runtime is one of the pools it
  controls), or ``torch.set_num_threads(n)``;
* ``OMP_NUM_THREADS``, which joblib's loky workers receive (``cores // n_jobs``, or
  ``joblib.parallel_config(inner_max_num_threads=...)``) and Dask's nanny sets to 1 in
  its workers.

OpenVINO does not read any of these, so skcxr passes the budget to it explicitly
(``INFERENCE_NUM_THREADS``; see :mod:`skcxr._openvino`).

Waiting threads: OpenMP threads spin on their core between parallel regions by default
(libgomp: up to ~0.3 s), taking it from any other process that could run there. Importing
skcxr before torch sets ``OMP_WAIT_POLICY=PASSIVE`` for torch's OpenMP runtime (read once, when
torch loads it) unless the user has set a policy, and restores the environment right after,
so child processes and other libraries see the user's environment unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys


def passive_wait_on_import() -> None:
    """Import torch with OpenMP's passive wait policy unless the user chose one.

    A no-op when torch is already imported (its OpenMP runtime has read its settings).
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch  # noqa: F401  (loads libgomp, which reads the policy now)
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a cgroup/SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_budget() -> int:
    """The threads one skcxr call may use: torch's intra-op thread count in the calling
    thread, at most the cores this process may run on (see the module docstring for what
    sets it)."""
    import torch

    return max(1, min(torch.get_num_threads(), available_cores()))


def _openmp():
    """threadpoolctl's handle on the OpenMP runtimes loaded (found once per process)."""
    from ._state import MACHINE

    def find():
        import torch  # noqa: F401  (its OpenMP runtime must be loaded to be found)
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController().select(user_api="openmp")

    return MACHINE.get_or_make("openmp", find)


@contextlib.contextmanager
def caller_threads(n: int):
    """Run the torch work of *the calling thread* on at most ``n`` OpenMP threads inside.

    OpenMP's thread count is a per-thread setting, so this changes nothing in other threads
    and nothing process-wide: concurrent callers (threads of a web service, say) cannot
    leave each other's count changed, and threads started meanwhile get the process's
    count. (``torch.set_num_threads`` would also change the count that every *new* thread
    starts with, which concurrent callers could leave lowered for the rest of the process.)
    """
    with _openmp().limit(limits=n):
        yield

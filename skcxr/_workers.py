"""Worker processes of a parallel grid: what a fresh one pays to start, and saying so.

``GridSearchCV(n_jobs=2)`` runs its fits in joblib's loky worker processes. A fresh worker
imports torch, scikit-learn, timm and skcxr (3.5 s of CPU on the project's 2-core machine)
and loads the backbone before its first fit; the sequential grid paid those once, in the
user's process, before it started. The workers stay (loky reuses them for the next
``Parallel`` call, 300 s idle at most), and with them everything skcxr keeps per process
(loaded backbones, OpenVINO compiled models, cached prefixes: :mod:`skcxr._state`), so a
second grid in the same session pays nothing again. Measured (``bench_parallel.py``, 2
cores, 2026-12-07): a 5.1 s grid took 1.70x as long with fresh loky workers and 0.82x with
warm ones.

So on a machine where that start-up is larger than what the workers can win, the first
parallel grid is slower than the sequential one, and nothing in the user's code says why.
:func:`fit_started` / :func:`fit_finished` bracket every skcxr ``fit``; in a fresh loky
worker whose start-up took longer than its first fit, they give one
:class:`ParallelStartupWarning` per parent process (a marker file, so that of ``n_jobs``
workers only the first says it) with the measured seconds. joblib does not carry warnings
back from its workers: the message reaches the worker's stderr, which loky workers share with
the user's process (a terminal or a log; under Jupyter, the server's console). The warning
filters of the user's process do reach the workers (scikit-learn sends them along), so
``warnings.simplefilter("ignore", skcxr.ParallelStartupWarning)`` silences it.

Dask workers are not watched: their start-up happens when the cluster starts, not inside
the grid (``LocalCluster(preload=["skcxr"])`` or ``dask worker --preload skcxr`` imports
skcxr as each worker starts).
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
import threading
import time
import warnings

from ._threads import available_cores, thread_budget

__all__ = ["ParallelStartupWarning"]


class ParallelStartupWarning(UserWarning):
    """A parallel grid's fresh worker processes spent longer starting than fitting.

    Given once per parent process, from the first fresh joblib (loky) worker whose start-up
    (imports, backbone) took longer than its first fit, on a machine where each worker has
    fewer cores than the machine: the grid likely ran slower than with ``n_jobs=1``. The
    workers stay warm, so a second grid in the same session pays no start-up again.
    """


_lock = threading.Lock()
_first: dict = {}  # the first fit in this process: {"cpu": s, "start": t} until it ends
_done = False  # the first fit of this process has been judged


def in_loky_worker() -> bool:
    """Whether this process is one of joblib's loky workers (``n_jobs`` > 1)."""
    executor = sys.modules.get("joblib.externals.loky.process_executor")
    return bool(executor is not None and getattr(executor, "_CURRENT_DEPTH", 0) > 0)


def fit_started() -> None:
    """Called as a ``fit`` opens: remembers the first one of a loky worker process (its CPU
    seconds so far are the process's start-up: imports, unpickling the task)."""
    global _done
    if _done:
        return
    with _lock:
        if _done or _first:
            return
        if not in_loky_worker():
            _done = True
            return
        _first.update(cpu=time.process_time(), start=time.perf_counter())


def fit_finished() -> None:
    """Called as a ``fit`` succeeds: judges the worker's first fit (once per process)."""
    global _done
    if _done:
        return
    with _lock:
        if _done or not _first:
            return
        _done = True
        fit_s = time.perf_counter() - _first["start"]
        startup_s = _first["cpu"]
    cores, threads = available_cores(), thread_budget()
    message = startup_message(startup_s, fit_s, cores, threads)
    if message is not None and _claim_parent():
        warnings.warn(message, ParallelStartupWarning, stacklevel=3)


def startup_message(startup_s: float, fit_s: float, cores: int, threads: int) -> str | None:
    """The warning for a fresh worker that spent ``startup_s`` CPU seconds starting and
    ``fit_s`` seconds on its first fit, with ``threads`` of the machine's ``cores``; None
    when the start-up is not the larger cost or the worker has the whole machine."""
    if startup_s <= fit_s or threads >= cores:
        return None
    workers = max(2, cores // threads)
    return (
        f"This joblib worker process spent {startup_s:.1f} s starting (importing torch, "
        f"scikit-learn and skcxr, reading its task) before its first skcxr fit, which took "
        f"{fit_s:.1f} s, and it has {threads} of this machine's {cores} cores (about "
        f"{workers} workers share them). Every fresh worker pays this start-up once, while a "
        f"sequential run (n_jobs=1) uses all {cores} cores for each fit and paid its imports "
        f"already, so a grid of fits this short likely ran slower in parallel (measured on 2 "
        f"cores: a 5.1 s grid took 1.7x as long with fresh workers). The workers stay warm: a "
        f"second grid in this session does not pay the start-up again. See 'n_jobs on one "
        f"machine' in skcxr's docs/scaling.md; silence this with warnings.simplefilter("
        f"'ignore', skcxr.ParallelStartupWarning).")


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux: from /proc, so that a reused pid is another
    process); "0" where it cannot be read; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return "0"


def _marker_prefix() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"skcxr-parallel-startup-{uid}-")


def _claim_parent() -> bool:
    """True for the first worker of this parent process to ask (a marker file created
    exclusively, named by the parent's pid and start time); True as well when the marker
    cannot be made (better twice than never). The one that creates it removes the markers
    of parents that have ended."""
    ppid = os.getppid()
    marker = f"{_marker_prefix()}{ppid}-{_start_time(ppid) or '0'}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    remove_stale_markers()
    return True


def remove_stale_markers() -> int:
    """Remove this user's markers whose parent process has ended (or whose pid now belongs
    to a process started at another time); returns how many were removed."""
    prefix = _marker_prefix()
    removed = 0
    for path in glob.glob(glob.escape(prefix) + "*"):
        try:
            pid, started = path[len(prefix):].split("-")
            now = _start_time(int(pid))
            # stale: the parent has ended, or its pid is another process's now
            if now is not None and (now == started or "0" in (now, started)):
                continue
            os.unlink(path)
            removed += 1
        except (ValueError, OSError):
            continue
    return removed
    return True

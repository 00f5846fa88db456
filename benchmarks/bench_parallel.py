"""Many fits at once: one grid search run sequentially, with ``n_jobs=2`` (loky), on a Dask
``LocalCluster`` of 2 workers, and sequentially beside a busy neighbour process.

The grid: ``GridSearchCV(PretrainedCNNClassifier(max_epochs=2), {"n_trainable_layers":
[0, 4, 16]}, cv=StratifiedKFold(3), scoring="roc_auc")`` on 300 kermany224 training images,
defaults otherwise. Every configuration runs in its own fresh process, each with its own
empty ``memory=`` directory (the shared disk cache the workers use), in one run of this script:

* sequential: ``n_jobs=1``, the process alone on the machine;
* ``n_jobs=2``: joblib's default (loky) backend, 2 worker processes;
* Dask: ``joblib.parallel_config("dask")`` over ``distributed.LocalCluster(n_workers=2,
  threads_per_worker=1)`` (cluster start-up not counted, reported apart);
* beside a neighbour: sequential, while another process of the same priority runs 2-thread
  torch matrix products the whole time (a colleague's training job).

Each configuration times the grid twice: *cold*, the first grid of its process (loky starts
its worker processes inside it; the Dask workers have imported skcxr before the clock), then
*warm*, the same grid on as many other training images in the same process and workers (a
session's second grid: nothing to import or load again, no prefix cached).

Columns: wall seconds of ``search.fit`` cold and warm, each with its ratio to sequential, best
mean ROC AUC (cold grid), frozen-prefix entries made in the cold grid (computed from the
pixels to the chain's anchor, or derived from the anchor's outputs for a cut point; summed over
all processes; each image has the anchor and 3 cut points, so 1,200 is the least possible),
the peak RSS summed over all processes, and the cost model's prediction (cold / warm; see
``predict_wall``; the cold loky one adds the measured start-up of 2 fresh workers).

    python benchmarks/bench_parallel.py            # the grid above
    python benchmarks/bench_parallel.py --quick    # 150 images, c in {0, 4}
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time
from pathlib import Path

from _harness import DATA, kermany, peak_rss_mb, run_in_process


def probe_scorer(est, X, y):
    """A scorer that reports the process it ran in: pid, prefix computations so far and peak
    RSS, packed into one float so that they travel back in ``cv_results_``."""
    import resource

    from skcxr.cache import cache_info

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    made = cache_info()["features"]["computed"] + cache_info()["features"]["derived"]
    return os.getpid() * 1e9 + made * 1e4 + min(rss, 9999)


def _grid(mode, X, y, grid, folds, epochs, other, queue):
    import sys

    import cloudpickle  # what loky and Dask serialise functions with
    import joblib
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from skcxr import PretrainedCNNClassifier

    # this script is not importable in the workers: ship its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    auc = get_scorer("roc_auc")

    def timed(search, X, y):
        start = time.perf_counter()
        search.fit(X, y)
        return time.perf_counter() - start, search.cv_results_

    with tempfile.TemporaryDirectory() as memory:
        est = PretrainedCNNClassifier(max_epochs=epochs, memory=memory, random_state=0)
        search = GridSearchCV(est, grid, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                              scoring={"auc": auc, "probe": probe_scorer}, refit=False,
                              error_score="raise", n_jobs=2 if mode == "n_jobs=2" else None)
        startup = 0.0
        if mode == "calibrate":
            queue.put(_calibrate(search, X, y))
            return
        if mode.startswith("dask"):
            from distributed import Client, LocalCluster

            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=int(mode[4:] or 2), threads_per_worker=1,
                                   processes=True, dashboard_address=None)
            client = Client(cluster)
            client.run(lambda: __import__("skcxr"))  # workers import torch before the clock
            startup = time.perf_counter() - t0
            with joblib.parallel_config("dask"):
                elapsed, res = timed(search, X, y)
                warm, _ = timed(search, *other)
            client.close()
            cluster.close()
        else:
            elapsed, res = timed(search, X, y)  # fresh: loky starts its workers here
            warm, _ = timed(search, *other)  # the same workers, now warm
            if mode == "n_jobs=2":  # loky keeps idle workers 300 s; this process must exit now
                from joblib.externals.loky import get_reusable_executor

                get_reusable_executor().shutdown(wait=True)
    per_pid: dict = {}
    for key in res:
        if key.startswith("split") and key.endswith("test_probe"):
            for v in res[key]:
                v = int(v)
                pid, computed, rss = v // 10**9, (v % 10**9) // 10**4, v % 10**4
                old = per_pid.get(pid, (0, 0))
                per_pid[pid] = (max(old[0], computed), max(old[1], rss))
    rss = sum(r for _, r in per_pid.values())
    if os.getpid() not in per_pid:
        rss += peak_rss_mb()
    queue.put({"seconds": elapsed, "warm": warm, "startup": startup,
               "best_auc": float(res["mean_test_auc"].max()),
               "computed": sum(c for c, _ in per_pid.values()), "rss": rss,
               "processes": len(per_pid)})


def _ready():
    """What a fresh worker does before its first fit: import skcxr, load the backbone."""
    from skcxr import PretrainedCNNClassifier, load_backbone

    load_backbone(PretrainedCNNClassifier().backbone)  # the default backbone
    return os.getpid()


def _startup(n, queue):
    import sys

    import cloudpickle
    from joblib.externals.loky import get_reusable_executor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # not importable in workers
    queue.put(worker_startup(n))
    get_reusable_executor().shutdown(wait=True)


def worker_startup(n: int) -> float:
    """Seconds until ``n`` fresh loky workers have each imported skcxr and loaded the
    default backbone (what the first parallel grid of a session pays before its fits)."""
    import joblib

    start = time.perf_counter()
    pids = joblib.Parallel(n_jobs=n)(joblib.delayed(_ready)() for _ in range(n))
    elapsed = time.perf_counter() - start
    assert len(set(pids)) == n, pids  # one task each: all n started in parallel
    return elapsed


def _timed_grid(X, y, grid, folds, epochs, memory, barrier, queue):
    """The grid on one thread with its prefixes on disk: warm up once, wait for the other
    processes of the measurement (``barrier``), then time it again (all candidates: their
    suffixes differ in how hard they press on memory)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from threadpoolctl import threadpool_limits

    from skcxr import PretrainedCNNClassifier
    from skcxr.cache import clear_cache

    # a directory per process: a copy must not read the fits the other one finished
    memory = Path(memory) / str(os.getpid())
    with threadpool_limits(1):
        search = GridSearchCV(
            PretrainedCNNClassifier(max_epochs=epochs, memory=memory, random_state=0), grid,
            cv=StratifiedKFold(folds, shuffle=True, random_state=0), scoring="roc_auc",
            refit=False, error_score="raise")
        search.fit(X, y)
        clear_cache()
        forget_finished_fits(memory)
        barrier.wait()
        start = time.perf_counter()
        search.fit(X, y)
        queue.put(time.perf_counter() - start)


def contention(X, y, grid, folds, epochs, n=2) -> float:
    """How much slower the warm grid runs while ``n - 1`` copies run beside it (shared
    caches, memory bandwidth, the host's other tenants; 1.0 would be perfect scaling)."""
    ctx = mp.get_context("spawn")
    times = {}
    with tempfile.TemporaryDirectory() as memory:
        for k in (1, n):
            queue, barrier = ctx.Queue(), ctx.Barrier(k)
            procs = [ctx.Process(target=_timed_grid,
                                 args=(X, y, grid, folds, epochs, memory, barrier, queue))
                     for _ in range(k)]
            for p in procs:
                p.start()
            times[k] = sum(queue.get(timeout=900) for _ in procs) / k
            for p in procs:
                p.join()
    return times[n] / times[1]


def forget_finished_fits(memory) -> None:
    """Remove the finished-fit records of ``memory=`` (``skcxr-fits/``): the warm grid must
    train its fits again from the cached prefixes, not read the cold grid's results back."""
    import shutil

    shutil.rmtree(Path(memory) / "skcxr-fits", ignore_errors=True)


def _calibrate(search, X, y):
    """The cost model's inputs, on one thread (what one worker of the Dask runs has): the
    grid cold (prefixes computed), then warm (prefixes read from ``memory=``)."""
    from threadpoolctl import threadpool_limits

    from skcxr.cache import cache_info, clear_cache

    with threadpool_limits(1):
        start = time.perf_counter()
        search.fit(X, y)
        cold = time.perf_counter() - start
        computed = cache_info()["features"]["computed"] + cache_info()["features"]["derived"]
        clear_cache()  # the in-process copies go; the disk store stays
        forget_finished_fits(search.estimator.memory)
        start = time.perf_counter()
        search.fit(X, y)
        warm = time.perf_counter() - start
    res = search.cv_results_
    n_splits = search.n_splits_
    # one task = one fit + its scoring; with every prefix on disk it is the suffix's cost.
    # Listed in the order GridSearchCV dispatches them (candidate by candidate, folds inner)
    tasks = [float(f + s) for f, s in zip(res["mean_fit_time"], res["mean_score_time"])
             for _ in range(n_splits)]
    return {"cold": cold, "warm": warm, "computed": computed,
            "prefix_s": (cold - warm) / computed, "tasks": tasks}


def predict_wall(model: dict, n_workers: int, n_prefix: int | None = None,
                 tasks: list | None = None) -> float:
    """Predicted wall time of a grid on ``n_workers`` one-thread workers sharing ``memory=``.

    Each image's prefix entries (its anchor, each cut point) are made once, split across
    the workers (claims); the fits go, in the order GridSearchCV lists them, to whichever worker is
    free first (what joblib's and Dask's schedulers do); with several workers busy at once
    every task runs ``contention`` times slower than alone:

        T(N) = k_N * (n_prefix * prefix_s / N + list-schedule(task costs, N workers))

    with k_1 = 1 and k_N = the measured contention for N > 1.
    """
    import heapq

    n_prefix = model["computed"] if n_prefix is None else n_prefix
    k = 1.0 if n_workers == 1 else model["contention"]
    workers = [0.0] * n_workers
    for t in model["tasks"] if tasks is None else tasks:
        heapq.heapreplace(workers, workers[0] + t)
    return k * (n_prefix * model["prefix_s"] / n_workers + max(workers))


def _neighbour(stop):
    """A colleague's job: 2-thread torch matrix products, same priority, until told to stop."""
    import torch

    torch.set_num_threads(2)
    a = torch.randn(1024, 1024)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 images, c in {0, 4}")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--modes",
                        default="sequential,n_jobs=2,dask1,dask,neighbour,calibrate")
    args = parser.parse_args()
    n, grid = (150, {"n_trainable_layers": [0, 4]}) if args.quick else \
        (300, {"n_trainable_layers": [0, 4, 16]})
    folds = 3
    X, y = kermany(args.data, "train", n=n, seed=0)
    # the warm grid: as many other training images (none of X), drawn the same way
    Xa, ya = kermany(args.data, "train")
    seen = set(X)
    rest = [i for i, x in enumerate(Xa) if x not in seen]
    pick = random.Random(1).sample(rest, n)
    other = ([Xa[i] for i in pick], ya[pick])
    for path in list(X) + other[0]:  # the files in the page cache first: every row reads warm
        Path(path).read_bytes()
    print(f"GridSearchCV {grid}, {folds}-fold, {n} kermany224 images, {args.epochs} epochs, "
          f"defaults otherwise; {os.cpu_count()} CPUs\n")
    results = {}
    for mode in args.modes.split(","):
        if mode == "neighbour":
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            proc = ctx.Process(target=_neighbour, args=(stop,))
            # the neighbour runs with OpenMP's defaults, whatever this shell exports
            saved = {k: os.environ.pop(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                     if k in os.environ}
            proc.start()
            os.environ.update(saved)
            time.sleep(3)  # let it reach its steady state
            try:
                results[mode] = run_in_process(_grid, "sequential", X, y, grid, folds,
                                               args.epochs, other)
            finally:
                stop.set()
                proc.join()
        else:
            results[mode] = run_in_process(_grid, mode, X, y, grid, folds, args.epochs, other)
    labels = {"sequential": "sequential (n_jobs=1), alone",
              "n_jobs=2": "n_jobs=2 (loky, 2 processes)",
              "dask1": "Dask LocalCluster, 1 worker x 1 thread",
              "dask": "Dask LocalCluster, 2 workers x 1 thread",
              "neighbour": "sequential beside a busy 2-thread neighbour"}
    model = results.pop("calibrate", None)
    if model:
        model["contention"] = contention(X, y, grid, folds, args.epochs)
        model["startup"] = run_in_process(_startup, 2)
    base = results.get("sequential")
    print(f"{'':<46}{'cold s':>8}{'vs seq':>8}{'warm s':>8}{'vs seq':>8}{'best AUC':>10}"
          f"{'prefix':>8}{'RSS MB':>8}{'model':>12}")
    for mode, r in results.items():
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        warm_ratio = f"{r['warm'] / base['warm']:.2f}x" if base else "-"
        predicted = "-"
        if model and (mode.startswith("dask") or mode == "n_jobs=2"):
            workers = 2 if mode == "n_jobs=2" else int(mode[4:] or 2)
            wall = predict_wall(model, workers)
            cold = wall + (model["startup"] if mode == "n_jobs=2" else 0.0)
            predicted = f"{cold:.1f} / {wall:.1f}"
        print(f"{labels[mode]:<46}{r['seconds']:>8.1f}{ratio:>8}{r['warm']:>8.1f}{warm_ratio:>8}"
              f"{r['best_auc']:>10.4f}{r['computed']:>8}{r['rss']:>8.0f}{predicted:>12}")
    for mode in ("dask1", "dask"):
        if mode in results:
            print(f"({labels[mode]}: cluster start-up, not counted above: "
                  f"{results[mode]['startup']:.1f} s)")
    if model:
        per_task = sorted(set(round(t, 2) for t in model["tasks"]))
        print(f"\nCost model, calibrated on one thread: grid cold {model['cold']:.1f} s, warm "
              f"{model['warm']:.1f} s -> {1000 * model['prefix_s']:.1f} ms per frozen-prefix "
              f"entry (an image's anchor or cut point, on average), {per_task} s per fit + "
              f"scoring (one per candidate); "
              f"the warm grid runs {model['contention']:.2f}x slower beside a copy of itself; "
              f"2 fresh loky workers take {model['startup']:.1f} s to import skcxr and load "
              f"the backbone (the cold n_jobs=2 prediction adds it)")


if __name__ == "__main__":
    main()

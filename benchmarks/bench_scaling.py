"""How fitting time grows with the number of images and of grid points, cached vs uncached.

Both columns use ``PretrainedCNNClassifier`` (tf_efficientnet_lite0, c=2, 3 epochs, batch 32,
``engine="torch"``: the frozen prefix is computed by torch, never by OpenVINO) on stratified
subsets of kermany224/train in the shared data folder (``--data``); "uncached" is
``cache=False`` (every epoch runs the whole network), "cached" is the default (the frozen
prefix runs once per image and cut point). Every measurement runs in its own fresh process,
so no cache, loaded weights or warmed-up kernels carry over from one to the next. Prints two
tables and saves ``benchmarks/results/scaling.png``.

    python benchmarks/bench_scaling.py [--sizes 200 400 800 1600] [--grid 1 2 4]
                                       [--grid-n 400] [--data DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _harness import DATA, kermany, run_in_process

ENGINE = "torch"
BASE = dict(n_trainable_layers=2, max_epochs=3, early_stopping=False, random_state=0,
            engine=ENGINE)
C_VALUES = [0, 2, 4, 8, 16, 24]


def _fit(X, y, cache, queue) -> None:
    """One fit, timed in this (fresh) process."""
    from skcxr import PretrainedCNNClassifier

    start = time.perf_counter()
    PretrainedCNNClassifier(**BASE, cache=cache).fit(X, y)
    queue.put(time.perf_counter() - start)


def _search(X, y, k, cache, queue) -> None:
    """A 3-fold grid over the first ``k`` c values, timed in this (fresh) process."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from skcxr import PretrainedCNNClassifier

    est = PretrainedCNNClassifier(**BASE, cache=cache)
    start = time.perf_counter()
    GridSearchCV(est, {"n_trainable_layers": C_VALUES[:k]}, cv=StratifiedKFold(3),
                 scoring="roc_auc", refit=False).fit(X, y)
    queue.put(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800, 1600])
    parser.add_argument("--grid", type=int, nargs="+", default=[1, 2, 4],
                        help="numbers of candidates (c values) in a 3-fold grid")
    parser.add_argument("--grid-n", type=int, default=400, help="images in the grid search")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    args = parser.parse_args()

    print(f"PretrainedCNNClassifier(tf_efficientnet_lite0, c=2, 3 epochs, engine={ENGINE!r}); "
          "each measurement in its own process\n")
    rows_n = []
    print(f"{'images':>8}{'uncached s':>12}{'cached s':>10}{'ratio':>8}")
    for n in args.sizes:
        X, y = kermany(args.data, "train", n=n, seed=0)
        t_un = run_in_process(_fit, X, y, False)
        t_ca = run_in_process(_fit, X, y, True)
        rows_n.append((n, t_un, t_ca))
        print(f"{n:>8}{t_un:>12.1f}{t_ca:>10.1f}{t_un / t_ca:>8.1f}", flush=True)

    X, y = kermany(args.data, "train", n=args.grid_n, seed=0)
    rows_g = []
    print(f"\n{'grid points':>12}{'fits':>6}{'uncached s':>12}{'cached s':>10}{'ratio':>8}"
          f"   (3-fold CV, {len(y)} images, c in {C_VALUES[:max(args.grid)]})")
    for k in args.grid:
        t_un = run_in_process(_search, X, y, k, False)
        t_ca = run_in_process(_search, X, y, k, True)
        rows_g.append((k, t_un, t_ca))
        print(f"{k:>12}{3 * k:>6}{t_un:>12.1f}{t_ca:>10.1f}{t_un / t_ca:>8.1f}", flush=True)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, xlabel in ((axes[0], rows_n, "images (one fit, c=2, 3 epochs)"),
                             (axes[1], rows_g, f"grid points (3-fold CV, {len(y)} images)")):
        arr = np.array(rows, dtype=float)
        ax.plot(arr[:, 0], arr[:, 1], "o-", label="uncached (cache=False)")
        ax.plot(arr[:, 0], arr[:, 2], "o-", label="skcxr cached (default)")
        ax.set_xlabel(xlabel)
        ax.set_xticks(arr[:, 0])  # the measured points: whole images and grid points
        ax.set_ylabel("wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"PretrainedCNNClassifier, tf_efficientnet_lite0 at 224, engine={ENGINE!r}")
    fig.tight_layout()
    out = Path(__file__).parent / "results" / "scaling.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()

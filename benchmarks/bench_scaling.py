"""How fitting time grows with the number of images and of grid points, cached vs uncached.

Both columns use ``PretrainedCNNClassifier`` (tf_efficientnet_lite0, c=2, 3 epochs, batch 32)
on images from ../shared/data/kermany224/train in one run; "uncached" is ``cache=False``
(every epoch runs the whole network), "cached" is the default (the frozen prefix runs once
per image and cut point; the cache is cleared before each measurement). Prints two tables and
saves ``benchmarks/results/scaling.png``.

    python benchmarks/bench_scaling.py [--sizes 200 400 800 1600] [--grid 1 2 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _subset(data_dir: Path, n: int):
    from sklearn.model_selection import train_test_split

    from skcxr import load_image_folder

    data = load_image_folder(data_dir / "train")
    X, _, y, _ = train_test_split(data.data, data.target, train_size=n, stratify=data.target,
                                  random_state=0)
    return X, y


def _timed(fn) -> float:
    from skcxr.cache import clear_cache

    clear_cache()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800, 1600])
    parser.add_argument("--grid", type=int, nargs="+", default=[1, 2, 4],
                        help="numbers of candidates (c values) in a 3-fold grid on 400 images")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2]
                                              / "shared" / "data" / "kermany224"))
    args = parser.parse_args()
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from skcxr import PretrainedCNNClassifier

    base = dict(n_trainable_layers=2, max_epochs=3, early_stopping=False, random_state=0)
    rows_n = []
    print(f"{'images':>8}{'uncached s':>12}{'cached s':>10}{'ratio':>8}")
    for n in args.sizes:
        X, y = _subset(Path(args.data), n)
        t_un = _timed(lambda: PretrainedCNNClassifier(**base, cache=False).fit(X, y))
        t_ca = _timed(lambda: PretrainedCNNClassifier(**base).fit(X, y))
        rows_n.append((n, t_un, t_ca))
        print(f"{n:>8}{t_un:>12.1f}{t_ca:>10.1f}{t_un / t_ca:>8.1f}", flush=True)

    X, y = _subset(Path(args.data), 400)
    c_values = [0, 2, 4, 8, 16, 24]
    rows_g = []
    print(f"\n{'grid points':>12}{'fits':>6}{'uncached s':>12}{'cached s':>10}{'ratio':>8}")
    for k in args.grid:
        grid = {"n_trainable_layers": c_values[:k]}

        def search(cache):
            est = PretrainedCNNClassifier(**{**base, "cache": cache})
            GridSearchCV(est, grid, cv=StratifiedKFold(3), scoring="roc_auc",
                         refit=False).fit(X, y)

        t_un = _timed(lambda: search(False))
        t_ca = _timed(lambda: search(True))
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
                             (axes[1], rows_g, "grid points (3-fold CV, 400 images)")):
        arr = np.array(rows, dtype=float)
        ax.plot(arr[:, 0], arr[:, 1], "o-", label="uncached (cache=False)")
        ax.plot(arr[:, 0], arr[:, 2], "o-", label="skcxr cached (default)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("PretrainedCNNClassifier, tf_efficientnet_lite0 at 224, 2 CPU cores")
    fig.tight_layout()
    out = Path(__file__).parent / "results" / "scaling.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()

"""Does the learning-rate finder's suggestion beat the default ``lr=1e-3``?

A patient-grouped, stratified 5-fold CV (two repeats) on a stratified subset of
kermany224/train (``--data``), ImageNet tf_efficientnet_lite0, the classifier's defaults
otherwise, for a head alone (c=0, the default) and for the last two backbone layers too
(c=2). In each fold, "lr_find" runs ``lr_find`` on that fold's training images only and fits
with its suggestion; "default" fits with ``lr=1e-3``; "lr_find + onecycle" adds the
one-cycle schedule. The decision is made on the CV scores (the paired per-fold difference
with its 95% interval); the official Kermany test split is scored for context only.

    python benchmarks/bench_lr_find.py            # 800 images, 5 folds x 2 repeats
    python benchmarks/bench_lr_find.py --quick    # 300 images, 3 folds x 1 repeat
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import DATA, kermany


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import numpy as np
    from scipy import stats
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    from skcxr import PretrainedCNNClassifier, kermany_patient_ids

    n, folds, repeats = (300, 3, 1) if args.quick else (800, 5, 2)
    X, y = kermany(args.data, "train", n=n)
    groups = kermany_patient_ids(X)
    X_test, y_test = kermany(args.data, "test", n=200 if args.quick else None)
    configs = [("default", {}, False), ("lr_find", {}, True),
               ("lr_find + onecycle", {"lr_scheduler": "onecycle"}, True)]
    scores = {}  # (c, config) -> list of (cv auc, cv acc, test auc, test acc, lr, seconds)
    for c in (0, 2):
        for repeat in range(repeats):
            cv = StratifiedGroupKFold(folds, shuffle=True, random_state=repeat)
            for fold, (tr, te) in enumerate(cv.split(X, y, groups)):
                for name, extra, find in configs:
                    start = time.perf_counter()
                    clf = PretrainedCNNClassifier(n_trainable_layers=c, random_state=fold,
                                                  **extra)
                    if find:
                        lr = clf.lr_find(X[tr], y[tr], groups=groups[tr]).suggestion
                        clf.set_params(lr=lr)
                    clf.fit(X[tr], y[tr], groups=groups[tr])
                    seconds = time.perf_counter() - start
                    p = clf.predict_proba(X[te])[:, 1]
                    pt = clf.predict_proba(X_test)[:, 1]
                    scores.setdefault((c, name), []).append((
                        roc_auc_score(y[te], p), accuracy_score(y[te], p >= 0.5),
                        roc_auc_score(y_test, pt), accuracy_score(y_test, pt >= 0.5),
                        clf.lr, seconds))
                    print(f"c={c} repeat {repeat} fold {fold} {name:>20}: lr {clf.lr:.2e}, "
                          f"CV AUC {scores[(c, name)][-1][0]:.4f}, {seconds:.1f} s", flush=True)

    def interval(d):
        d = np.asarray(d)
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        return f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"

    print(f"\n{n} kermany224/train images, StratifiedGroupKFold({folds}) x {repeats}; "
          f"test: {len(X_test)} official test images (context only)")
    print(f"{'c':>2} {'config':>20} {'median lr':>10} {'CV AUC':>8} {'CV acc':>7} "
          f"{'test AUC':>9} {'test acc':>9} {'s/fit':>6}  CV AUC - default (95% CI)")
    for c in (0, 2):
        base = np.array(scores[(c, "default")])
        for name, _, _ in configs:
            s = np.array(scores[(c, name)])
            diff = "" if name == "default" else interval(s[:, 0] - base[:, 0])
            print(f"{c:>2} {name:>20} {np.median(s[:, 4]):>10.2e} {s[:, 0].mean():>8.4f} "
                  f"{s[:, 1].mean():>7.4f} {s[:, 2].mean():>9.4f} {s[:, 3].mean():>9.4f} "
                  f"{s[:, 5].mean():>6.1f}  {diff}")


if __name__ == "__main__":
    main()

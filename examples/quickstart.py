"""Quickstart: the skcxr API on the bundled sample of 300 chest X-rays, without a study around it.

The sample (``skcxr.load_sample_cxr()``: 100 NORMAL and 200 PNEUMONIA Kermany images, one per
patient, with their patient ids in ``groups``) is split once into a training part and a
held-out test part, patient-grouped. On the training part:

1. frozen ImageNet features + logistic regression, cross-validated with patient-grouped folds:
   ``make_pipeline(FeatureExtractorTransformer(), LogisticRegression(class_weight="balanced"))``;
2. a ``PretrainedCNNClassifier`` whose last ``n_trainable_layers`` layers (the studies' c) are
   fine-tuned on ``train_size`` images (their s), both chosen by ``GridSearchCV`` over the
   same folds.

The selected classifier then gives ``predict_proba`` on the test part, its per-epoch
``history_`` (plotted) and its ``provenance_`` (backbone and weights). The printed table, the
figure and ``run.json`` are saved in ``--out``; nothing else (the ``_common`` helpers only
handle ``--quick``/``--out`` and the saving). Run from the repository root::

    python examples/quickstart.py --quick   # well under a minute
    python examples/quickstart.py           # the whole sample at its 160x160 size

References
----------
* Data: D. Kermany, K. Zhang, M. Goldbaum, "Labeled Optical Coherence Tomography (OCT) and
  Chest X-Ray Images for Classification", Mendeley Data, v2, 2018,
  https://doi.org/10.17632/rscbjbr9sj.2 (CC BY 4.0).
"""

from __future__ import annotations

import pandas as pd
from _common import parse_args, savefig, show
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier, load_sample_cxr
from skcxr.plotting import plot_history


def main():
    args = parse_args(__doc__, data=False)
    size, epochs = (96, 3) if args.quick else (160, 10)

    cxr = load_sample_cxr()  # paths, targets (0 = NORMAL, 1 = PNEUMONIA), patient ids
    train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0)
                       .split(cxr.data, cxr.target, cxr.groups))
    X, y, groups = cxr.data[train], cxr.target[train], cxr.groups[train]
    cv = StratifiedGroupKFold(3, shuffle=True, random_state=0)  # no patient on both sides

    features = make_pipeline(FeatureExtractorTransformer(image_size=size),
                             LogisticRegression(class_weight="balanced", max_iter=1000))
    auc = cross_val_score(features, X, y, groups=groups, cv=cv, scoring="roc_auc")

    clf = PretrainedCNNClassifier(image_size=size, max_epochs=epochs, random_state=0)
    grid = {"n_trainable_layers": [0, 2], "train_size": [60, 120]}
    search = GridSearchCV(clf, grid, cv=cv, scoring="roc_auc").fit(X, y, groups=groups)
    best = search.best_estimator_  # refitted on the training part (s of its rows)
    proba = best.predict_proba(cxr.data[test])[:, 1]

    res = search.cv_results_
    rows = [("features + logistic regression", "grouped 3-fold CV", auc.mean())]
    rows += [(f"fine-tuned, c={p['n_trainable_layers']}, s={p['train_size']}",
              "grouped 3-fold CV", score) for p, score in zip(res["params"],
                                                              res["mean_test_score"])]
    rows.append((f"selected: c={best.n_trainable_layers}, s={best.train_size}",
                 f"held-out test ({len(test)} images)", roc_auc_score(cxr.target[test], proba)))
    table = pd.DataFrame(rows, columns=["model", "estimate", "ROC AUC"]).set_index("model")
    show(table, "Quickstart: the bundled sample", args.out)
    print(best.history_.round(4).to_string(index=False))
    print("provenance:", best.provenance_)
    savefig(plot_history(best).figure, args.out / "history.png")


if __name__ == "__main__":
    main()

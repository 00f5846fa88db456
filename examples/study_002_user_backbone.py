"""Study 002: a user-built DenseNet-121 (CheXNet) as a backbone; balanced vs imbalanced training.

The study
---------
Perez & Bir (2020; see References) load a CheXNet checkpoint (DenseNet-121 trained on
ChestX-ray14, from jrzech/reproduce-chexnet) into PyTorch, replace its classifier by a new
2-output layer and fine-tune it on COVID-19 vs non-COVID X-rays read from class folders
(ImageFolder): training images go through RandomResizedCrop(224) + horizontal flip, validation
images are resized and centre-cropped, both normalised with the ImageNet mean/std; Adam (lr
1e-3, weight decay 1e-4), CrossEntropy over 2 outputs, 20 epochs with early stopping (patience
10 on accuracy), only ``denseblock4`` and the classifier trainable. They compare training
compositions: COVID : non-COVID of 1:2.5 and 1:2 (max validation accuracy 0.728 and 0.676)
against 1:1 (0.827), and report for the final balanced, denseblock4-fine-tuned model 0.938 mean
/ 0.957 best accuracy over 5 runs, on a single 70/30 train/validation split (no test set).

What this script does
---------------------
The same protocol, expressed with skcxr and scikit-learn, in two parts:

1. ``backbone=torchvision.models.densenet121(weights=None)``: a user ``nn.Module`` passed as the
   backbone, ``n_trainable_layers="features.denseblock4"``. With ``--checkpoint PATH`` (a
   CheXNet-style checkpoint) its weights load first; WITHOUT it the network is random-init,
   i.e. it trains "from scratch (no offline weights)" with three frozen *random* dense blocks,
   and its numbers say nothing about the study's: they only show that the protocol runs.
   DenseNet-121 costs ~10x more than EfficientNet-Lite0 on a CPU, so this part uses a small
   subset, small images and few epochs.
2. The same protocol with ``tf_efficientnet_lite0`` and its offline ImageNet weights, so the
   numbers mean something; the analogue of "the last dense block" is its last stage and head
   conv (``n_trainable_layers="blocks.6"``, c = 8 parameterised layers): 30% of its weights,
   as denseblock4 + norm5 hold 31% of DenseNet-121's.

Training compositions, each evaluated by the same outer cross-validation:

* imbalanced: the classifier alone on the natural NORMAL:PNEUMONIA ratio (~1:2.9);
* balanced: ``imblearn.pipeline.make_pipeline(RandomUnderSampler(random_state=0), clf)``, which
  discards majority rows of each training fold only (test folds keep the natural ratio);
* (careful alternative, lite0 only) all rows with ``class_weight="balanced"``: the same
  balance in the loss without throwing away two thirds of the pneumonia images;
* a majority-class ``DummyClassifier``, the floor every accuracy must be read against.

What we changed, and why
------------------------
* Data: the study's COVID-19 set (ieee8023 covid-chestxray-dataset with Photoshop-cleaned
  markers, plus Kaggle/NIH non-COVID images) is not available here. We use kermany224 (Kermany
  et al. 2018, pediatric pneumonia, CC BY 4.0; ``load_image_folder`` reads its class folders,
  as ImageFolder did): NORMAL vs PNEUMONIA, whose natural 1:2.9 ratio is close to the study's
  1:2.5 imbalance, with the minority class now NORMAL.
* Weights: model hubs are unreachable, so no CheXNet or ImageNet DenseNet weights exist on this
  machine (hence ``--checkpoint`` and the lite0 part).
* Compute: 2 CPU cores instead of a Colab GPU, so smaller images (lite0 128 px, DenseNet 80 px
  instead of 224), stratified subsets of kermany224/train (lite0 600 images, DenseNet 160,
  each in 3 outer folds), at most 6 epochs (DenseNet 3) instead of 20, and early stopping
  patience 2 on the validation loss instead of 10 on accuracy: a patience of 10 never fires
  within 6 epochs, and the validation loss is a smoother signal than accuracy on an inner
  validation split of ~40-80 images. Raise ``FULL`` below on a GPU.
* ``resize="crop"`` applies to training images too before the RandomResizedCrop, so training
  crops are drawn from the centre crop rather than from the full image (a small difference).

Where the study's protocol is flawed, and the careful variant
--------------------------------------------------------------
* "Max validation accuracy" is the best epoch *on the set that is reported*, and 0.957 is the
  best of 5 runs: both are optimistic selections (max over epochs and over seeds). Here the
  best epoch is chosen on an inner validation split carved from each training fold
  (``validation_fraction=0.2``; the outer test fold is never seen) and we report the mean +-
  std over outer folds; the "best fold" column shows how much picking the maximum flatters.
* Their validation sets have the class ratio of their training sets, so accuracies of the
  compositions are not comparable: 0.728 on a 1:2.5 set is roughly the majority share (they
  note the model predicted non-COVID for everything). Here every composition is scored on the
  same natural-ratio test folds, with balanced accuracy, per-class recall and ROC AUC beside
  accuracy, and the majority baseline as a row.
* A random 70/30 split of a data set with several images per patient leaks patients between
  training and validation. Kermany's pneumonia file names carry a patient id (``personN_``):
  we split with ``StratifiedGroupKFold`` on ``skcxr.kermany_patient_ids`` (normals are
  grouped by their ``IM-NNNN`` number, a conservative guess: over-grouping never leaks).
* Balancing by undersampling discards data; ``class_weight="balanced"`` keeps it. (COVID vs
  non-COVID images also came from different sources, so a model can learn the source instead
  of the disease; the manual marker removal helps but does not remove that confound.)

Run it from the repository root::

    python examples/study_002_user_backbone.py --quick       # ~1 minute smoke run
    python examples/study_002_user_backbone.py               # full run, ~2-3 min on 2 idle cores
    python examples/study_002_user_backbone.py --checkpoint /path/to/chexnet.pth.tar

``--checkpoint`` accepts a torchvision-style DenseNet-121 state dict, the arnoweng/CheXNet
layout (``model.pth.tar``: ``module.densenet121.*`` keys, old ``norm.1`` names, no
``num_batches_tracked``, a ``Linear(1024, 14) + Sigmoid`` classifier) or TorchXRayVision's
DenseNet-121 file, as published: skcxr reads those layouts itself and reports the
classifier it drops (``provenance_["ignored_keys"]``). A pickled whole model (as
reproduce-chexnet saves) must be re-saved as a state dict first.

References
----------
* Study: J. Perez, R. Bir, "Implementing Transfer Learning on the CheXNet Convolutional
  Neural Network to Automatically Identify the Presence of COVID-19 in Chest X-ray Images",
  20 May 2020; code: https://github.com/jhorapb/covid19-pytorch.
* CheXNet: P. Rajpurkar, J. Irvin, K. Zhu et al., "CheXNet: Radiologist-Level Pneumonia
  Detection on Chest X-Rays with Deep Learning", arXiv:1711.05225, 2017; the checkpoint the
  study loads: J. Zech, "Reproduce CheXNet", https://github.com/jrzech/reproduce-chexnet,
  2018.
* Data: D. Kermany, K. Zhang, M. Goldbaum, "Labeled Optical Coherence Tomography (OCT) and
  Chest X-Ray Images for Classification", Mendeley Data, v2, 2018,
  https://doi.org/10.17632/rscbjbr9sj.2 (CC BY 4.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from _common import CLASSES, final_estimator, kermany, mean_std, parse_args, savefig, show, timed
from imblearn.pipeline import make_pipeline
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.metrics import confusion_matrix, make_scorer, recall_score
from sklearn.model_selection import StratifiedGroupKFold, cross_validate

from skcxr import PretrainedCNNClassifier, kermany_patient_ids

#: per part: training pool (a stratified subset of kermany224/train), outer folds, input size,
#: epochs and early-stopping patience. DenseNet-121 costs ~10x lite0 per image on a CPU.
FULL = {
    "lite0": dict(n=600, folds=3, image_size=128, max_epochs=6, patience=2),
    "densenet": dict(n=160, folds=3, image_size=80, max_epochs=3, patience=2),
}
QUICK = {
    "lite0": dict(n=48, folds=2, image_size=96, max_epochs=1, patience=1),
    # a smoke test of the user-module path: one composition (the imblearn pipeline), one split
    "densenet": dict(n=24, folds=2, splits=1, image_size=48, max_epochs=1, patience=1,
                     only=("balanced", "majority")),
}

#: the study's numbers (max validation accuracy, COVID vs non-COVID, their own split)
STUDY = {
    "imbalanced": "0.728 (1:2.5), 0.676 (1:2); ~ majority share",
    "balanced": "0.827 (1:1, classifier only); 0.938 mean / 0.957 best (+denseblock4)",
    "class_weight": "not tried",
    "majority": "",
}


def _cm_cell(i, j):
    def cell(y_true, y_pred):
        return confusion_matrix(y_true, y_pred, labels=[0, 1])[i, j]
    return make_scorer(cell)


SCORING = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "recall_NORMAL": make_scorer(recall_score, pos_label=0),
    "recall_PNEUMONIA": make_scorer(recall_score, pos_label=1),
    "roc_auc": "roc_auc",
    # the four cells of each fold's confusion matrix, summed into an out-of-fold matrix
    "tn": _cm_cell(0, 0), "fp": _cm_cell(0, 1), "fn": _cm_cell(1, 0), "tp": _cm_cell(1, 1),
}
METRICS = ["accuracy", "balanced_accuracy", "recall_NORMAL", "recall_PNEUMONIA", "roc_auc"]


def densenet_backbone(checkpoint: Path | None):
    """(module, weights, label) for the DenseNet-121 part: the checkpoint goes to skcxr as it
    was published (``weights=PATH``), whatever its layout."""
    import torchvision

    module = torchvision.models.densenet121(weights=None)
    if checkpoint is None:
        return module, None, "DenseNet-121, from scratch (no offline weights)"
    return module, str(checkpoint), f"DenseNet-121, checkpoint {checkpoint.name}"


def make_classifier(backbone, weights, n_trainable_layers, cfg) -> PretrainedCNNClassifier:
    """The study's recipe: crop augmentation, ImageNet mean/std, Adam + weight decay 1e-4."""
    return PretrainedCNNClassifier(
        backbone, weights=weights, image_size=cfg["image_size"],
        resize="crop", augment="crop", normalize="imagenet",
        n_trainable_layers=n_trainable_layers,
        optimizer="adam", lr=1e-3, optimizer_kwargs={"weight_decay": 1e-4},
        max_epochs=cfg["max_epochs"], batch_size=32,
        validation_fraction=0.2, early_stopping=True, patience=cfg["patience"],
        random_state=0)


def compositions(clf, class_weighted: bool) -> dict:
    comps = {
        "imbalanced": clf,
        "balanced": make_pipeline(RandomUnderSampler(random_state=0), clone(clf)),
    }
    if class_weighted:
        comps["class_weight"] = clone(clf).set_params(class_weight="balanced")
    comps["majority"] = DummyClassifier(strategy="most_frequent")
    return comps


LABELS = {
    "imbalanced": "imbalanced (natural ~1:3)",
    "balanced": "balanced (RandomUnderSampler)",
    "class_weight": "all rows, class_weight='balanced'",
    "majority": "majority class (DummyClassifier)",
}


def run_part(part: str, label: str, clf, cfg, args, class_weighted: bool):
    """Outer stratified, patient-grouped CV of every composition; one row per composition."""
    X, y = kermany(args.data, "train", n=cfg["n"])
    X = X.reshape(-1, 1)  # imblearn samplers want a 2-D X; skcxr takes an (n, 1) path column
    groups = kermany_patient_ids(X[:, 0])
    cv = StratifiedGroupKFold(n_splits=cfg["folds"], shuffle=True, random_state=0)
    splits = list(cv.split(X, y, groups))[:cfg.get("splits")]
    print(f"\n# {label}: {len(X)} images ({np.bincount(y).tolist()} NORMAL/PNEUMONIA, "
          f"{len(set(groups))} patients), {cfg['folds']}-fold stratified group CV "
          f"({len(splits)} splits run), {cfg['image_size']} px, <= {cfg['max_epochs']} epochs")
    rows, results = [], {}
    for key, est in compositions(clf, class_weighted).items():
        if key not in cfg.get("only", (key,)):
            continue
        with timed(f"{part} / {key}"):
            res = cross_validate(est, X, y, cv=splits, scoring=SCORING,
                                 return_estimator=True, error_score="raise")
        results[key] = res
        row = {"backbone": label, "training composition": LABELS[key]}
        for m in METRICS:
            row[m] = mean_std(res[f"test_{m}"])
        row["best fold acc"] = float(np.max(res["test_accuracy"]))
        fitted = [final_estimator(e) for e in res["estimator"]]
        row["train rows/fold"] = row["best epoch"] = ""
        if key != "majority":
            row["train rows/fold"] = str(int(np.mean([e.n_train_samples_ for e in fitted])))
            row["best epoch"] = "/".join(str(e.best_epoch_) for e in fitted)
        row["study (max val acc)"] = STUDY[key]
        rows.append(row)
    return rows, results


def plot_bars(tables: dict, out: Path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 5.0), squeeze=False)
    for ax, (label, results) in zip(axes[0], tables.items()):
        keys = list(results)
        width = 0.8 / len(keys)
        x = np.arange(len(METRICS))
        for i, key in enumerate(keys):
            means = [results[key][f"test_{m}"].mean() for m in METRICS]
            stds = [results[key][f"test_{m}"].std() for m in METRICS]
            ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
                   label=LABELS[key])
        ax.axhline(0.938, color="black", ls="--", lw=0.8,
                   label="study: 0.938 mean accuracy (COVID data, max over epochs)")
        ax.set_xticks(x, [m.replace("_", "\n") for m in METRICS], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("outer-fold score (mean +- std)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return savefig(fig, out / "composition_bars.png")


def plot_confusion(tables: dict, out: Path):
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    n = max(len([k for k in r if k != "majority"]) for r in tables.values())
    fig, axes = plt.subplots(len(tables), n, figsize=(3.4 * n, 3.2 * len(tables)),
                             squeeze=False)
    for row, (label, results) in zip(axes, tables.items()):
        keys = [k for k in results if k != "majority"]
        for ax, key in zip(row, keys):
            res = results[key]
            cm = np.array([[res["test_tn"].sum(), res["test_fp"].sum()],
                           [res["test_fn"].sum(), res["test_tp"].sum()]])
            ConfusionMatrixDisplay(cm, display_labels=CLASSES).plot(
                ax=ax, colorbar=False, values_format="d")
            ax.set_title(f"{label.split(',')[0]}\n{LABELS[key]}", fontsize=8)
        for ax in row[len(keys):]:
            ax.set_axis_off()
    fig.suptitle("out-of-fold confusion matrices (all outer test folds)", fontsize=10)
    return savefig(fig, out / "confusion_matrices.png")


def plot_histories(results: dict, out: Path):
    import matplotlib.pyplot as plt

    from skcxr.plotting import plot_history

    keys = [k for k in results if k != "majority"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        plot_history(final_estimator(results[key]["estimator"][0]), ax=ax)
        ax.set_title(f"lite0, fold 1: {LABELS[key]}", fontsize=9)
    return savefig(fig, out / "lite0_history_fold1.png")


def main():
    def extra(parser):
        parser.add_argument("--checkpoint", type=Path, default=None,
                            help="CheXNet-style DenseNet-121 checkpoint (.pth, .pth.tar)")

    args = parse_args(__doc__, extra)
    cfg = QUICK if args.quick else FULL
    lite0 = make_classifier("tf_efficientnet_lite0", "imagenet", "blocks.6", cfg["lite0"])
    lite0_label = "EfficientNet-Lite0, ImageNet (offline)"
    rows, lite0_res = run_part("lite0", lite0_label, lite0, cfg["lite0"], args,
                               class_weighted=True)

    module, weights, dn_label = densenet_backbone(args.checkpoint)
    dense = make_classifier(module, weights, "features.denseblock4", cfg["densenet"])
    dn_rows, dn_res = run_part("densenet", dn_label, dense, cfg["densenet"], args,
                               class_weighted=False)
    table = pd.DataFrame(rows + dn_rows).set_index("training composition")
    show(table, "Study 002: training composition, outer stratified patient-grouped CV "
         "on kermany224/train (study: COVID vs non-COVID, max validation accuracy)",
         args.out)
    if args.checkpoint is None:
        print("NOTE: the DenseNet-121 rows train from scratch (random init, three frozen "
              "random dense blocks): they are NOT comparable to the study's CheXNet "
              "numbers; pass --checkpoint for that. The lite0 rows carry the comparison.")
    tables = {lite0_label: lite0_res, dn_label: dn_res}
    plot_bars(tables, args.out)
    plot_confusion(tables, args.out)
    plot_histories(lite0_res, args.out)


if __name__ == "__main__":
    main()

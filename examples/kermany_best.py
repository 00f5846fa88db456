"""Kermany pneumonia, and a second hospital: a recipe fixed in advance, scored once per site.

The task is the Kermany et al. (2018) pediatric chest X-ray split that studies 001 and 003 use
(see References): 5,216 training images (1,341 NORMAL / 3,875 PNEUMONIA) and the standard
624-image test set (234 / 390), plus an external site, rsna2000 (1,995 adult RSNA images,
normal vs lung opacity, another hospital system). Honest published results on the Kermany
test split (nothing chosen on it): MedMNIST v2 ResNet-50 at 224 px accuracy 0.884 / ROC AUC
0.962; DenseNet-121 runs about 0.884 / 0.974. Kermany et al.'s 0.928 / 0.968 stopped training
on the test set. Our targets on 2 CPU cores within 60 minutes: inductive accuracy >= 0.92 and
ROC AUC >= 0.975 on Kermany test, transductive accuracy >= 0.94; on rsna2000 ROC AUC >= 0.90
inductive, >= 0.93 adapted.

The protocol
------------
1. **The recipe is fixed in advance**; nothing is selected. The previous version chose among
   candidates by patient-grouped CV on train: every candidate scored CV ROC AUC >= 0.994, and
   the chosen one scored 0.841 accuracy on test, below a plain augmented fine-tune (0.912).
   CV on one site cannot see robustness to another: augmentation can even lose
   in-distribution AUC while it gains on a shifted test set, so a plain CV picks the less
   robust model. The recipe, the documented default for a CXR pneumonia task:

   - ``PretrainedCNNClassifier(tf_efficientnet_lite0, n_trainable_layers=16,
     augment="standard", class_weight="balanced", tta="flip")``: the last 16 layers (the last
     two MBConv stages and the head convolution) fine-tune on rotated, shifted, zoomed,
     sheared, brightness/contrast-jittered and flipped images; class weights make the loss
     prior-free (a uniform effective prior), so the argmax decision is the balanced one;
     early stopping (patience 2, at most 6 epochs) and the kept checkpoint on a
     patient-grouped 10% inner split of train (``groups=kermany_patient_ids(X)``);
   - the same with ``intensity="clahe"`` (CLAHE at decode time: evens out exposure and
     processing differences between sites), and the same on lite1 at 240 px;
   - their soft-voting ensemble (``sklearn.ensemble.VotingClassifier(voting="soft")``): the
     mean of the three members' probabilities.
2. **Inductive**: the ensemble, fitted on kermany224/train only, predicts each test site
   once. Its decision rule is its own (argmax of the balanced posteriors), fixed before any
   test label is read.
3. **Transductive** (reported apart; uses the test site's *unlabelled* images, never its
   labels): (a) AdaBN (``skcxr.adaptation.adapt_batchnorm``: every BatchNorm statistic of
   every member re-estimated on the site's images and mapped onto those of 1,000 unlabelled
   training images, ``reference=``: the recipe's frozen layers keep ImageNet's statistics,
   so the site's images must reach the trained layers standardised as the training images
   did); for comparison, the same with the statistics replaced outright (AdaBN as published,
   which assumes the running statistics are the training site's); (b) (a) then the EM
   estimate of the site's
   prevalence (``estimate_prior``, Saerens et al. 2002) moving the probabilities by Bayes'
   rule and deciding by the most probable class there (``adjust_prior``). The EM estimate's
   assumption (after AdaBN, only the prevalence differs from the source) is checked: the
   adapted ensemble's scores on the site must be a mixture of the source classes' score
   distributions, taken from the unadapted ensemble on its held-out inner-validation rows.
   Pre-specified: where the check fails, the correction is not applied (the row then equals
   (a)), since a correction under a violated assumption can make things worse.
4. Every figure with a stratified bootstrap 95% interval (``skcxr.evaluation``; 2,000
   resamples). Kermany test images are resampled by patient (``kermany_patient_ids``),
   rsna2000 by image (one image per patient).
5. One self-contained report per site (``skcxr.report.write_report``) of the inductive
   ensemble: its card, metrics per class with intervals, ROC/PR curves with bootstrap
   bands, the reliability diagram, the top losses with the ensemble's Grad-CAM (the mean of
   its members' heatmaps), and the data-set check (``skcxr.datacheck``) of Kermany train,
   Kermany test and rsna2000 together: duplicates within and across them and the
   statistics that differ between them.

What limits the result
----------------------
The last full run's numbers are in the tables below (generated from that run). The Kermany
shift is in the NORMAL class: test labels were re-checked by a third expert, prevalence falls
from 74% to 62.5%, and NORMAL test images look different, so most errors are NORMAL called
pneumonia. rsna2000 differs in age (adults), acquisition and label definition (RSNA's "Lung
Opacity"), which no image statistic can adapt away; the label shift there is mild (50% vs
Kermany's 74%, and the recipe's prior is uniform anyway).

Run from the repository root::

    python examples/kermany_best.py --quick   # ~2 minute smoke run (CI): tiny subsets
    python examples/kermany_best.py           # the full protocol, ~40 minutes on 2 idle cores

References
----------
* D. S. Kermany, M. Goldbaum, W. Cai et al., "Identifying Medical Diagnoses and Treatable
  Diseases by Image-Based Deep Learning", Cell 172(5), 1122-1131.e9, 2018.
* J. Yang et al., "MedMNIST v2", Scientific Data 10, 41, 2023.
* Y. Li, N. Wang, J. Shi et al., "Revisiting Batch Normalization for Practical Domain
  Adaptation" (AdaBN), ICLR workshop 2017 / Pattern Recognition 80, 2018.
* M. Saerens, P. Latinne, C. Decaestecker, "Adjusting the Outputs of a Classifier to New a
  Priori Probabilities: A Simple Procedure", Neural Computation 14(1), 2002.
* Data: D. Kermany, K. Zhang, M. Goldbaum, Mendeley Data v2, 2018,
  https://doi.org/10.17632/rscbjbr9sj.2 (CC BY 4.0); rsna2000: RSNA Pneumonia Detection
  Challenge (Shih et al., Radiology: AI 2019) images of NIH ChestX-ray14 (Wang et al., CVPR
  2017), NIH Clinical Center.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import sklearn
from _common import CLASSES, kermany, parse_args, savefig, show, timed
from sklearn.base import clone
from sklearn.ensemble import VotingClassifier
from sklearn.metrics import RocCurveDisplay

from skcxr import PretrainedCNNClassifier, kermany_patient_ids, load_image_folder
from skcxr.adaptation import (
    PriorShiftWarning,
    adapt_batchnorm,
    adjust_prior,
    estimate_prior,
    training_prior,
)
from skcxr.evaluation import bootstrap_metrics

METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy")
GOALS = {("Kermany test", "inductive"): {"accuracy": 0.92, "roc_auc": 0.975},
         ("Kermany test", "AdaBN + EM prior (transductive)"): {"accuracy": 0.94},
         ("rsna2000", "inductive"): {"roc_auc": 0.90},
         ("rsna2000", "AdaBN (transductive)"): {"roc_auc": 0.93}}
ANCHORS = {"accuracy": "0.884 (MedMNIST v2 ResNet-50)", "roc_auc": "0.962-0.974"}


def recipe(quick: bool) -> VotingClassifier:
    """The fixed recipe: three augmented fine-tunes, soft-voted."""
    base = PretrainedCNNClassifier(
        "tf_efficientnet_lite0", weights="imagenet", image_size=128 if quick else 224,
        n_trainable_layers=16, augment="standard", class_weight="balanced", tta="flip",
        max_epochs=1 if quick else 6, patience=2, lr=1e-3, batch_size=32,
        validation_fraction=0.1, random_state=0).set_fit_request(groups=True)
    members = [("lite0", base),
               ("lite0-clahe", clone(base).set_params(intensity="clahe")),
               ("lite1", clone(base).set_params(backbone="tf_efficientnet_lite1",
                                                image_size=128 if quick else 240))]
    return VotingClassifier(members, voting="soft")


def rsna(data, n=None):
    d = load_image_folder(data / "rsna2000")
    assert tuple(d.target_names) == ("normal", "pneumonia"), d.target_names
    X, y = d.data, d.target
    if n is not None:
        rng = np.random.RandomState(0)
        keep = np.sort(np.r_[rng.choice(np.flatnonzero(y == 0), n // 2, replace=False),
                             rng.choice(np.flatnonzero(y == 1), n // 2, replace=False)])
        X, y = X[keep], y[keep]
    return X, y


def main():
    args = parse_args(__doc__)
    start = time.perf_counter()
    sklearn.set_config(enable_metadata_routing=True)  # groups to every member's fit
    X, y = kermany(args.data, "train", n=300 if args.quick else None)
    X_test, y_test = kermany(args.data, "test", n=100 if args.quick else None)
    X_rsna, y_rsna = rsna(args.data, n=100 if args.quick else None)
    groups = kermany_patient_ids(X)
    print(f"train: {len(X)} Kermany images ({np.bincount(y).tolist()} NORMAL/PNEUMONIA), "
          f"{len(set(groups))} patients; Kermany test: {len(X_test)} "
          f"({np.bincount(y_test).tolist()}); rsna2000: {len(X_rsna)} "
          f"({np.bincount(y_rsna).tolist()})")

    ensemble = recipe(args.quick)
    with timed("fit the recipe on kermany224/train (3 members)"):
        ensemble.fit(X, y, groups=groups)
    fit_seconds = time.perf_counter() - start
    members = dict(zip([n for n, _ in ensemble.estimators], ensemble.estimators_))
    for name, m in members.items():
        print(f"{name}: kept epoch {m.best_epoch_} of {len(m.history_)}; inner-validation "
              f"AUC per epoch {m.history_['valid_auc'].round(4).tolist()}")
    # the held-out source rows for the prior check: every member's inner split is the same
    valid = next(iter(members.values())).fit_rows_.valid
    assert all(np.array_equal(m.fit_rows_.valid, valid) for m in members.values())
    source_proba = ensemble.predict_proba(X[valid])
    source_prior = np.mean([training_prior(m) for m in members.values()], axis=0)
    # the training site's images that AdaBN maps each test site's statistics onto (no labels)
    X_ref = X[np.sort(np.random.RandomState(0).choice(len(X), min(len(X), 1000),
                                                      replace=False))]

    sites = {"Kermany test": (X_test, y_test, kermany_patient_ids(X_test)),
             "rsna2000": (X_rsna, y_rsna, None)}
    rows, curves, priors = [], {}, []
    for site, (Xs, ys, gs) in sites.items():
        settings = {}
        with timed(f"{site}: inductive predictions"):
            settings["inductive"] = ensemble
        with timed(f"{site}: AdaBN, statistics replaced by its {len(Xs)} images"):
            with warnings.catch_warnings():  # the warning this row demonstrates
                warnings.simplefilter("ignore", UserWarning)
                settings["AdaBN, replaced (transductive)"] = adapt_batchnorm(ensemble, Xs)
        with timed(f"{site}: AdaBN mapped onto {len(X_ref)} training images' statistics"):
            adapted = adapt_batchnorm(ensemble, Xs, reference=X_ref)
            settings["AdaBN (transductive)"] = adapted
        proba_adapted = adapted.predict_proba(Xs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PriorShiftWarning)
            est = estimate_prior(proba_adapted, source_prior, source_proba=source_proba,
                                 source_y=y[valid])
        priors.append({"site": site, "true prevalence (not used)": ys.mean(),
                       "EM estimate": est.prior[1], "KS distance": est.ks_statistic,
                       "critical (95%)": est.ks_critical,
                       "assumption holds": est.assumption_holds,
                       "warning": "yes" if caught else "no"})
        # pre-specified: the correction is applied only where its assumption check passes
        priors[-1]["correction applied"] = "yes" if est.assumption_holds else "no"
        settings["AdaBN + EM prior (transductive)"] = (
            adjust_prior(adapted, est.prior, source_prior=source_prior)
            if est.assumption_holds else adapted)
        for setting, model in settings.items():
            proba = model.predict_proba(Xs)[:, 1]
            pred = model.predict(Xs)
            curves[site, setting] = proba, pred
            table = bootstrap_metrics(ys, proba, pred, metrics=METRICS, groups=gs,
                                      n_resamples=300 if args.quick else 2000, random_state=0)
            row = {"site": site, "setting": setting}
            for metric in METRICS:
                r = table.loc[metric]
                row[metric] = f"{r.estimate:.4f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            goal = GOALS.get((site, setting), {})
            row["goal"] = ", ".join(f"{k} >= {v}" for k, v in goal.items())
            row["reached"] = ("" if not goal else "yes" if all(
                table.loc[k, "estimate"] >= v for k, v in goal.items()) else "no")
            rows.append(row)
        for name, m in members.items():  # for information: never used to choose
            proba = m.predict_proba(Xs)[:, 1]
            table = bootstrap_metrics(ys, proba, m.predict(Xs), metrics=METRICS, groups=gs,
                                      n_resamples=300 if args.quick else 2000, random_state=0)
            rows.append({"site": site, "setting": f"member {name} alone (information)",
                         **{k: f"{table.loc[k, 'estimate']:.4f} [{table.loc[k, 'ci_low']:.3f}"
                               f", {table.loc[k, 'ci_high']:.3f}]" for k in METRICS}})
    result = pd.DataFrame(rows).fillna("").set_index(["site", "setting"])
    show(result, "Each site scored once: estimate [95% bootstrap CI] (Kermany test resampled "
         "by patient)", args.out, "result")
    show(pd.DataFrame(priors).set_index("site"),
         "EM prevalence estimates after AdaBN, and the check of their assumption against the "
         "inner-validation rows", args.out, "priors")
    wall = time.perf_counter() - start
    show(pd.DataFrame({"value": {
        "recipe": "soft vote of lite0, lite0 + CLAHE, lite1 (c=16, augment='standard', "
                  "class_weight='balanced', tta='flip')",
        "anchors on Kermany test (honest, published)": f"accuracy {ANCHORS['accuracy']}, "
                                                       f"ROC AUC {ANCHORS['roc_auc']}",
        "fit time (s)": f"{fit_seconds:.0f}",
        "wall time, whole protocol (s)": f"{wall:.0f} (goal <= 3600)"}}),
        "Run", args.out, "run")
    plot(curves, sites, args.out)
    reports(ensemble, X, y, sites, args)


def reports(ensemble, X, y, sites, args):
    """The data-set check of the three sets, then one HTML report per test site."""
    from skcxr.datacheck import check_dataset
    from skcxr.report import write_report

    sets = {"Kermany train": (X, y), **{s: (Xs, ys) for s, (Xs, ys, _) in sites.items()}}
    with timed(f"data-set check of {', '.join(sets)}"):
        check = check_dataset(np.concatenate([v[0] for v in sets.values()]),
                              np.concatenate([np.asarray(CLASSES)[v[1]] for v in sets.values()]),
                              split=np.concatenate([[k] * len(v[0]) for k, v in sets.items()]))
    print(check.summary().to_string())
    for site, (Xs, ys, gs) in sites.items():
        slug = site.lower().replace(" ", "_")
        with timed(f"{site}: report"):
            write_report(
                args.out / f"report_{slug}.html", ensemble, Xs, ys, groups=gs, check=check,
                title=f"kermany_best on {site} (inductive)",
                description=f"The fixed recipe (a soft vote of three augmented fine-tunes of "
                f"EfficientNet-Lite: lite0, lite0 with CLAHE, lite1; c=16), fitted on the "
                f"{len(X)} Kermany training images only, predicting the {len(Xs)} images of "
                f"{site} once, before any of their labels was read. Classes: 0 = NORMAL, "
                f"1 = PNEUMONIA (rsna2000: lung opacity). Intervals resample "
                f"{'patients' if gs is not None else 'images (one per patient)'}. The "
                "data-set check covers Kermany train, Kermany test and rsna2000.",
                n_resamples=300 if args.quick else 2000, random_state=0)


def plot(curves, sites, out):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.4))
    markers = {"inductive": "o", "AdaBN, replaced (transductive)": "x",
               "AdaBN (transductive)": "s", "AdaBN + EM prior (transductive)": "^"}
    for ax, (site, (_, ys, _)) in zip(axes, sites.items()):
        for (s, setting), (proba, pred) in curves.items():
            if s != site:
                continue
            if setting != "AdaBN + EM prior (transductive)":  # the same ranking as AdaBN
                RocCurveDisplay.from_predictions(ys, proba, name=setting, ax=ax,
                                                 pos_label=1)
            color = ax.lines[-1].get_color()
            fpr, tpr = (pred[ys == 0] == 1).mean(), (pred[ys == 1] == 1).mean()
            ax.plot(fpr, tpr, markers[setting], color=color, ms=7, mfc="none",
                    label=f"decision: {setting}")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set_title(f"{site} ({len(ys)} images, {CLASSES[1].lower()} = positive)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    savefig(fig, out / "roc_sites.png")


if __name__ == "__main__":
    main()

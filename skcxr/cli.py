"""Command-line entry point: ``python -m skcxr demo`` and ``python -m skcxr report FOLDER``."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

SCORING = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
    "roc_auc": "roc_auc",
}


def _table(rows: list[tuple[str, dict]], metrics: list[str]) -> str:
    head = f"{'':<34}" + "".join(f"{m:>14}" for m in metrics)
    lines = [head, "-" * len(head)]
    for label, scores in rows:
        lines.append(f"{label:<34}" + "".join(f"{scores[m]:>14}" for m in metrics))
    return "\n".join(lines)


def demo(args) -> int:
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline

    from . import (
        FeatureExtractorTransformer,
        PretrainedCNNClassifier,
        load_image_folder,
        load_sample_cxr,
    )

    data = load_image_folder(args.data) if args.data else load_sample_cxr()
    X, y = data.data, data.target
    if len(data.target_names) != 2:
        print(f"demo needs two classes; {args.data} has {len(data.target_names)}.")
        return 2
    counts = np.bincount(y)
    print(f"skcxr demo: {len(y)} images, classes {dict(zip(data.target_names, counts.tolist()))}")
    short = args.backbone.split(":")[-1].replace("tf_efficientnet_", "")
    cv = StratifiedKFold(n_splits=args.n_splits, shuffle=True, random_state=args.random_state)
    with tempfile.TemporaryDirectory(prefix="skcxr-demo-") as cache:
        models = {
            # the feature cache makes the folds compute each image's features once
            f"{short} features + logistic": make_pipeline(
                FeatureExtractorTransformer(args.backbone, num_workers=args.num_workers,
                                            memory=cache, verbose=args.verbose),
                LogisticRegression(class_weight="balanced", C=args.C, max_iter=5000)),
            f"{short} fine-tuned, c={args.c}": PretrainedCNNClassifier(
                args.backbone, n_trainable_layers=args.c, class_weight="balanced",
                max_epochs=args.epochs, image_size=args.image_size,
                num_workers=args.num_workers, random_state=args.random_state),
            "majority class": DummyClassifier(),
        }
        results, seconds = {}, {}
        for name, est in models.items():
            start = time.perf_counter()
            results[name] = cross_validate(est, X, y, cv=cv, scoring=SCORING,
                                           return_estimator=True)
            seconds[name] = time.perf_counter() - start
    fitted = results[next(iter(models))]["estimator"][0][0]
    prov = fitted.provenance_
    print(f"backbone {prov['backbone']}: weights from {prov['weights_origin']}, "
          f"sha256 {prov.get('weights_sha256', 'n/a')[:16]}..., "
          f"{fitted.n_features_out_} features, precision {fitted.precision_}, "
          f"engine {fitted.engine_}\n")
    metrics = list(SCORING)
    print(f"Stratified {args.n_splits}-fold cross-validation, positive class "
          f"{data.target_names[1]!r}:")
    rows = []
    for name, res in results.items():
        if name != "majority class":
            rows += [(f"  fold {k + 1}", {m: f"{res[f'test_{m}'][k]:.3f}" for m in metrics})
                     for k in range(args.n_splits)]
        rows.append((f"{name} (mean)", {
            m: f"{res[f'test_{m}'].mean():.3f}+-{res[f'test_{m}'].std():.3f}" for m in metrics}))
    print(_table(rows, metrics))
    print("\ncross-validation time: " + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))
    return 0


def report(args) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    from . import FeatureExtractorTransformer, load_image_folder
    from .datacheck import check_dataset
    from .report import write_report

    data = load_image_folder(args.folder)
    X, y, groups = data.data, data.target_names[data.target], data.groups
    check = None if args.no_check else check_dataset(X, y, groups=groups)
    if args.model:
        import joblib

        model = joblib.load(args.model)  # runs the file's code: only files you trust
        path = write_report(args.out, model, X, y, groups=groups, check=check,
                            title=args.title or f"{args.model} on {args.folder}",
                            n_resamples=args.n_resamples)
    else:
        with tempfile.TemporaryDirectory(prefix="skcxr-report-") as cache:
            model = make_pipeline(
                FeatureExtractorTransformer(args.backbone, memory=cache),
                LogisticRegression(class_weight="balanced", C=args.C, max_iter=5000))
            cv = (StratifiedGroupKFold(args.n_splits, shuffle=True, random_state=0)
                  if groups is not None else StratifiedKFold(args.n_splits, shuffle=True,
                                                             random_state=0))
            proba = cross_val_predict(model, X, y, cv=cv, groups=groups,
                                      method="predict_proba")
            model.fit(X, y)
            pred = model.classes_[proba.argmax(1)]
            path = write_report(
                args.out, model, X, y, y_proba=proba, y_pred=pred, groups=groups,
                check=check, title=args.title or f"skcxr baseline on {args.folder}",
                description=f"{args.backbone} features + logistic regression "
                f"(class_weight='balanced'), {args.n_splits}-fold "
                f"{'patient-grouped ' if groups is not None else ''}stratified "
                "cross-validation: the numbers are out-of-fold; the card describes the "
                "model refitted on all images.", n_resamples=args.n_resamples)
    print(f"report written to {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="skcxr", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser(
        "demo",
        help="cross-validate pretrained CNN classifiers on CXR images",
        description="Stratified k-fold cross_validate of FeatureExtractorTransformer + "
        "LogisticRegression(class_weight='balanced') and of a fine-tuned "
        "PretrainedCNNClassifier against a majority-class baseline, on the bundled Kermany "
        "sample or on a class-folder directory.",
    )
    d.add_argument("--data", help="class-folder directory (default: bundled Kermany sample)")
    d.add_argument("--backbone", default="tf_efficientnet_lite0")
    d.add_argument("--n-splits", type=int, default=5)
    d.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the classifier")
    d.add_argument("--c", type=int, default=2,
                   help="trainable last layers of the fine-tuned model (the studies' c)")
    d.add_argument("--epochs", type=int, default=3, help="max epochs of the fine-tuned model")
    d.add_argument("--image-size", type=int, default=160,
                   help="input size of the fine-tuned model (the sample is 160x160)")
    d.add_argument("--num-workers", type=int, default=0)
    d.add_argument("--random-state", type=int, default=0)
    d.add_argument("--verbose", "-v", action="count", default=0)
    r = sub.add_parser(
        "report", help="write a self-contained HTML report for a class-folder data set",
        description="Cross-validate skcxr's baseline (backbone features + logistic "
        "regression) on FOLDER, or evaluate a saved model (--model), and write one HTML "
        "file: model card, metrics with 95%% CIs, figures, top losses with Grad-CAM and the "
        "data-set check (duplicates, near-duplicates, split shifts).")
    r.add_argument("folder", help="class-folder directory (root/<class>/<image>)")
    r.add_argument("--out", default="skcxr-report.html", help="the HTML file to write")
    r.add_argument("--model", help="a fitted model saved with joblib to evaluate instead of "
                   "cross-validating the baseline. Loading it runs code from the file: only "
                   "load files you trust")
    r.add_argument("--backbone", default="tf_efficientnet_lite0")
    r.add_argument("--n-splits", type=int, default=5)
    r.add_argument("--C", type=float, default=1.0)
    r.add_argument("--n-resamples", type=int, default=1000)
    r.add_argument("--title")
    r.add_argument("--no-check", action="store_true", help="skip the data-set check")
    args = parser.parse_args(argv)
    if args.command == "report":
        return report(args)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or sys.argv[1:])])
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())

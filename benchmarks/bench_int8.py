"""Does int8 hold accuracy? CV ROC AUC of frozen features + logistic regression per precision.

``make_pipeline(FeatureExtractorTransformer(precision=p), StandardScaler(),
LogisticRegression(C=0.01, class_weight="balanced"))`` in stratified 5-fold cross-validation
on kermany224/train images (tf_efficientnet_lite0 at 224), for p in fp32 (torch), bf16
(OpenVINO) and int8 (OpenVINO, quantized by NNCF inside each fold's fit, calibrated on that
fold's training images only). skcxr keeps ``precision="int8"`` only if its mean ROC AUC is
within 0.005 of fp32's. Each precision runs in its own process.

    python benchmarks/bench_int8.py [--n 1000] [--data DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import DATA, kermany, run_in_process

SIDES = (("fp32", "torch"), ("bf16", "openvino"), ("int8", "openvino"))


def side(paths, y, precision, engine, queue) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skcxr import FeatureExtractorTransformer

    pipe = make_pipeline(
        FeatureExtractorTransformer(precision=precision, engine=engine, random_state=0),
        StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000))
    start = time.perf_counter()
    cv = cross_validate(pipe, paths, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                        scoring="roc_auc")
    queue.put({"seconds": time.perf_counter() - start, "auc": cv["test_score"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of images")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    args = parser.parse_args()
    X, y = kermany(args.data, "train", n=args.n)
    paths = [str(p) for p in X]
    rows = [(p, e, run_in_process(side, paths, y, p, e)) for p, e in SIDES]
    ref = rows[0][2]["auc"].mean()
    print(f"\n{len(paths)} kermany224/train images, stratified 5-fold CV, lite0 features + "
          "logistic regression\n")
    print(f"{'precision (engine)':<22}{'mean ROC AUC':>14}{'std':>8}{'vs fp32':>10}"
          f"{'CV wall s':>11}{'  kept':>7}")
    for p, e, r in rows:
        auc = r["auc"].mean()
        kept = "yes" if abs(auc - ref) <= 0.005 else "NO"
        print(f"{p + ' (' + e + ')':<22}{auc:>14.4f}{r['auc'].std():>8.4f}{auc - ref:>+10.4f}"
              f"{r['seconds']:>11.1f}{kept:>7}")


if __name__ == "__main__":
    main()

"""torch vs OpenVINO per workload and image count: where ``engine="auto"`` should switch.

Each cell is one call in a fresh process (imports done, nothing compiled or cached: what a
user's first call costs, OpenVINO's conversion and compile included), bf16 on this CPU,
ImageNet tf_efficientnet_lite0, kermany224/train JPEGs (``--data``):

* features: ``FeatureExtractorTransformer(cache=False).fit(X).transform(X)``;
* classifier fit: ``PretrainedCNNClassifier(n_trainable_layers=c, max_epochs=2).fit(X, y)``,
  c = 0 and 16 (the frozen prefix computed once per image by the engine, then training in
  torch);
* predict: ``predict_proba`` of a fitted classifier (fitted in the same process, so its
  cached prefix outputs cannot be reused: another image set).

    python benchmarks/bench_engine.py            # n in 64, 128, 256, 512, 1024
    python benchmarks/bench_engine.py --quick    # n in 64, 256
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import DATA, kermany, run_in_process


def _one(workload, engine, n, data, queue):
    from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier

    X, y = kermany(data, "train", n=n)
    start = time.perf_counter()
    if workload == "features":
        FeatureExtractorTransformer(engine=engine, cache=False).fit(X).transform(X)
    elif workload.startswith("fit"):
        c = int(workload.split("c=")[1])
        PretrainedCNNClassifier(engine=engine, n_trainable_layers=c, max_epochs=2,
                                random_state=0).fit(X, y)
    else:  # predict
        X_fit, y_fit = kermany(data, "train", n=200, seed=1)
        clf = PretrainedCNNClassifier(engine="torch", max_epochs=1, random_state=0)
        clf.fit(X_fit, y_fit).set_params(engine=engine)
        X, _ = kermany(data, "test", n=n)
        start = time.perf_counter()
        clf.predict_proba(X)
    queue.put(time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (64, 256) if args.quick else (64, 128, 256, 512, 1024)
    workloads = ("features", "fit c=0", "fit c=16", "predict")
    print(f"{'workload':<10} {'n':>5} {'torch s':>8} {'openvino s':>11} {'torch/openvino':>15}")
    for workload in workloads:
        for n in sizes:
            if workload == "predict" and n > 624:
                continue  # the test split has 624 images
            t = run_in_process(_one, workload, "torch", n, args.data)
            o = run_in_process(_one, workload, "openvino", n, args.data)
            print(f"{workload:<10} {n:>5} {t:>8.2f} {o:>11.2f} {t / o:>14.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Predicting with a fitted classifier: torch vs skcxr's default engine vs ONNX Runtime.

One ``PretrainedCNNClassifier`` (tf_efficientnet_lite0 at 224x224, the last 16 layers
fine-tuned for 2 epochs on 512 kermany224/train images) is fitted and pickled once; each side
then loads it in its own process and predicts the probabilities of the same JPEG files (a
stratified subset of kermany224/test), end to end from the files, without the prefix cache
(``cache=False``: every image computed, as for new patients):

(a) torch, fp32: ``engine="torch", precision="fp32"`` (the reference for agreement);
(b) torch, default precision: ``engine="torch"`` (bf16 autocast on CPUs with native bf16);
(c) OpenVINO prefix + torch suffix: the frozen prefix compiled by OpenVINO, the trained
    suffix and head in torch (``engine="auto"`` below the ``whole_network_min_images``
    setting's images in a call, until the whole network is compiled);
(d) OpenVINO whole network: the whole trained network compiled once per fitted model (the
    default from ``whole_network_min_images`` images in a call, or once compiled); the
    threshold is lowered here so that 624 images take this path;
(e) ONNX Runtime: the file of ``skcxr.export.to_onnx`` (fp32), fed uint8 images that skcxr's
    own loader decodes and resizes (one thread decodes, ONNX Runtime's threads infer).

    python benchmarks/bench_predict.py [--n 624] [--data DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import tempfile
import time
from pathlib import Path

from _harness import DATA, kermany, peak_rss_mb, run_in_process


def fit(model_path: str, paths, y) -> None:
    from skcxr import PretrainedCNNClassifier

    clf = PretrainedCNNClassifier("tf_efficientnet_lite0", weights="imagenet", image_size=224,
                                  n_trainable_layers=16, max_epochs=2, early_stopping=False,
                                  validation_fraction=0.0, batch_size=32, random_state=0)
    clf.fit(paths, y)
    Path(model_path).write_bytes(pickle.dumps(clf))


def skcxr_side(model_path: str, paths, params: dict, queue, whole=None) -> None:
    from skcxr import set_config

    if whole is not None:  # force one OpenVINO path: whole network, or compiled prefix only
        set_config(whole_network_min_images=1 if whole else 10**9)
    clf = pickle.loads(Path(model_path).read_bytes()).set_params(cache=False, **params)
    start = time.perf_counter()
    clf.predict_proba(paths)  # the first call: compiles where the engine compiles
    first = time.perf_counter() - start
    start = time.perf_counter()
    proba = clf.predict_proba(paths)
    seconds = time.perf_counter() - start
    engine = clf.engine  # what predict ran on (resolved as skcxr resolves it on a CPU)
    if engine == "auto":
        engine = "openvino" if importlib.util.find_spec("openvino") else "torch"
    queue.put({"seconds": seconds, "first": first, "proba": proba, "rss": peak_rss_mb(),
               "engine": engine, "precision": clf.precision_})


def onnx_side(onnx_path: str, model_path: str, paths, queue) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from skcxr.images import check_images

    clf = pickle.loads(Path(model_path).read_bytes())
    prep = clf.preprocessing_

    def run(ps):
        source = check_images(np.asarray(ps))
        out = []
        for i in range(0, len(source), 32):
            batch = np.stack([prep.decode(source, j)[0].numpy()
                              for j in range(i, min(i + 32, len(source)))])[..., None]
            out.append(session.run(None, {"images": batch})[0])
        return np.concatenate(out)

    torch.set_num_threads(1)  # decoding: one thread; ONNX Runtime's pool infers
    start = time.perf_counter()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    run(paths)
    first = time.perf_counter() - start
    start = time.perf_counter()
    proba = run(paths)
    seconds = time.perf_counter() - start
    queue.put({"seconds": seconds, "first": first, "proba": proba, "rss": peak_rss_mb()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=624, help="number of test images")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    args = parser.parse_args()
    import numpy as np
    from sklearn.metrics import roc_auc_score

    X, y = kermany(args.data, "train", n=512)
    X_test, y_test = kermany(args.data, "test", n=args.n)
    paths = [str(p) for p in X_test]
    with tempfile.TemporaryDirectory(prefix="skcxr-bench-predict-") as tmp:
        model_path, onnx_path = f"{tmp}/clf.pkl", f"{tmp}/clf.onnx"
        run_in_process(_fit, model_path, [str(p) for p in X], y)
        rows = [("torch, fp32", run_in_process(skcxr_side, model_path, paths,
                                                {"engine": "torch", "precision": "fp32"})),
                ("torch, default precision", run_in_process(skcxr_side, model_path, paths,
                                                             {"engine": "torch"})),
                ("OpenVINO prefix + torch suffix", run_in_process(_prefix_only, model_path,
                                                                    paths, {})),
                ("OpenVINO whole network", run_in_process(_whole, model_path, paths, {}))]
        try:
            import onnxruntime  # noqa: F401

            from skcxr.export import to_onnx

            to_onnx(pickle.loads(Path(model_path).read_bytes()), onnx_path)
            rows.append(("ONNX Runtime (skcxr.export, fp32)",
                         run_in_process(onnx_side, onnx_path, model_path, paths)))
        except ImportError:
            pass
    ref = rows[0][1]
    print(f"\n{len(paths)} JPEG files of kermany224/test; fitted lite0 c=16 at 224x224, "
          "predict_proba from the files, no cache\n")
    print(f"{'':<48}{'img/s':>8}{'first call s':>14}{'vs torch fp32':>15}{'max |dP|':>10}"
          f"{'mean |dP|':>11}{'labels changed':>16}{'ROC AUC':>9}{'peak RSS MB':>13}")
    for label, r in rows:
        ips = len(paths) / r["seconds"]
        dp = np.abs(r["proba"] - ref["proba"])[:, 1]
        changed = int(((r["proba"][:, 1] >= 0.5) != (ref["proba"][:, 1] >= 0.5)).sum())
        extra = f" [{r['engine']}, {r['precision']}]" if "engine" in r else ""
        print(f"{label + extra:<48}{ips:>8.1f}{r['first']:>14.1f}"
              f"{ref['seconds'] / r['seconds']:>14.2f}x{dp.max():>10.1e}{dp.mean():>11.1e}"
              f"{changed:>16}{roc_auc_score(y_test, r['proba'][:, 1]):>9.4f}{r['rss']:>13.0f}")
    print("img/s: the second call (compiled, warm); first call: seconds of the first call on "
          "the same images, compile and session creation included")


def _prefix_only(model_path, paths, params, queue):
    skcxr_side(model_path, paths, params, queue, whole=False)


def _whole(model_path, paths, params, queue):
    skcxr_side(model_path, paths, params, queue, whole=True)


def _fit(model_path, paths, y, queue):
    fit(model_path, paths, y)
    queue.put(True)


if __name__ == "__main__":
    main()

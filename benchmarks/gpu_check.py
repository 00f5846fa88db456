"""The GPU check: on a machine with CUDA, the CUDA tests first, then features, single fits,
a small grid and predictions with mixed precision (AMP) and channels_last, as one table.

Sized to finish in under 8 minutes on one GPU (most of it JPEG decoding on the CPU); run
it first whenever a GPU machine is lent, and put its table in the README.

    python benchmarks/gpu_check.py              # CUDA and the shared data (kermany224)
    python benchmarks/gpu_check.py --dry-run    # on the CPU: a tiny random network on the
                                                # bundled sample; checks the plumbing (CI)

On the workplace's lent GPU machines, ``benchmarks/gpu_pack.sh`` first packs the wheels
their image lacks and a kermany224 subset into ``.gpu/`` (its header has the run command).

Each row: the step, its setting, the figure, and the seconds it took. The CUDA tests are
``tests/test_cuda.py`` and the other tests that need CUDA; on a machine without CUDA they
are skipped (reported as such), and ``--dry-run`` runs every benchmark step on the CPU so
that the script itself is exercised in CI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from _harness import DATA, kermany

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/test_cuda.py", "tests/test_features.py::test_cuda_fitted_pickle_loads_on_cpu"]


def cuda_tests(dry_run: bool) -> tuple[str, float]:
    """Run the CUDA tests in a subprocess; their pytest summary line."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *CUDA_TESTS], cwd=ROOT, capture_output=True, text=True, timeout=900)
    last = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    summary = re.sub(r"=+", "", last).strip()
    if run.returncode not in (0, 5) and not ("skipped" in summary and dry_run):
        print(run.stdout[-4000:], run.stderr[-2000:], sep="\n")
        raise SystemExit(f"CUDA tests failed: {summary}")
    return summary, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--dry-run", action="store_true",
                        help="on the CPU, tiny network and the bundled sample (CI)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV

    from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier, load_sample_cxr

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run with --dry-run to check the plumbing.")
    if args.dry_run:
        device = "cpu"
        net = dict(backbone="test_efficientnet", weights=None, image_size=48, engine="torch")
        sample = load_sample_cxr()
        X_all, y_all = sample.data, sample.target
        X_feat, (X_fit, y_fit), (X_grid, y_grid) = X_all[:64], (X_all, y_all), (X_all, y_all)
        X_test, y_test = X_all[::3], y_all[::3]
        grid_c, fit_c, epochs = [0, 2], 2, 1
    else:
        device = "cuda"
        net = dict(engine="torch")  # the library's default backbone, ImageNet weights
        X_feat, _ = kermany(args.data, "train", n=2048)
        X_fit, y_fit = kermany(args.data, "train", n=1000, seed=1)
        X_grid, y_grid = kermany(args.data, "train", n=300, seed=2)
        X_test, y_test = kermany(args.data, "test")
        grid_c, fit_c, epochs = [0, 4, 16], 2, 2
    rows = []

    def row(step, setting, figure, seconds):
        rows.append((step, setting, figure, seconds))
        print(f"{step:<22} {setting:<44} {figure:<28} {seconds:7.1f} s", flush=True)

    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (dry run)'}; "
          f"torch {torch.__version__}\n")
    summary, seconds = cuda_tests(args.dry_run)
    row("CUDA tests", "tests/test_cuda.py + CUDA tests elsewhere", summary, seconds)

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    for precision in ("fp32", "auto"):
        fe = FeatureExtractorTransformer(**net, device=device, precision=precision, cache=False)
        fe.fit(X_feat[:32]).transform(X_feat[:32])  # warm-up: cuDNN autotuning, allocator
        _, s = timed(lambda: fe.transform(X_feat))
        row("features", f"{len(X_feat)} JPEGs, precision={precision} ({fe.precision_})",
            f"{len(X_feat) / s:.1f} img/s", s)
    for c, augment in ((fit_c, None), ("all", "standard")):
        clf = PretrainedCNNClassifier(**net, device=device, n_trainable_layers=c,
                                      augment=augment, max_epochs=epochs, random_state=0)
        _, s = timed(lambda: clf.fit(X_fit, y_fit))
        auc = roc_auc_score(y_test, clf.predict_proba(X_test)[:, 1])
        how = "cached prefix" if augment is None else f"pixels, augment={augment}"
        row("single fit", f"c={c}, {epochs} epochs, {how}",
            f"{len(X_fit) * epochs / s:.1f} img/s, AUC {auc:.3f}", s)
    search = GridSearchCV(PretrainedCNNClassifier(**net, device=device, max_epochs=epochs,
                                                  random_state=0),
                          {"n_trainable_layers": grid_c}, cv=3, scoring="roc_auc")
    _, s = timed(lambda: search.fit(X_grid, y_grid))
    row("small grid", f"c in {grid_c}, 3-fold, {len(X_grid)} images",
        f"best CV AUC {search.best_score_:.3f} (c={search.best_params_['n_trainable_layers']})",
        s)
    model = search.best_estimator_
    few = X_test[:32]
    model.predict_proba(few)  # warm-up
    _, s = timed(lambda: model.predict_proba(few))
    row("predict, few", f"{len(few)} images", f"{s / len(few) * 1e3:.2f} ms/img", s)
    _, s = timed(lambda: model.predict_proba(X_test))
    row("predict, many", f"{len(X_test)} images", f"{len(X_test) / s:.1f} img/s", s)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        row("GPU memory", "peak allocated by torch", f"{peak:.2f} GiB", 0.0)
    total = sum(r[3] for r in rows)
    print(f"\n{len(rows)} steps, {total:.0f} s in all")
    assert np.isfinite(total)


if __name__ == "__main__":
    main()

"""The decoded-image cache: an augmented cross-validation with and without it.

With augmentation on, the frozen-prefix cache cannot be used (every epoch sees new random
views), so every epoch of every fold reads every image again. ``cache=True`` (the default)
keeps decoded, resized images in memory instead, so each file is decoded once per run.

The kermany224 JPEGs of the shared data folder are small (224 px, ~2,700 decodes/s on one
core), unlike the files users start from (NIH ChestX-ray14 ships 1024x1024 PNGs; Kermany's
originals are 1000-2000 px JPEGs). So the images are first written as 1024x1024 PNGs (upscaled
kermany224 train images) to a temporary directory, and both sides read those. Both sides run
``cross_val_score(PretrainedCNNClassifier(tf_efficientnet_lite0, n_trainable_layers=2,
augment="flip"), cv=StratifiedKFold(3), scoring="roc_auc")`` in their own process; only
``cache`` differs. Scores must be identical (the cache changes no pixel and no random draw).

    python benchmarks/bench_decode.py [--n 300] [--epochs 2] [--side 1024] [--data DIR]

``--data`` is the shared data folder (with ``kermany224/``; default: the one beside the
repository).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _harness import DATA, kermany, peak_rss_mb, run_in_process


def _write_pngs(data: Path, n: int, side: int, out: Path):
    import numpy as np
    from PIL import Image

    X, y = kermany(data, "train", n=n, seed=0)
    paths = []
    for i, p in enumerate(X):
        img = Image.open(p).convert("L").resize((side, side), Image.BICUBIC)
        paths.append(str(out / f"{i:05d}.png"))
        img.save(paths[-1])
    return np.array(paths, dtype=object), y


def cv(paths, y, epochs, cache, queue) -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from skcxr import PretrainedCNNClassifier
    from skcxr.cache import cache_info

    clf = PretrainedCNNClassifier(n_trainable_layers=2, augment="flip", max_epochs=epochs,
                                  early_stopping=False, random_state=0, cache=cache)
    start = time.perf_counter()
    scores = cross_val_score(clf, paths, y, cv=StratifiedKFold(3), scoring="roc_auc")
    elapsed = time.perf_counter() - start
    queue.put({"seconds": elapsed, "rss": peak_rss_mb(), "scores": scores,
               "decoded": cache_info()["decoded"]["computed"]})


def decode_rate(paths) -> float:
    """Images per second decoded and resized to 224x224 (bilinear, antialiased: what skcxr's
    preprocessing does for lite0) on one core."""
    import numpy as np
    import torch
    from torchvision.transforms.v2 import functional as TF

    from skcxr.images import read_image

    start = time.perf_counter()
    for p in paths:  # a writable copy, channels first, as skcxr's loader makes
        img = torch.from_numpy(np.array(np.atleast_3d(read_image(p)), order="C"))
        TF.resize(img.permute(2, 0, 1), [224, 224], antialias=True)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--side", type=int, default=1024, help="PNG side in pixels")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    args = parser.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        paths, y = _write_pngs(args.data, args.n, args.side, Path(tmp))
        rate = decode_rate(paths[:50])
        a = run_in_process(cv, paths, y, args.epochs, False)
        b = run_in_process(cv, paths, y, args.epochs, True)
    print(f"\n{args.n} images as {args.side}x{args.side} PNG (decode + resize to 224: "
          f"{rate:.0f} img/s on one core); 3-fold CV, lite0 c=2, augment='flip', "
          f"{args.epochs} epochs\n")
    print(f"{'':<34}{'seconds':>9}{'images decoded':>16}{'peak RSS MB':>13}{'mean AUC':>10}")
    for label, r in (("decode every epoch (cache=False)", a),
                     ("decoded-image cache (cache=True)", b)):
        print(f"{label:<34}{r['seconds']:>9.1f}{r['decoded'] or '-':>16}{r['rss']:>13.0f}"
              f"{r['scores'].mean():>10.4f}")
    print(f"speed-up {a['seconds'] / b['seconds']:.2f}x; identical scores: "
          f"{bool(np.array_equal(a['scores'], b['scores']))}")


if __name__ == "__main__":
    main()

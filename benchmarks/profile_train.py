"""Where a fit spends its time: ``torch.profiler`` over a ``PretrainedCNNClassifier`` fit
(tf_efficientnet_lite0 at 224, batch 32, the defaults otherwise: bf16 autocast where
native, channels_last), its operators grouped by kind, as a table of self CPU seconds.
By default all layers train, from pixels; ``--layers 16`` profiles a fit of the last 16
layers from the cached prefix (the frozen prefix is computed, and cached, before the
profiled fit).

    python benchmarks/profile_train.py [--n 128] [--epochs 2] [--augment none] [--layers all]

The profiler adds some overhead per operator; read the shares, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from _harness import DATA, kermany

#: operator name fragments -> kind, first match wins (aten names as the profiler reports them)
KINDS = [
    ("convolution_backward", "convolution backward"),
    ("conv", "convolution forward"),
    ("batch_norm_backward", "BatchNorm backward"),
    ("batch_norm", "BatchNorm forward"),
    ("hardtanh_backward", "ReLU6 backward"),
    ("hardtanh", "ReLU6 forward"),
    ("adam", "Adam step"),
    ("_foreach", "Adam step"),
    ("addmm", "head (linear)"),
    ("mm", "head (linear)"),
    ("_to_copy", "dtype casts (autocast) and copies"),
    ("copy_", "dtype casts (autocast) and copies"),
    ("clone", "dtype casts (autocast) and copies"),
    ("contiguous", "dtype casts (autocast) and copies"),
    ("add", "elementwise (residual adds, grad accumulation)"),
    ("mul", "elementwise (residual adds, grad accumulation)"),
    ("div", "elementwise (residual adds, grad accumulation)"),
    ("mean", "pooling"),
    ("pad", "padding (TF 'same')"),
    ("constant_pad", "padding (TF 'same')"),
]


def kind(name: str) -> str:
    low = name.lower()
    for fragment, label in KINDS:
        if fragment in low:
            return label
    return "other operators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--augment", default=None, help="an augment preset (default: none)")
    parser.add_argument("--precision", default="auto", help="the estimator's precision")
    parser.add_argument("--layers", default="all",
                        help="n_trainable_layers: 'all' (from pixels) or a number (default all)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from skcxr import PretrainedCNNClassifier

    X, y = kermany(args.data, "train", n=args.n, seed=0)
    layers = args.layers if args.layers == "all" else int(args.layers)
    clf = PretrainedCNNClassifier("tf_efficientnet_lite0", image_size=224,
                                  max_epochs=args.epochs, early_stopping=False,
                                  validation_fraction=0.0, lr=1e-4, n_trainable_layers=layers,
                                  augment=args.augment, precision=args.precision,
                                  random_state=0)
    if layers != "all":  # the prefix cached first, as in a grid after its first candidate
        clf.set_params(max_epochs=1).fit(X, y)
        clf.set_params(max_epochs=args.epochs)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        clf.fit(X, y)
    wall = time.perf_counter() - start
    by_kind: dict = defaultdict(float)
    top = []
    for e in prof.key_averages():
        if e.key.startswith("aten::") or e.key.startswith("mkldnn"):
            s = e.self_cpu_time_total / 1e6
            by_kind[kind(e.key)] += s
            top.append((s, e.key, e.count))
    total = sum(by_kind.values())
    print(f"n_trainable_layers={layers!r} fit, {args.n} kermany224 images, {args.epochs} "
          f"epochs, batch 32, "
          f"augment={args.augment!r}, precision {clf.precision_}, {torch.get_num_threads()} "
          f"threads: {wall:.1f} s under the profiler "
          f"({args.n * args.epochs / sum(clf.history_['dur']):.1f} img/s by the history)\n")
    print(f"{'operator kind':<50}{'self CPU s':>11}{'share':>8}")
    for label, s in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{label:<50}{s:>11.2f}{100 * s / total:>7.1f}%")
    print(f"{'all aten operators':<50}{total:>11.2f}")
    print("\nTop operators:")
    for s, name, count in sorted(top, reverse=True)[:12]:
        print(f"  {name:<44}{s:>8.2f} s {count:>7} calls")


if __name__ == "__main__":
    main()

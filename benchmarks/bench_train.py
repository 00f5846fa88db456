"""Training speed of the trainable suffix: a plain PyTorch loop vs skcxr, against the roofline.

For c in {2, 16, all} trainable layers of tf_efficientnet_lite0 at 224x224, on the same
kermany224/train images (each side in its own process):

(a) plain loop: what a user writes: the timm model with every layer but the last c frozen
    (``requires_grad=False``, frozen BatchNorm in eval mode), the whole network forward on
    every step from preprocessed fp32 tensors in memory (no decoding), Adam, batch 32;
(b) skcxr: ``PretrainedCNNClassifier(n_trainable_layers=c)``, default settings (cached frozen
    prefix, bf16 autocast where native, channels_last), the same batch size; its img/s is
    taken from the epochs after the first (the first computes the cached prefix).

img/s counts training images per second (forward + backward + optimizer step). The roofline
is the machine's bf16 matmul throughput divided by the FLOPs one training image costs in the
trained part (3x its forward FLOPs, counted by ``torch.utils.flop_counter``); the plain loop
also runs the frozen part forward, which the roofline does not count.

A second table: the augmented fit from pixels (``augment="standard"``, c=16), where the frozen
prefix must run on new pixels every epoch, with the prefix in eager torch (``engine="torch"``,
what every augmented fit did before 0.2) and compiled by OpenVINO (the default ``"auto"``),
each in its own process, epochs after the first (images decoded and cached by then).

    python benchmarks/bench_train.py [--n 512] [--epochs 3] [--cuts 2,16,all] [--data DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import DATA, kermany, peak_rss_mb, run_in_process

CUTS = "2,16,all"


def plain_loop(paths, y, c, epochs, layers, queue) -> None:
    import torch

    from skcxr import PretrainedCNNClassifier

    # the same weights, image size and preprocessing as skcxr: take them from a 1-image fit
    clf = PretrainedCNNClassifier("tf_efficientnet_lite0", image_size=224, max_epochs=1,
                                  validation_fraction=0.0, precision="fp32", engine="torch",
                                  n_trainable_layers=c)
    two = [list(y).index(0), list(y).index(1)]  # one image per class
    clf.fit([paths[i] for i in two], [y[i] for i in two])
    net = clf.module_
    from skcxr.images import check_images

    source, prep = check_images(paths), clf.preprocessing_
    x = prep.normalize(torch.stack([prep.load(source, i) for i in range(len(source))]))
    target = torch.as_tensor(y)
    # the plain loop's default memory format (skcxr may have stored channels_last weights)
    model = torch.nn.Sequential(net.backbone, net.head).to(memory_format=torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [p for name, m in net.backbone.named_modules() if name in set(layers)
                 for p in m.parameters(recurse=False)] + list(net.head.parameters())
    for p in trainable:
        p.requires_grad_(True)
    model.train()
    for name, m in net.backbone.named_modules():  # frozen BatchNorm stays in eval mode
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and name not in set(layers):
            m.eval()
    opt = torch.optim.Adam(trainable, lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    durations = []
    for _ in range(epochs):
        start = time.perf_counter()
        for i in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            loss_fn(model(x[i]), target[i]).backward()
            opt.step()
        durations.append(time.perf_counter() - start)
    queue.put({"seconds": min(durations[1:] or durations), "rss": peak_rss_mb()})


def skcxr_fit(paths, y, c, epochs, queue) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from skcxr import PretrainedCNNClassifier

    clf = PretrainedCNNClassifier("tf_efficientnet_lite0", image_size=224, max_epochs=epochs,
                                  early_stopping=False, validation_fraction=0.0, lr=1e-4,
                                  n_trainable_layers=c, random_state=0).fit(paths, y)
    dur = clf.history_["dur"].to_numpy()
    import torch

    net, prep = clf.module_, clf.preprocessing_
    x = torch.zeros(1, prep.in_chans, *prep.size)
    h = net.prefix(x, "fp32") if net.cut else None
    with FlopCounterMode(display=False) as counter:
        net.logits(x=None if net.cut else x, h=h, precision="fp32")
    queue.put({"seconds": float(min(dur[1:])), "rss": peak_rss_mb(),
               "gflop": counter.get_total_flops() / 1e9, "layers": clf.trained_layers_,
               "precision": clf.precision_, "cached": clf.prefix_namespace_ is not None})


def augmented_fit(paths, y, engine, epochs, queue) -> None:
    from skcxr import PretrainedCNNClassifier

    clf = PretrainedCNNClassifier("tf_efficientnet_lite0", image_size=224, max_epochs=epochs,
                                  early_stopping=False, validation_fraction=0.0, lr=1e-4,
                                  n_trainable_layers=16, augment="standard", engine=engine,
                                  random_state=0).fit(paths, y)
    queue.put({"seconds": float(min(clf.history_["dur"].to_numpy()[1:])),
               "rss": peak_rss_mb(), "precision": clf.precision_})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="number of training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cuts", default=CUTS, help="comma-separated c values (or 'all')")
    parser.add_argument("--no-augmented", dest="augmented", action="store_false",
                        help="skip the augmented-from-pixels table")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    args = parser.parse_args()
    from bench_features import bf16_matmul_gflops

    X, y = kermany(args.data, "train", n=args.n)
    paths = [str(p) for p in X]
    gflops = bf16_matmul_gflops()
    print(f"\n{len(paths)} kermany224/train images, tf_efficientnet_lite0 at 224x224, batch 32; "
          f"bf16 matmul {gflops:.0f} GFLOP/s\n")
    print(f"{'c':>5}{'layers':>8}{'GFLOP/img':>11}{'plain img/s':>13}{'skcxr img/s':>13}"
          f"{'ratio':>8}{'roofline':>10}{'% roofline':>12}{'  skcxr path'}")
    for c in [v if v == "all" else int(v) for v in args.cuts.split(",")]:
        s = run_in_process(skcxr_fit, paths, y, c, max(2, args.epochs))
        p = run_in_process(plain_loop, paths, y, c, max(2, args.epochs), s["layers"])
        train_gflop = 3 * s["gflop"]  # forward + backward (about 2x forward)
        roof = gflops / train_gflop
        ips_s, ips_p = len(paths) / s["seconds"], len(paths) / p["seconds"]
        path = f"{s['precision']}, {'cached prefix' if s['cached'] else 'whole network'}"
        print(f"{c!s:>5}{len(s['layers']):>8}{train_gflop:>11.2f}{ips_p:>13.1f}{ips_s:>13.1f}"
              f"{ips_s / ips_p:>7.2f}x{roof:>10.0f}{100 * ips_s / roof:>11.1f}%  {path}")
    if args.augmented:
        print(f"\naugment='standard', c=16, from pixels every epoch ({len(paths)} images)\n")
        print(f"{'prefix engine':>22}{'img/s':>9}{'s/epoch':>9}{'peak RSS MB':>13}")
        rows = {e: run_in_process(augmented_fit, paths, y, e, max(2, args.epochs))
                for e in ("torch", "auto")}
        for e, r in rows.items():
            name = "torch (eager, before)" if e == "torch" else "OpenVINO (auto, now)"
            print(f"{name:>22}{len(paths) / r['seconds']:>9.1f}{r['seconds']:>9.2f}"
                  f"{r['rss']:>13.0f}")
        print(f"{'ratio':>22}{rows['torch']['seconds'] / rows['auto']['seconds']:>8.2f}x")


if __name__ == "__main__":
    main()

"""A cross-validated grid over c and s: skorch the way users write it today vs skcxr.

Both sides run ``GridSearchCV(..., {"n_trainable_layers": C, "train_size": S},
cv=StratifiedKFold(k), scoring="roc_auc")`` on the same images (a stratified subset of
kermany224/train in the shared data folder, ``--data``), with the same epochs, batch size,
learning rate, optimizer (Adam), weights (ImageNet tf_efficientnet_lite0) and 10% inner
validation split, each in its own process (so each reports its own peak RSS):

* baseline: skorch ``NeuralNetClassifier`` wrapping the timm model, a ``Freezer`` callback for
  every layer but the last c, fp32, default memory format, its own PIL data loading, every
  epoch running the whole network;
* skcxr: ``PretrainedCNNClassifier`` defaults (bf16 where the CPU has it, channels_last,
  frozen-prefix activations computed once per image and cut point and shared by all fits),
  as a user who sets nothing gets them (``engine="auto"``), and with the prefix computed
  by torch and, if openvino is installed, by OpenVINO.

    python benchmarks/bench_grid.py            # c in {0,2,8,16} x s in {100,200,400}, 5 folds
    python benchmarks/bench_grid.py --quick    # c in {0,4,16}, 3 folds, 300 images, 2 epochs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _harness import DATA, kermany, peak_rss_mb, run_in_process


class SkorchBaseline:
    """What a user writes today: skorch + timm + Freezer, with c and s as parameters."""

    def __init__(self, n_trainable_layers=0, train_size=None, max_epochs=3, batch_size=32,
                 lr=1e-3, random_state=0):
        self.n_trainable_layers = n_trainable_layers
        self.train_size = train_size
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state

    # minimal sklearn protocol, as a user would write it
    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in ("n_trainable_layers", "train_size", "max_epochs",
                                              "batch_size", "lr", "random_state")}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, X, y):
        import timm
        import torch
        from PIL import Image
        from sklearn.model_selection import train_test_split
        from skorch import NeuralNetClassifier
        from skorch.callbacks import Freezer
        from skorch.dataset import ValidSplit
        from torchvision import transforms

        from skcxr import load_backbone

        torch.manual_seed(self.random_state)
        # the baseline's own s-subsample, as a user writes it (skcxr draws it inside fit)
        if self.train_size and self.train_size < len(y):
            X, _, y, _ = train_test_split(X, y, train_size=self.train_size, stratify=y,
                                          random_state=self.random_state)
        model = timm.create_model("tf_efficientnet_lite0", num_classes=2)
        # the user's pretrained=True: the same ImageNet weights as skcxr's, loaded offline
        head = (model.classifier.weight.data.clone(), model.classifier.bias.data.clone())
        imagenet = load_backbone("tf_efficientnet_lite0", "imagenet", num_classes=1000)
        sd = {k: v for k, v in imagenet.module.state_dict().items()
              if not k.startswith("classifier")}
        sd["classifier.weight"], sd["classifier.bias"] = head
        model.load_state_dict(sd)
        # freeze all parameterised layers but the last c (named_modules order)
        owners = [n for n, m in model.named_modules()
                  if n and n != "classifier" and any(True for _ in m.parameters(recurse=False))]
        keep = set(owners[len(owners) - self.n_trainable_layers:]) if self.n_trainable_layers \
            else set()
        frozen = [f"{n}.*" for n in owners if n not in keep]
        tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                 transforms.Normalize((0.5,) * 3, (0.5,) * 3)])

        class PathDataset(torch.utils.data.Dataset):
            def __init__(self, paths, targets=None):
                self.paths, self.targets = paths, targets

            def __len__(self):
                return len(self.paths)

            def __getitem__(self, i):
                x = tf(Image.open(self.paths[i]).convert("RGB"))
                return x, (self.targets[i] if self.targets is not None else 0)

        self.net_ = NeuralNetClassifier(
            model, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
            lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size,
            train_split=ValidSplit(10, stratified=True),
            callbacks=[Freezer(frozen)] if frozen else [],
            dataset=PathDataset, verbose=0,
        )
        self.net_.fit(np.asarray(X), np.asarray(y, dtype=np.int64))
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        return self.net_.predict_proba(np.asarray(X))

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(1)]

    def decision_function(self, X):
        p = self.predict_proba(X)
        return p[:, 1] - p[:, 0]

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())


def _grid(side, X, y, grid, folds, epochs, queue):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    if side == "skorch":
        est = SkorchBaseline(max_epochs=epochs)
    else:
        from skcxr import PretrainedCNNClassifier

        est = PretrainedCNNClassifier(max_epochs=epochs, batch_size=32, lr=1e-3,
                                      early_stopping=False, validation_fraction=0.1,
                                      engine=side.split("-")[1], random_state=0)
    start = time.perf_counter()
    search = GridSearchCV(est, grid, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                          scoring="roc_auc", refit=False, error_score="raise")
    search.fit(X, y)
    elapsed = time.perf_counter() - start
    res = search.cv_results_
    queue.put({"seconds": elapsed, "rss": peak_rss_mb(),
               "best_auc": float(res["mean_test_score"].max()),
               "best": search.best_params_,
               "table": [(p, float(m)) for p, m in zip(res["params"], res["mean_test_score"])]})


def _run(side, *args):
    return run_in_process(_grid, side, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, a few minutes")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per fit (default 3; 2 with --quick)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    if args.quick:  # the small grid of issue 13: 3 cut points, 3 folds, 300 images
        grid = {"n_trainable_layers": [0, 4, 16]}
        folds, n, epochs = 3, 300, 2
    else:
        grid = {"n_trainable_layers": [0, 2, 8, 16], "train_size": [100, 200, 400]}
        folds, n, epochs = 5, 500, 3
    args.epochs = args.epochs or epochs
    X, y = kermany(args.data, "train", n=n, seed=0)
    fits = np.prod([len(v) for v in grid.values()]) * folds
    print(f"GridSearchCV {grid}, {folds}-fold ({fits} fits), {n} images, "
          f"{args.epochs} epochs, batch 32, Adam lr 1e-3, tf_efficientnet_lite0 at 224\n")
    sides = ["skcxr-auto", "skcxr-torch"]  # auto: the default, what a user who sets nothing gets
    try:
        import openvino  # noqa: F401

        sides.append("skcxr-openvino")
    except ImportError:
        pass
    results = {side: _run(side, X, y, grid, folds, args.epochs) for side in sides}
    if not args.skip_baseline:
        results["skorch"] = _run("skorch", X, y, grid, folds, args.epochs)
    print(f"{'':<50}{'wall s':>9}{'vs skorch':>11}{'best mean AUC':>15}{'peak RSS MB':>13}")
    labels = {"skorch": "skorch + timm + Freezer (fp32, uncached)",
              "skcxr-auto": "skcxr PretrainedCNNClassifier (defaults)",
              "skcxr-torch": "skcxr PretrainedCNNClassifier (engine='torch')",
              "skcxr-openvino": "skcxr PretrainedCNNClassifier (engine='openvino')"}
    base = results.get("skorch")
    for side in ("skorch", *sides):
        if side in results:
            r = results[side]
            ratio = f"{base['seconds'] / r['seconds']:.1f}x" if base else "-"
            print(f"{labels[side]:<50}{r['seconds']:>9.1f}{ratio:>11}{r['best_auc']:>15.4f}"
                  f"{r['rss']:>13.0f}")
    for side, r in results.items():
        print(f"\n{side}: best {r['best']}")
        for params, auc in r["table"]:
            print(f"  c={params['n_trainable_layers']:<3} s={params.get('train_size', 'all'):<4} "
                  f"AUC {auc:.4f}")


if __name__ == "__main__":
    main()

"""The skorch side of PretrainedCNNClassifier: dataset, loss with weights, callbacks."""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from torch import nn

from .images import ImageDataset, ImageSource, Preprocessing, collate_images


class TrainingDataset(torch.utils.data.Dataset):
    """Items ``({"x": image, "sample_weight": w}, y)``; ``augment`` applies to the image.

    ``decoded`` (a :class:`skcxr.cache.DecodedImages`) serves decoded, resized images, so
    epochs after the first (and other folds and grid points) do not decode again.
    """

    def __init__(self, source: ImageSource, preprocessing: Preprocessing, y: np.ndarray,
                 weights: np.ndarray, augment=None, decoded=None):
        self.images = ImageDataset(source, preprocessing, decoded)
        self.y = torch.as_tensor(y)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if self.augment is not None:
            x = self.augment(x)
        return {"x": x, "sample_weight": self.weights[i]}, self.y[i]


class ActivationDataset(torch.utils.data.Dataset):
    """Items ``({"x": frozen-prefix output, "sample_weight": w}, y)`` from a cached tensor."""

    def __init__(self, acts: torch.Tensor, y: np.ndarray, weights: np.ndarray):
        self.acts = acts
        self.y = torch.as_tensor(y)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.acts)

    def __getitem__(self, i):
        return {"x": self.acts[i], "sample_weight": self.weights[i]}, self.y[i]


def collate_training(items):
    xs, ys = zip(*items)
    return (
        {"x": collate_images([d["x"] for d in xs]),
         "sample_weight": torch.stack([d["sample_weight"] for d in xs])},
        torch.stack(ys),
    )


class WeightedNet(NeuralNet):
    """skorch NeuralNet whose loss is the sample-weighted mean of a per-sample criterion.

    Only the head and the backbone layers planned to train are given to the optimizer, so no
    optimizer state is ever allocated for frozen layers.
    """

    def get_loss(self, y_pred, y_true, X=None, training=False):
        per_sample = self.criterion_(y_pred, y_true.to(y_pred.device))
        if per_sample.ndim > 1:  # multi-label: mean over labels
            per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
        w = X["sample_weight"].to(per_sample.device) if isinstance(X, dict) else 1.0
        return (per_sample * w).mean()

    def get_all_learnable_params(self):
        module = self.module_
        planned = set(module.trainable_layers)
        for name, p in module.named_parameters():
            if name.startswith("head."):
                yield name, p
            elif name.startswith("backbone."):
                owner = name[len("backbone."):].rpartition(".")[0]
                if owner in planned:
                    yield name, p


class Unfreeze(Callback):
    """Unfreeze the planned backbone layers at the start of epoch ``freeze_epochs + 1``."""

    def __init__(self, freeze_epochs: int):
        self.freeze_epochs = freeze_epochs

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history)  # the current epoch's row is already appended
        if epoch > self.freeze_epochs and not net.module_.backbone_unfrozen:
            net.module_.unfreeze()
            early = dict(net.callbacks_).get("early_stopping")
            if early is not None:  # a new phase gets its own patience
                early.misses_ = 0


class EpochRecord(Callback):
    """Validation metrics, learning rates and the trainable layer count per epoch."""

    def __init__(self, task: str):
        self.task = task

    def on_epoch_begin(self, net, **kwargs):
        self.preds_, self.trues_ = [], []

    def on_batch_end(self, net, batch=None, training=None, y_pred=None, **kwargs):
        if not training and y_pred is not None:
            self.preds_.append(y_pred.detach().float().cpu())
            self.trues_.append(batch[1].cpu())

    def on_epoch_end(self, net, **kwargs):
        module = net.module_
        head = {id(p) for p in module.head.parameters()}
        for group in net.optimizer_.param_groups:
            is_head = any(id(p) in head for p in group["params"])
            net.history.record("lr" if is_head else "backbone_lr", group["lr"])
        net.history.record(
            "n_trainable_layers", len(module.trainable_layers) if module.backbone_unfrozen else 0
        )
        if self.preds_:
            acc, auc = _scores(self.task, torch.cat(self.preds_), torch.cat(self.trues_))
            net.history.record("valid_acc", acc)
            net.history.record("valid_auc", auc)


def _scores(task: str, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    y = y.numpy()
    if task == "multilabel":
        proba = torch.sigmoid(logits).numpy()
        acc = float(((proba >= 0.5) == (y >= 0.5)).mean())
        cols = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        auc = float(roc_auc_score(y[:, cols], proba[:, cols], average="macro")) if cols else np.nan
        return acc, auc
    proba = torch.softmax(logits, dim=1).numpy()
    acc = float((proba.argmax(1) == y).mean())
    present = np.unique(y)
    if len(present) < 2:
        return acc, np.nan
    if proba.shape[1] == 2:
        return acc, float(roc_auc_score(y, proba[:, 1]))
    if len(present) < proba.shape[1]:
        return acc, np.nan
    return acc, float(roc_auc_score(y, proba, multi_class="ovr"))


def make_criterion(task: str, pos_weight=None) -> nn.Module:
    if task == "multilabel":
        return nn.BCEWithLogitsLoss(reduction="none", pos_weight=pos_weight)
    return nn.CrossEntropyLoss(reduction="none")

"""skorch's net and the data of a fit: the training datasets, the weighted loss, the net
and its history.

``PretrainedCNNClassifier.fit`` asks this module for the datasets of a fit
(:func:`training_datasets`), a configured skorch net (:func:`make_net`, with the callbacks
of :mod:`skcxr._callbacks` and the optimizer and schedule tables of
:mod:`skcxr._schedules`), the training (:func:`train`) and, after it, the history and the
epoch whose weights were kept (:func:`history_frame`, :func:`kept_epoch`). Only this module
and :mod:`skcxr._callbacks` import skorch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping, LRScheduler, ProgressBar
from skorch.helper import predefined_split
from skorch.history import History
from skorch.utils import noop
from torch import nn

from ._allocator import heap_for_tensors
from ._augment import RandomView
from ._callbacks import (
    EpochCheckpoint,
    EpochRecord,
    FiniteLoss,
    PhasedEarlyStopping,
    Unfreeze,
    find_callback,
    named_callbacks,
)
from ._frozen import prefix_from_cache, prefix_part
from ._preprocessing import Preprocessing
from ._resume import FitCheckpoints, restore_module
from ._runtime import CallOptions, Execution
from ._schedules import (
    BATCH_SCHEDULERS,
    OPTIMIZER_CLASSES,
    OPTIMIZER_DEFAULTS,
    SCHEDULER_CLASSES,
    SCHEDULER_DEFAULTS,
)
from .cache import DecodedImages
from .images import ImageDataset, ImageSource, collate_images


@dataclass(frozen=True)
class TrainingConfig:
    """The classifier's parameters that configure the skorch net, as one object: adding a
    training parameter touches this class and :func:`make_net` (skorch's
    ``get_params_for`` idea: the net's part of the estimator's parameters, by name)."""

    max_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    optimizer_kwargs: dict | None
    lr_scheduler: str | None
    lr_scheduler_kwargs: dict | None
    freeze_epochs: int
    finetune_lr: float | None
    early_stopping: bool
    patience: int
    min_delta: float
    num_workers: int
    verbose: int
    callbacks: list | None

    @classmethod
    def from_params(cls, params: dict) -> TrainingConfig:
        return cls(**{f.name: params[f.name] for f in fields(cls)})


# --------------------------------------------------------------------------- data


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


class PrefixDataset(torch.utils.data.Dataset):
    """Items ``({"h": frozen-prefix output, "sample_weight": w}, y)`` from cached outputs.

    ``h`` is ``(n, ...)``, or ``(views, n, ...)`` with ``random_view``: each item is then one
    view, drawn anew every time (``augment="views"`` from cached outputs).
    """

    def __init__(self, h: torch.Tensor, y: np.ndarray, weights: np.ndarray,
                 random_view: RandomView | None = None):
        self.h = h
        self.y = torch.as_tensor(y)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.random_view = random_view

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        if self.random_view is None:
            h = self.h[i]
        else:
            h = self.h[int(torch.randint(len(self.h), ())), i]
        return {"h": h, "sample_weight": self.weights[i]}, self.y[i]


def collate_training(items):
    xs, ys = zip(*items)
    batch = {k: torch.stack([d[k] for d in xs]) for k in xs[0] if k != "x"}
    if "x" in xs[0]:  # images: uint8 stays uint8 (4x less to move between processes)
        batch["x"] = collate_images([d["x"] for d in xs])
    return batch, torch.stack(ys)


def training_datasets(net, source: ImageSource, rows, prep: Preprocessing,
                      execution: Execution, options: CallOptions, *, augment, weights: dict):
    """The training and validation datasets of a fit, and the prefix namespace if cached.

    Where the frozen prefix comes from the cache (:func:`skcxr._frozen.prefix_from_cache`:
    a fixed function of the image, no pixel augmentation, ``cache=True``), its outputs come
    from :mod:`skcxr._frozen` (computed once per image and cut point) and the network trains
    from them; with ``augment="views"`` (a :class:`RandomView`) once per image, cut point and
    view, and each epoch draws one view per training row. Otherwise the datasets decode
    images (through the decoded-image cache when ``cache``) and the whole network runs every
    epoch.

    Returns
    -------
    train_ds, valid_ds (None without validation rows), namespace (None when not cached)
    """
    views = isinstance(augment, RandomView)
    if prefix_from_cache(net, cache=options.cache, augment=augment):
        # each image once, also when a sampler repeated training rows
        fit_rows, position = np.unique(np.concatenate([rows.train, rows.valid]),
                                       return_inverse=True)

        def outputs(rows_, prep_):
            return prefix_part(net, prep_, weights).outputs(source.subset(rows_), execution,
                                                            options)

        h = outputs(fit_rows, prep)[position]
        n = len(rows.train)
        if views:  # every view of the training rows, each computed once and cached
            train_rows, train_position = np.unique(rows.train, return_inverse=True)
            h_train = torch.stack([
                h[:n] if view == "none" else
                outputs(train_rows, prep.with_view(view))[train_position]
                for view in augment.views])
        else:
            h_train = h[:n]
        datasets = [PrefixDataset(h_train, rows.y[rows.train], rows.weights[rows.train],
                                  augment if views else None),
                    PrefixDataset(h[n:], rows.y[rows.valid], rows.weights[rows.valid])]
        namespace = prefix_part(net, prep, weights).namespace(execution)
    else:
        datasets = []
        for idx, aug in ((rows.train, augment), (rows.valid, None)):
            src = source.subset(idx)
            decoded = DecodedImages(src, prep, options.location) if options.cache else None
            datasets.append(TrainingDataset(src, prep, rows.y[idx], rows.weights[idx], aug,
                                            decoded))
        namespace = None
    train_ds, valid_ds = datasets
    return train_ds, (valid_ds if len(rows.valid) else None), namespace


@contextlib.contextmanager
def prefix_engine(net, prep: Preprocessing, weights: dict, execution: Execution,
                  options: CallOptions):
    """While training from pixels (pixel augmentation), let the execution's engine compute
    the frozen prefix of each batch when it is faster than torch's eager forward.

    The prefix is a fixed function of the pixels (eval mode, frozen weights), so OpenVINO
    can run it compiled, as it does for cached prefixes; only the trainable suffix and the
    head need autograd. Measured on 2 cores (lite0, c=16, bf16): the prefix is ~60% of an
    augmented epoch in torch (99 img/s), ~3x faster compiled. Outputs agree with torch's
    to bf16 rounding (fp32: to float rounding). Removed on leaving, so the fitted module
    holds no engine.
    """
    use = execution.engine == "openvino" and net.prefix_is_fixed
    if use:
        part = prefix_part(net, prep, weights)
        quiet = dataclasses.replace(options, verbose=0)
        # converted and compiled here, before the training loop (which holds the RNG lock
        # and whose network is mid-epoch), for the 8-bit batches a loader yields
        part.run_batch(torch.zeros((1, prep.in_chans, *prep.size), dtype=torch.uint8),
                       execution, quiet)
        net.prefix_engine = lambda x: part.run_batch(x, execution, quiet)
    try:
        yield use
    finally:
        net.prefix_engine = None


# --------------------------------------------------------------------------- the net


def masked_label_loss(criterion, logits, y, w=1.0):
    """Multi-label loss over the observed labels only: ``sum(w_i * l_ij) / n_observed``
    over the labels that are not NaN (with every label observed: the mean over rows and
    labels). A missing label adds nothing to the loss and gets no gradient; a batch
    without an observed label has loss 0."""
    observed = ~torch.isnan(y)
    per_label = criterion(logits, torch.where(observed, y, torch.zeros_like(y)))
    w = torch.as_tensor(w, dtype=per_label.dtype, device=per_label.device)
    weighted = torch.where(observed, per_label * (w[:, None] if w.ndim else w), 0.0)
    return weighted.sum() / observed.sum().clamp(min=1)


class WeightedNet(NeuralNet):
    """skorch NeuralNet whose loss is the sample-weighted mean of a per-sample criterion.

    Only the head and the backbone layers planned to train are given to the optimizer, so no
    optimizer state is ever allocated for frozen layers.
    """

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = y_true.to(y_pred.device)
        w = X["sample_weight"].to(y_pred.device) if isinstance(X, dict) else 1.0
        if y_true.ndim > 1:  # multi-label: a missing label (NaN) is left out
            return masked_label_loss(self.criterion_, y_pred, y_true, w)
        return (self.criterion_(y_pred, y_true) * w).mean()

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # skorch stops early by raising KeyboardInterrupt, and its partial_fit swallows every
        # KeyboardInterrupt, so a Ctrl-C would return a half-trained net that fit then keeps:
        # let early stopping's own stop through, smuggle a real interrupt past partial_fit
        # (see :func:`train`)
        if epochs is None:  # a resumed fit (EpochCheckpoint) runs the epochs it has left
            epochs = self.max_epochs - len(self.history)
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt as exc:
            stopper = find_callback(self, PhasedEarlyStopping)
            if stopper is not None and stopper.stopped_:
                raise
            raise _Interrupted from exc

    def _set_training(self, training=True):
        # skorch sets the mode before every batch, and CXRNet.train walks the whole backbone
        # (~5 ms for lite0: as long as a head-only training step on cached prefixes). Only
        # skorch changes the mode during a fit (Unfreeze re-applies the current one), so a
        # call that would set the mode already set is skipped.
        if self.__dict__.get("_training_mode") is training:
            return
        super()._set_training(training)
        self._training_mode = training

    def initialize_module(self):
        self.__dict__.pop("_training_mode", None)  # a new module has its own mode
        return super().initialize_module()

    # skorch's NeuralNet predicts the module's raw output (logits); as a classifier net does,
    # predict probabilities and class indices, so a user's EpochScoring (``callbacks``) with
    # a predict-based scorer ("accuracy", "f1", "balanced_accuracy") or a callable works
    def predict_proba(self, X):
        logits = torch.as_tensor(super().predict_proba(X))
        if isinstance(self.criterion_, nn.BCEWithLogitsLoss):  # multi-label
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        proba = self.predict_proba(X)
        if isinstance(self.criterion_, nn.BCEWithLogitsLoss):
            return (proba >= 0.5).astype(np.int64)
        return proba.argmax(axis=1)

    def get_all_learnable_params(self):
        module = self.module_
        planned = set(module.planned_layers)
        for name, p in module.named_parameters():
            if name.startswith("head."):
                yield name, p
            elif name.startswith("backbone."):
                owner = name[len("backbone."):].rpartition(".")[0]
                if owner in planned:
                    yield name, p



class _Interrupted(Exception):
    """A KeyboardInterrupt on its way through skorch (which would swallow the original)."""


def train(net: WeightedNet, train_ds, checkpoints: FitCheckpoints | None = None) -> int:
    """``net.fit(train_ds)``; an interrupt (Ctrl-C) stops it and propagates as itself.

    With ``checkpoints`` (the ``memory=`` directory): a fit that finished before is not
    trained again (the net gets its network and history), one that was interrupted resumes
    from its last completed epoch (:class:`EpochCheckpoint`, which :func:`make_net`
    adds), and a finished one is recorded.

    Returns the epoch whose weights the net ends with (:func:`kept_epoch`).
    """
    done = checkpoints.finished() if checkpoints is not None else None
    if done is not None:
        net.initialize()
        restore_module(net.module_, done)
        net.history = History(json.loads(done["history"]))
        return int(done["kept_epoch"])
    try:
        with heap_for_tensors():  # a step reuses the pages of the last: skcxr._allocator
            net.fit(train_ds, y=None)
    except _Interrupted:
        raise KeyboardInterrupt from None
    kept = kept_epoch(net)
    if checkpoints is not None:
        checkpoints.save_finished(net.module_, net.history, kept)
    return kept


def drops_last(n: int, batch_size: int) -> bool:
    """Whether an epoch drops its last batch: a last batch of one row breaks BatchNorm in
    training mode."""
    return n > batch_size and n % batch_size == 1


def batches_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if drops_last(n, batch_size) else -(-n // batch_size)


def make_net(module, train_ds, valid_ds, *, task: str, pos_weight, device: torch.device,
             config: TrainingConfig, checkpoints: FitCheckpoints | None = None) -> WeightedNet:
    """A skorch net that trains ``module`` as the classifier's parameters (``config``) say.

    Callbacks: :class:`Unfreeze` (the backbone layers join after ``freeze_epochs``),
    :class:`EpochRecord` (validation metrics, learning rates), EarlyStopping on the inner
    validation loss with best-weights restore, the LR scheduler, a progress bar at
    ``verbose > 1``, :class:`EpochCheckpoint` with ``checkpoints``, then
    copies of the user's ``callbacks``.
    """
    c = config
    max_epochs, batch_size, verbose = int(c.max_epochs), int(c.batch_size), int(c.verbose)
    lr_scheduler, optimizer = c.lr_scheduler, c.optimizer
    callbacks = [("unfreeze", Unfreeze(int(c.freeze_epochs))), ("record", EpochRecord(task)),
                 ("finite_loss", FiniteLoss())]
    if c.early_stopping and valid_ds is not None:
        callbacks.append(("early_stopping", PhasedEarlyStopping(
            monitor="valid_loss", patience=int(c.patience), threshold=float(c.min_delta),
            threshold_mode="abs", load_best=True, sink=noop)))
    if lr_scheduler is not None:
        kwargs = {**SCHEDULER_DEFAULTS[lr_scheduler],
                  **({"T_max": int(max_epochs)} if lr_scheduler == "cosine" else {}),
                  **({"total_steps": int(max_epochs) * batches_per_epoch(len(train_ds),
                                                                        batch_size),
                      "step_every": "batch"} if lr_scheduler in BATCH_SCHEDULERS else {}),
                  **(c.lr_scheduler_kwargs or {})}
        if lr_scheduler == "plateau":
            kwargs.setdefault("monitor", "valid_loss")
        callbacks.append(("lr_scheduler", LRScheduler(SCHEDULER_CLASSES[lr_scheduler],
                                                      **kwargs)))
    if verbose > 1:
        callbacks.append(("progress_bar", ProgressBar()))
    if checkpoints is not None:  # after the callbacks whose state it saves and restores
        callbacks.append(("checkpoint", EpochCheckpoint(checkpoints)))
    # the user's, as copies: the objects given are never changed
    callbacks += [(name, copy.deepcopy(cb)) for name, cb in named_callbacks(c.callbacks)]
    opt_kwargs = {**OPTIMIZER_DEFAULTS.get(optimizer, {}), **(c.optimizer_kwargs or {})}
    if c.finetune_lr is not None:
        opt_kwargs["param_groups"] = [("backbone.*", {"lr": float(c.finetune_lr)})]
    loader_kwargs = dict(num_workers=int(c.num_workers), collate_fn=collate_training,
                         pin_memory=device.type == "cuda")
    pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32) if pos_weight is not None \
        else None
    return WeightedNet(
        module=module,
        criterion=(nn.BCEWithLogitsLoss(reduction="none", pos_weight=pos_weight)
                   if task == "multilabel" else nn.CrossEntropyLoss(reduction="none")),
        optimizer=OPTIMIZER_CLASSES[optimizer],
        lr=float(c.lr),
        max_epochs=max_epochs,
        batch_size=batch_size,
        train_split=predefined_split(valid_ds) if valid_ds is not None else None,
        callbacks=callbacks,
        device=str(device),
        iterator_train__shuffle=True,
        iterator_train__drop_last=drops_last(len(train_ds), batch_size),
        **{f"iterator_train__{k}": v for k, v in loader_kwargs.items()},
        **{f"iterator_valid__{k}": v for k, v in loader_kwargs.items()},
        **{f"optimizer__{k}": v for k, v in opt_kwargs.items()},
        verbose=verbose,
    )


def lr_sweep(net: WeightedNet, train_ds, lrs, *, unfreeze: bool,
             diverge: float = 4.0) -> list[float]:
    """The learning-rate finder's sweep: one training step per rate of ``lrs`` on the
    training batches (epoch after epoch as needed), each parameter group's rate scaled as
    the head's (so ``finetune_lr`` keeps its ratio); stops once the smoothed loss exceeds
    ``diverge`` times its minimum, or is not finite. ``unfreeze``: the backbone layers train
    from the first step (``freeze_epochs=0``), else the head alone.

    Returns the loss of each step taken.
    """
    from ._lr_find import smooth_losses

    net.initialize()
    if unfreeze and net.module_.planned_layers:
        net.module_.unfreeze()
    groups = net.optimizer_.param_groups
    base = [float(g["lr"]) for g in groups]
    losses: list[float] = []
    with heap_for_tensors():  # a step reuses the pages of the last: skcxr._allocator
        while len(losses) < len(lrs):
            for batch in net.get_iterator(train_ds, training=True):
                factor = float(lrs[len(losses)]) / float(net.lr)
                for group, lr in zip(groups, base):
                    group["lr"] = lr * factor
                losses.append(net.train_step(batch)["loss"].item())
                smoothed = smooth_losses(losses)
                if (not np.isfinite(losses[-1]) or smoothed[-1] > diverge * smoothed.min()
                        or len(losses) == len(lrs)):
                    return losses[:-1] if not np.isfinite(losses[-1]) else losses
    return losses


def history_frame(net: NeuralNet) -> pd.DataFrame:
    """The net's history, one row per epoch, without skorch's per-batch and ``*_best`` columns."""
    history = pd.DataFrame(list(net.history)).drop(
        columns=["batches", "train_batch_count", "valid_batch_count"], errors="ignore")
    return history.drop(columns=[c for c in history if c.endswith("_best")])


def kept_epoch(net: NeuralNet) -> int:
    """The epoch whose weights the net ends with.

    With early stopping: the epoch EarlyStopping restored, the last one that improved the
    validation loss by more than ``min_delta`` (which need not be the lowest validation
    loss). Without: the last epoch.
    """
    stopper = find_callback(net, EarlyStopping)
    return int(stopper.best_epoch_) if stopper is not None else len(net.history)

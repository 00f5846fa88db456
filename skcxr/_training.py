"""Everything skorch: the training data, the weighted loss, callbacks, the net and its history.

``PretrainedCNNClassifier.fit`` asks this module for the datasets of a fit
(:func:`training_datasets`), a configured skorch net (:func:`make_net`), the training
(:func:`train`) and, after it, the history and the epoch whose weights were kept
(:func:`history_frame`, :func:`kept_epoch`). No other module imports skorch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, LRScheduler, ProgressBar
from skorch.helper import predefined_split
from skorch.history import History
from skorch.utils import noop
from torch import nn

from ._augment import RandomView
from ._frozen import prefix_from_cache, prefix_part
from ._preprocessing import Preprocessing
from ._resume import FitCheckpoints, history_json, restore_module
from ._runtime import CallOptions, Execution
from ._state import get_config
from .cache import DecodedImages
from .images import ImageDataset, ImageSource, collate_images

#: ``optimizer`` -> class, and the defaults skcxr adds to ``optimizer_kwargs``.
OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                     "sgd": torch.optim.SGD}
OPTIMIZER_DEFAULTS = {"sgd": {"momentum": 0.9}}
#: ``lr_scheduler`` -> torch scheduler, and the defaults skcxr adds to
#: ``lr_scheduler_kwargs`` (``T_max`` of "cosine" is ``max_epochs``).
class LRShape:
    """A learning-rate schedule over a fit's batches, as the factor of each parameter
    group's ``lr`` at step ``t`` (for ``LambdaLR``; an object, not a function, so the
    scheduler's ``state_dict`` keeps it as data and a resumed fit continues it).

    ``"onecycle"`` (fastai's ``fit_one_cycle``, Smith 2018): from ``1/div`` up to 1 over
    the first ``pct_start`` of the steps, then down to ``1/div_final``, both halves cosine.
    ``"cosine_warmup"``: linear from ``1/warmup_steps`` up to 1 over the first ``warmup``
    of the steps, then cosine down to 0.
    """

    def __init__(self, kind: str, total_steps: int, *, pct_start: float = 0.25,
                 div: float = 25.0, div_final: float = 1e5, warmup: float = 0.05):
        self.kind, self.total_steps = kind, max(1, int(total_steps))
        self.pct_start, self.div, self.div_final = float(pct_start), float(div), float(div_final)
        self.warmup = float(warmup)

    def __call__(self, step: int) -> float:
        last = max(1, self.total_steps - 1)
        if self.kind == "onecycle":
            up = max(1, round(self.pct_start * last))
            if step < up:
                return _cosine(1 / self.div, 1.0, step / up)
            return _cosine(1.0, 1 / self.div_final, min(1.0, (step - up) / max(1, last - up)))
        warm = max(1, round(self.warmup * self.total_steps))
        if step < warm:
            return (step + 1) / warm
        return _cosine(1.0, 0.0, min(1.0, (step - warm) / max(1, last - warm)))


def _cosine(start: float, end: float, p: float) -> float:
    return float(end + (start - end) * (1 + np.cos(np.pi * p)) / 2)


def one_cycle(optimizer, total_steps, pct_start=0.25, div=25.0, div_final=1e5, last_epoch=-1):
    """``lr_scheduler="onecycle"``: :class:`LRShape` ``"onecycle"``, stepped every batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRShape(
        "onecycle", total_steps, pct_start=pct_start, div=div, div_final=div_final),
        last_epoch=last_epoch)


def cosine_warmup(optimizer, total_steps, warmup=0.05, last_epoch=-1):
    """``lr_scheduler="cosine_warmup"``: :class:`LRShape` ``"cosine_warmup"``, stepped every
    batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRShape("cosine_warmup", total_steps,
                                                                warmup=warmup),
                                             last_epoch=last_epoch)


SCHEDULER_CLASSES = {"step": torch.optim.lr_scheduler.StepLR,
                     "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
                     "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
                     "onecycle": one_cycle, "cosine_warmup": cosine_warmup}
SCHEDULER_DEFAULTS = {"step": {"step_size": 10, "gamma": 0.1}, "cosine": {},
                      "plateau": {"patience": 1}, "onecycle": {}, "cosine_warmup": {}}
#: schedules over batches (``total_steps``: ``max_epochs`` times the batches of an epoch)
BATCH_SCHEDULERS = ("onecycle", "cosine_warmup")

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
            stopper = _callback(self, _EarlyStopping)
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


class FiniteLoss(Callback):
    """Stop the fit with an error as soon as a training or validation loss is NaN or infinite
    (otherwise the weights turn NaN and every prediction is class 0)."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is not None and not torch.isfinite(loss).all():
            epoch = len(net.history)
            which = "training" if training else "validation"
            raise FloatingPointError(
                f"The {which} loss became {float(loss)} in epoch {epoch} (batch "
                f"{len(net.history[-1].get('batches', [])) or 1}). "
                f"Likely causes: a learning rate too high (lr={net.lr}; try 10x lower), NaN "
                "or infinite weights, or inputs. The estimator keeps its state from before "
                "this fit."
            )


class _EarlyStopping(EarlyStopping):
    """skorch's EarlyStopping, noting when it is the one that stops training."""

    def on_train_begin(self, net, **kwargs):
        self.stopped_ = False
        super().on_train_begin(net, **kwargs)

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:  # skorch's way of stopping a fit early
            module = net.module_
            if not module.backbone_unfrozen and module.planned_layers:
                # the head-only phase has converged: that is the cue to unfreeze, not to
                # stop; phase two starts from the best head, with its own patience
                if self.load_best and self.best_model_weights_ is not None:
                    module.load_state_dict(self.best_model_weights_)
                Unfreeze.unfreeze_now(net)
                return
            self.stopped_ = True
            raise


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
        net.fit(train_ds, y=None)
    except _Interrupted:
        raise KeyboardInterrupt from None
    kept = kept_epoch(net)
    if checkpoints is not None:
        checkpoints.save_finished(net.module_, net.history, kept)
    return kept


#: callback names skcxr's nets use (skorch's defaults and skcxr's own): a user's callback
#: may not take one (skorch would refuse the duplicate only once the fit has begun)
RESERVED_CALLBACK_NAMES = ("epoch_timer", "train_loss", "valid_loss", "print_log", "unfreeze",
                           "record", "finite_loss", "early_stopping", "lr_scheduler",
                           "progress_bar", "checkpoint")


def _named_callbacks(value) -> list[tuple[str, Callback]]:
    """The ``callbacks`` parameter as ``(name, callback)`` pairs; unnamed ones are called
    ``user_{k}_{Type}``."""
    return [item if isinstance(item, tuple) else (f"user_{k}_{type(item).__name__}", item)
            for k, item in enumerate(value or ())]


def is_callback_list(value) -> bool:
    """Whether ``value`` is a list of skorch callbacks or ``(name, callback)`` pairs with
    unique names none of which is in :data:`RESERVED_CALLBACK_NAMES` (the ``callbacks``
    parameter)."""
    def one(item):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            item = item[1]
        return isinstance(item, Callback)
    if not (isinstance(value, (list, tuple)) and all(one(v) for v in value)):
        return False
    names = [name for name, _ in _named_callbacks(value)]
    return len(set(names)) == len(names) and not set(names) & set(RESERVED_CALLBACK_NAMES)


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
        callbacks.append(("early_stopping", _EarlyStopping(
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
    callbacks += [(name, copy.deepcopy(cb)) for name, cb in _named_callbacks(c.callbacks)]
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
    stopper = _callback(net, EarlyStopping)
    return int(stopper.best_epoch_) if stopper is not None else len(net.history)


def _callback(net, kind):
    return next((cb for _, cb in net.callbacks_ if isinstance(cb, kind)), None)


# --------------------------------------------------------------------------- callbacks


class Unfreeze(Callback):
    """Unfreeze the planned backbone layers at the start of epoch ``freeze_epochs + 1``, or
    earlier when early stopping finds the head-only phase converged."""

    def __init__(self, freeze_epochs: int):
        self.freeze_epochs = freeze_epochs

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history)  # the current epoch's row is already appended
        if epoch > self.freeze_epochs and not net.module_.backbone_unfrozen:
            self.unfreeze_now(net)

    @staticmethod
    def unfreeze_now(net) -> None:
        """Unfreeze (after ``freeze_epochs``, or when early stopping ends the head phase)."""
        net.module_.unfreeze()
        early = _callback(net, EarlyStopping)
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
        net.history.record("n_trainable_layers", len(module.unfrozen_layers))
        if self.preds_:
            acc, auc = _scores(self.task, torch.cat(self.preds_), torch.cat(self.trues_))
            net.history.record("valid_acc", acc)
            net.history.record("valid_auc", auc)


def _scores(task: str, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    y = y.numpy()
    if task == "multilabel":  # over the observed labels (NaN: missing)
        proba = torch.sigmoid(logits).numpy()
        observed = ~np.isnan(y)
        acc = float(((proba >= 0.5) == (y >= 0.5))[observed].mean()) if observed.any() \
            else np.nan
        aucs = [roc_auc_score(y[observed[:, j], j], proba[observed[:, j], j])
                for j in range(y.shape[1])
                if 0 < np.nansum(y[:, j]) < observed[:, j].sum()]
        return acc, float(np.mean(aucs)) if aucs else np.nan
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


class EpochCheckpoint(Callback):
    """After an epoch that ends ``checkpoint_interval`` seconds (a setting, default 10) or
    more after the last save,
    save the fit's training state; at the start of training, restore
    the last one saved (placed after skcxr's other callbacks, whose state it restores)."""

    def __init__(self, checkpoints: FitCheckpoints):
        self.checkpoints = checkpoints

    def on_train_begin(self, net, **kwargs):
        self.resumed_epochs_ = 0
        self.last_save_ = time.monotonic()
        self.interval_ = get_config()["checkpoint_interval"]
        state = self.checkpoints.load()
        if state is None or state.get("finished"):
            return
        restore_module(net.module_, state)
        net.optimizer_.load_state_dict(state["optimizer"])
        net.history = History(json.loads(state["history"]))
        stopper = _callback(net, EarlyStopping)
        if stopper is not None and state.get("early_stopping") is not None:
            saved = state["early_stopping"]
            stopper.misses_ = int(saved["misses"])
            stopper.dynamic_threshold_ = float(saved["threshold"])
            stopper.best_epoch_ = int(saved["best_epoch"])
            if saved["best"] is not None:
                best = net.module_.state_dict()
                best = {k: v.clone() for k, v in best.items()}
                best.update(saved["best"])
                stopper.best_model_weights_ = best
        scheduler = _callback(net, LRScheduler)
        if scheduler is not None and state.get("lr_scheduler") is not None:
            scheduler.lr_scheduler_.load_state_dict(state["lr_scheduler"]["state"])
            scheduler.batch_idx_ = int(state["lr_scheduler"]["batch_idx"])
        torch.set_rng_state(state["rng"])  # the fit's own stream (RandomStream.drawing)
        cuda = state.get("cuda_rng") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            for d, rng in enumerate(cuda):
                torch.cuda.set_rng_state(rng, d)
        self.resumed_epochs_ = len(net.history)

    def on_epoch_end(self, net, **kwargs):
        if time.monotonic() - self.last_save_ < self.interval_:
            return
        module = net.module_
        trainable = self.checkpoints.trainable_state(module)
        stopper = _callback(net, EarlyStopping)
        scheduler = _callback(net, LRScheduler)
        early = None
        if stopper is not None:
            best = stopper.best_model_weights_
            early = {"misses": stopper.misses_, "threshold": float(stopper.dynamic_threshold_),
                     "best_epoch": int(stopper.best_epoch_),
                     "best": None if best is None else {k: best[k] for k in trainable}}
        self.checkpoints.save({
            "finished": False,
            "module": trainable,
            "unfrozen": bool(module.backbone_unfrozen),
            "optimizer": net.optimizer_.state_dict(),
            "history": history_json(net.history),
            "early_stopping": early,
            "lr_scheduler": None if scheduler is None else {
                "state": scheduler.lr_scheduler_.state_dict(),
                "batch_idx": int(scheduler.batch_idx_)},
            "rng": torch.get_rng_state(),
            "cuda_rng": ([torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())]
                         if torch.cuda.is_available() else []),
        })
        self.last_save_ = time.monotonic()

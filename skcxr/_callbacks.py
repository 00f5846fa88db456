"""skcxr's skorch callbacks, and the user's ``callbacks`` parameter.

:func:`skcxr._training.make_net` puts them on every net: :class:`Unfreeze` (the backbone
layers join after ``freeze_epochs``), :class:`EpochRecord` (validation metrics, learning
rates), :class:`FiniteLoss`, early stopping that unfreezes before it stops, and
:class:`EpochCheckpoint` (resumable fits); then copies of the user's callbacks, whose
names may not be one of :data:`RESERVED_CALLBACK_NAMES`. With :mod:`skcxr._training`, the
only module that imports skorch.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.history import History

from ._resume import FitCheckpoints, history_json, restore_module
from ._state import get_config

#: callback names skcxr's nets use (skorch's defaults and skcxr's own): a user's callback
#: may not take one (skorch would refuse the duplicate only once the fit has begun)
RESERVED_CALLBACK_NAMES = ("epoch_timer", "train_loss", "valid_loss", "print_log", "unfreeze",
                           "record", "finite_loss", "early_stopping", "lr_scheduler",
                           "progress_bar", "checkpoint")


def named_callbacks(value) -> list[tuple[str, Callback]]:
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
    names = [name for name, _ in named_callbacks(value)]
    return len(set(names)) == len(names) and not set(names) & set(RESERVED_CALLBACK_NAMES)


def find_callback(net, kind):
    """The net's first callback of type ``kind``, or None."""
    return next((cb for _, cb in net.callbacks_ if isinstance(cb, kind)), None)


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


class PhasedEarlyStopping(EarlyStopping):
    """skorch's EarlyStopping for a fit in two phases: when the head-only phase converges
    it unfreezes the backbone layers (from the best head, with a fresh patience) rather
    than stop; it notes when it is the one that stops training (``stopped_``)."""

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
        early = find_callback(net, EarlyStopping)
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
        stopper = find_callback(net, EarlyStopping)
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
        scheduler = find_callback(net, LRScheduler)
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
        stopper = find_callback(net, EarlyStopping)
        scheduler = find_callback(net, LRScheduler)
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

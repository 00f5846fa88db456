"""PretrainedCNNClassifier: fine-tune a pretrained CNN's last c layers as a sklearn classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from . import _openvino, _runtime
from ._training import (
    ActivationDataset,
    EpochRecord,
    TrainingDataset,
    Unfreeze,
    WeightedNet,
    collate_training,
    make_criterion,
)
from .augment import make_augment
from .backbones import DEFAULT_BACKBONE, load_backbone
from .cache import DecodedImages, cached_rows, resolve_location
from .images import check_images, make_loader, make_preprocessing
from .layers import (
    BATCHNORM_POLICIES,
    cut_index,
    parameterised_layers,
    select_trainable,
    sequential_chain,
)
from .network import CXRNet, make_head
from .protocol import check_sample_weight, class_weights, encode_targets, split_rows

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("step", "cosine", "plateau")


class PretrainedCNNClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained CNN on chest X-rays, as a scikit-learn classifier.

    The backbone's last ``n_trainable_layers`` parameterised layers (the studies' *c*) and a
    new dense head train on a stratified subsample of ``train_size`` rows (the studies' *s*)
    of the data ``fit`` receives. Everything that learns from data (the subsample, the inner
    validation split used for early stopping and checkpoint selection, class weights) is
    computed inside ``fit`` from the rows it is given, so ``cross_val_score`` and
    ``GridSearchCV`` give honest estimates: the outer validation fold is never seen.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="tf_efficientnet_lite0"
        timm or torchvision model name, or a module (see :func:`skcxr.load_backbone`).
    weights : {"imagenet"}, None or path, default="imagenet"
        Pretrained weights, random initialisation (None) or a checkpoint file.
    image_size : int, (int, int) or None, default=None
        Input size; None uses the backbone's data config.
    in_chans, resize, normalize :
        Preprocessing, as in :class:`skcxr.FeatureExtractorTransformer`.
    n_trainable_layers : int, "all" or str, default=0
        The studies' *c*: how many of the backbone's last parameterised layers (counted in
        forward order over layers that own parameters) train. ``0`` trains the head only,
        ``-1`` or ``"all"`` every layer; a module name (``"blocks.5"``, ``"layer4"``,
        ``"features.denseblock4"``) trains from that module on. The head always trains.
    train_size : int, float or None, default=None
        The studies' *s*: None uses every row; an int that many rows; a float in (0, 1] that
        fraction. Drawn stratified, seeded by ``random_state``, inside ``fit``; the inner
        validation split is carved from it.
    class_weight : None, "balanced" or dict, default=None
        Loss weights per class, computed from the training rows only (after the subsample
        and the validation split). Multi-label: per-label positive weights
        (``n_negative / n_positive`` for "balanced").
    head_hidden_units : tuple of int, default=()
        Hidden dense layers of the head (study 000: ``(1028,)``; study 003: ``(512, 512)``).
    dropout : float, default=0.0
        Dropout before each dense layer of the head (study 001: 0.4).
    max_epochs : int, default=10
    batch_size : int, default=32
    lr : float, default=1e-3
        Learning rate of the head (and of the backbone layers unless ``finetune_lr``).
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
    optimizer_kwargs : dict or None, default=None
        E.g. ``{"momentum": 0.9, "nesterov": True}`` for SGD (study 000; "sgd" defaults to
        momentum 0.9), ``{"weight_decay": 1e-4}``.
    lr_scheduler : {None, "step", "cosine", "plateau"}, default=None
        StepLR (study 003: every 10 epochs), cosine annealing over ``max_epochs``, or
        ReduceLROnPlateau on the validation loss.
    lr_scheduler_kwargs : dict or None, default=None
        E.g. ``{"step_size": 10, "gamma": 0.1}``.
    freeze_epochs : int, default=0
        Epochs that train the head alone before the backbone layers unfreeze (study 000's
        phase 1, study 003's saturation threshold).
    finetune_lr : float or None, default=None
        Learning rate of the backbone layers once unfrozen (study 000: ``lr / 100``).
    batchnorm : {"frozen", "eval", "train"}, default="frozen"
        BatchNorm policy. "frozen": BN layers that do not train stay in eval mode (their
        running statistics never change), re-applied after every ``.train()`` call.
        "eval": every BN layer stays in eval mode with fixed affine parameters, even in
        unfrozen layers (study 000). "train": BN statistics update everywhere (the plain
        ``requires_grad=False`` behaviour, for comparison).
    validation_fraction : float, default=0.1
        Stratified fraction of the (subsampled) training rows held out for early stopping and
        best-checkpoint selection; 0 trains on everything for ``max_epochs``.
    early_stopping : bool, default=True
        Stop when the validation loss has not improved by ``min_delta`` for ``patience``
        epochs, and restore the best-validation-loss weights at the end.
    patience : int, default=3
    min_delta : float, default=1e-3
    augment : None, {"flip", "standard", "crop"} or callable, default=None
        Training-time augmentation (see :func:`skcxr.augment.make_augment`).
    cache : bool, default=True
        Compute the frozen prefix of the backbone (every layer before the first trainable
        one) once per image and train the rest on its cached output, in memory shared by
        all clones (see :mod:`skcxr.cache`). Used only where it is exact: without
        augmentation (whose random views change the prefix output every epoch), with a
        ``batchnorm`` policy other than "train", and for backbones that split into a chain of
        modules (timm models do; see :func:`skcxr.layers.sequential_chain`). Otherwise
        every epoch runs the whole network on true on-the-fly augmentation, and the cache
        keeps decoded, resized images instead (:class:`skcxr.cache.DecodedImages`), so each
        file is decoded once rather than once per epoch, fold and grid point.
        ``cache=False`` turns both off.
    memory : str, path, joblib.Memory or None, default=None
        Directory for an on-disk copy of the cache, shared by joblib worker processes
        (``GridSearchCV(n_jobs=...)``) and later sessions.
    engine : {"auto", "torch", "openvino"}, default="auto"
        What computes the cached frozen prefix: "openvino" compiles it with OpenVINO (CPU;
        ``pip install "skcxr[openvino]"``; 2-3x faster than eager torch on CPUs with
        AVX-512 BF16), "auto" uses it when installed and the device is the CPU. Training
        always runs in torch. With "torch", a cached fit equals an uncached one; with
        "openvino" it agrees to bf16 rounding.
    device : {"auto", "cpu", "cuda"}, default="auto"
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
    num_workers : int, default=0
        DataLoader worker processes decoding images.
    random_state : int or None, default=None
        Seeds weight initialisation, subsampling, splits, shuffling, dropout and
        augmentation. With an int, two CPU fits give identical predictions.
    verbose : int, default=0
        1 prints skorch's per-epoch table; 2 adds progress bars.

    Attributes
    ----------
    classes_ : ndarray
        Class labels (multi-label: ``arange(n_labels)``).
    target_type_ : {"binary", "multiclass", "multilabel"}
    module_ : skcxr.network.CXRNet
        The trained network on the CPU, in eval mode.
    history_ : pandas.DataFrame
        Per epoch: train_loss, valid_loss, valid_acc, valid_auc, lr, backbone_lr,
        n_trainable_layers, dur.
    best_epoch_ : int
        Epoch whose weights were kept (lowest validation loss; the last epoch without
        validation).
    trainable_layers_ : list of str
        Backbone layers that trained.
    n_trainable_params_ : int
        Parameters that trained (head + trainable layers).
    class_weight_ : ndarray or None
        Weights used in the loss, computed on the training rows.
    n_train_samples_, n_valid_samples_ : int
        Rows trained on and rows of the inner validation split.
    provenance_ : dict
        Backbone and weights provenance.
    prefix_namespace_ : dict or None
        What keys the cached frozen-prefix outputs (None when the cache was not used).

    Examples
    --------
    >>> import numpy as np
    >>> from skcxr import PretrainedCNNClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 255, size=(16, 32, 32), dtype=np.uint8)
    >>> y = np.array([0, 1] * 8)
    >>> clf = PretrainedCNNClassifier("test_efficientnet", weights=None, image_size=32,
    ...                               n_trainable_layers=2, max_epochs=2, random_state=0)
    >>> clf.fit(X, y).predict_proba(X).shape
    (16, 2)
    """

    def __init__(
        self,
        backbone=DEFAULT_BACKBONE,
        *,
        weights="imagenet",
        image_size=None,
        in_chans=3,
        resize="stretch",
        normalize="backbone",
        n_trainable_layers=0,
        train_size=None,
        class_weight=None,
        head_hidden_units=(),
        dropout=0.0,
        max_epochs=10,
        batch_size=32,
        lr=1e-3,
        optimizer="adam",
        optimizer_kwargs=None,
        lr_scheduler=None,
        lr_scheduler_kwargs=None,
        freeze_epochs=0,
        finetune_lr=None,
        batchnorm="frozen",
        validation_fraction=0.1,
        early_stopping=True,
        patience=3,
        min_delta=1e-3,
        augment=None,
        cache=True,
        memory=None,
        engine="auto",
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.in_chans = in_chans
        self.resize = resize
        self.normalize = normalize
        self.n_trainable_layers = n_trainable_layers
        self.train_size = train_size
        self.class_weight = class_weight
        self.head_hidden_units = head_hidden_units
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.optimizer_kwargs = optimizer_kwargs
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_kwargs = lr_scheduler_kwargs
        self.freeze_epochs = freeze_epochs
        self.finetune_lr = finetune_lr
        self.batchnorm = batchnorm
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.min_delta = min_delta
        self.augment = augment
        self.cache = cache
        self.memory = memory
        self.engine = engine
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit

    def fit(self, X, y, sample_weight=None):
        """Fine-tune on images ``X`` with targets ``y``.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels (binary, multiclass, strings) or a 0/1 indicator matrix
            (multi-label).
        sample_weight : array-like of shape (n_samples,), default=None
            Per-row loss weights (multiplied with the class weights).

        Returns
        -------
        self : PretrainedCNNClassifier
        """
        self._check_params()
        source = check_images(X)
        y_enc, task = self._encode_targets(y, len(source))
        sample_weight = check_sample_weight(sample_weight, len(source))
        seed = _seed(self.random_state)
        train_idx, valid_idx = self._split(y_enc, task, seed)
        device = _runtime.resolve_device(self.device)
        precision = _runtime.resolve_precision(self.precision, device)

        bb = load_backbone(self.backbone, self.weights, in_chans=self.in_chans,
                           random_state=seed)
        prep = make_preprocessing(bb.data_config, image_size=self.image_size,
                                  in_chans=self.in_chans, resize=self.resize,
                                  normalize=self.normalize)
        probe = torch.rand(1, self.in_chans, *prep.size,
                           generator=torch.Generator().manual_seed(0))
        layers = parameterised_layers(bb.module, probe)
        trainable = select_trainable(layers, self.n_trainable_layers)
        augment = make_augment(self.augment, prep.size)
        class_w = self._class_weights(y_enc[train_idx], task)
        chain = sequential_chain(bb.module, prep.normalize(probe))
        cut = cut_index(chain, trainable) if chain is not None else None
        # the prefix output is a fixed function of the image only without augmentation and
        # with the prefix's BatchNorm statistics frozen
        use_cache = bool(self.cache) and bool(cut) and augment is None \
            and self.batchnorm != "train"

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            n_out = y_enc.shape[1] if task == "multilabel" else len(self.classes_)
            head = make_head(bb.num_features, n_out, tuple(self.head_hidden_units),
                             float(self.dropout))
            module = CXRNet(bb.module, head, prep.mean, prep.std, trainable,
                            batchnorm=self.batchnorm, precision=precision,
                            chain_names=[n for n, _ in chain] if chain else None, cut=cut)
            if self.freeze_epochs == 0:
                module.unfreeze()
            weights = sample_weight.copy()
            if class_w is not None and task != "multilabel":
                weights *= class_w[y_enc]
            self.prefix_namespace_ = (
                self._prefix_namespace(bb, prep, precision, device, module) if use_cache else None
            )
            if use_cache:
                rows = np.concatenate([train_idx, valid_idx])
                acts = self._prefix_outputs(module, source, rows, prep, device)
                module.input_is_prefix = True
                train_ds = ActivationDataset(acts[:len(train_idx)], y_enc[train_idx],
                                             weights[train_idx])
                valid_ds = (ActivationDataset(acts[len(train_idx):], y_enc[valid_idx],
                                              weights[valid_idx]) if len(valid_idx) else None)
            else:
                train_src, valid_src = source.subset(train_idx), source.subset(valid_idx)
                train_ds = TrainingDataset(train_src, prep, y_enc[train_idx],
                                           weights[train_idx], augment,
                                           self._decoded(train_src, prep))
                valid_ds = (TrainingDataset(valid_src, prep, y_enc[valid_idx],
                                            weights[valid_idx],
                                            decoded=self._decoded(valid_src, prep))
                            if len(valid_idx) else None)
            pos_weight = (torch.as_tensor(class_w, dtype=torch.float32)
                          if class_w is not None and task == "multilabel" else None)
            net = self._make_net(module, task, train_ds, valid_ds, pos_weight, device)
            net.fit(train_ds, y=None)
            module.input_is_prefix = False

        self._finish(net, module, trainable, bb, prep, device, precision, class_w,
                     has_valid=valid_ds is not None)
        self.n_train_samples_, self.n_valid_samples_ = len(train_idx), len(valid_idx)
        return self

    def _decoded(self, source, prep) -> DecodedImages | None:
        """The decoded-image cache for the uncached path (every epoch reads every image)."""
        if not self.cache:
            return None
        return DecodedImages(source, prep, resolve_location(self.memory))

    def _prefix_namespace(self, bb, prep, precision, device, module) -> dict:
        return {
            "kind": "frozen-prefix",
            "backbone": bb.provenance.get("backbone"),
            "state_sha256": bb.provenance["state_sha256"],
            "preprocessing": repr(prep),
            "precision": precision,
            "device_type": device.type,
            "cut": module.chain_names[:module.cut],
            "dtype": str(module.prefix_dtype).replace("torch.", ""),
            "engine": _runtime.resolve_engine(self.engine, device),
        }

    def _prefix_outputs(self, module, source, rows, prep, device) -> torch.Tensor:
        """Frozen-prefix outputs of ``source[rows]``, computed once per image and cut point."""
        keys = source.keys()
        namespace = self.prefix_namespace_
        if namespace["engine"] == "openvino" and not _openvino.available():
            namespace = {**namespace, "engine": "torch"}  # e.g. unpickled elsewhere

        def compute(missing):
            loader = make_loader(source.subset(rows[missing]), prep, batch_size=self.batch_size,
                                 num_workers=self.num_workers,
                                 pin_memory=device.type == "cuda")
            if namespace["engine"] == "openvino":
                return self._prefix_openvino(module, loader, prep, namespace, len(missing))
            was_training = module.training
            module.to(device).eval()
            with torch.inference_mode():
                out = torch.cat([module.prefix(b.to(device, non_blocking=True)).cpu()
                                 for b in loader])
            module.train(was_training)
            return out

        return torch.stack(cached_rows(namespace, [keys[i] for i in rows], compute,
                                       location=resolve_location(self.memory)))

    @staticmethod
    def _prefix_openvino(module, loader, prep, namespace, n) -> torch.Tensor:
        """The frozen prefix compiled by OpenVINO (uint8 in, normalisation in the graph)."""
        from .cache import namespace_digest

        net = module.prefix_module()
        key, shape = namespace_digest(namespace), (prep.in_chans, *prep.size)

        def items():
            for b in loader:
                if b.dtype == torch.uint8:
                    yield _openvino.compile_frozen(net, shape, module.precision, key,
                                                   prep.mean, prep.std), b
                else:
                    yield (_openvino.compile_frozen(net, shape, module.precision, key),
                           prep.normalize(b))

        out = _openvino.run_pipelined(items(), n)
        return torch.from_numpy(out).to(module.prefix_dtype)

    def _make_net(self, module, task, train_ds, valid_ds, pos_weight, device) -> WeightedNet:
        from skorch.callbacks import EarlyStopping
        from skorch.helper import predefined_split

        callbacks = [("unfreeze", Unfreeze(int(self.freeze_epochs))),
                     ("record", EpochRecord(task))]
        if self.early_stopping and valid_ds is not None:
            callbacks.append(("early_stopping", EarlyStopping(
                monitor="valid_loss", patience=int(self.patience), threshold=float(self.min_delta),
                threshold_mode="abs", load_best=True, sink=_noop)))
        if self.lr_scheduler is not None:
            callbacks.append(("lr_scheduler", self._scheduler()))
        if self.verbose > 1:
            from skorch.callbacks import ProgressBar

            callbacks.append(("progress_bar", ProgressBar()))
        opt_kwargs = dict(self.optimizer_kwargs or {})
        if self.optimizer == "sgd":
            opt_kwargs.setdefault("momentum", 0.9)
        if self.finetune_lr is not None:
            opt_kwargs["param_groups"] = [("backbone.*", {"lr": float(self.finetune_lr)})]
        loader_kwargs = dict(num_workers=int(self.num_workers), collate_fn=collate_training,
                             pin_memory=device.type == "cuda")
        return WeightedNet(
            module=module,
            criterion=make_criterion(task, pos_weight),
            optimizer=OPTIMIZERS[self.optimizer],
            lr=float(self.lr),
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            train_split=predefined_split(valid_ds) if valid_ds is not None else None,
            callbacks=callbacks,
            device=str(device),
            iterator_train__shuffle=True,
            iterator_train__drop_last=len(train_ds) > self.batch_size
            and len(train_ds) % self.batch_size == 1,  # a batch of 1 breaks BatchNorm
            **{f"iterator_train__{k}": v for k, v in loader_kwargs.items()},
            **{f"iterator_valid__{k}": v for k, v in loader_kwargs.items()},
            **{f"optimizer__{k}": v for k, v in opt_kwargs.items()},
            verbose=int(self.verbose),
        )

    def _scheduler(self):
        from skorch.callbacks import LRScheduler

        kwargs = dict(self.lr_scheduler_kwargs or {})
        if self.lr_scheduler == "step":
            kwargs.setdefault("step_size", 10)
            kwargs.setdefault("gamma", 0.1)
            return LRScheduler(torch.optim.lr_scheduler.StepLR, **kwargs)
        if self.lr_scheduler == "cosine":
            kwargs.setdefault("T_max", int(self.max_epochs))
            return LRScheduler(torch.optim.lr_scheduler.CosineAnnealingLR, **kwargs)
        kwargs.setdefault("patience", 1)
        return LRScheduler(torch.optim.lr_scheduler.ReduceLROnPlateau, monitor="valid_loss",
                           **kwargs)

    def _finish(self, net, module, trainable, bb, prep, device, precision, class_w, has_valid):
        from skorch.callbacks import EarlyStopping

        history = pd.DataFrame(list(net.history)).drop(
            columns=["batches", "train_batch_count", "valid_batch_count"], errors="ignore")
        history = history.drop(columns=[c for c in history if c.endswith("_best")])
        self.history_ = history
        if has_valid and self.early_stopping:
            # the epoch whose weights EarlyStopping restored: the last one that improved by more
            # than min_delta, which need not be the lowest valid_loss
            stopper = next(cb for _, cb in net.callbacks_ if isinstance(cb, EarlyStopping))
            self.best_epoch_ = int(stopper.best_epoch_)
        else:
            self.best_epoch_ = int(history["epoch"].iloc[-1])
        # keep the weights, drop the optimizer, the callbacks and any accelerator memory
        self.module_ = module.to("cpu").eval()
        self.trainable_layers_ = list(trainable)
        self.n_trainable_params_ = int(sum(p.numel() for p in module.parameters()
                                           if p.requires_grad))
        self.class_weight_ = class_w
        self.provenance_ = bb.provenance
        self.preprocessing_ = prep
        self.device_, self.precision_ = device, precision
        del net
        _runtime.release(device)

    # ------------------------------------------------------------------ helpers for fit

    def _check_params(self):
        _runtime.resolve_engine(self.engine, _runtime.resolve_device(self.device))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {tuple(OPTIMIZERS)}; got {self.optimizer!r}.")
        if self.lr_scheduler is not None and self.lr_scheduler not in SCHEDULERS:
            raise ValueError(
                f"lr_scheduler must be None or one of {SCHEDULERS}; got {self.lr_scheduler!r}.")
        if self.batchnorm not in BATCHNORM_POLICIES:
            raise ValueError(
                f"batchnorm must be one of {BATCHNORM_POLICIES}; got {self.batchnorm!r}.")
        for name in ("max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        if not isinstance(self.freeze_epochs, (int, np.integer)) or self.freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be an int >= 0; got {self.freeze_epochs!r}.")
        if not 0 <= float(self.validation_fraction) < 1:
            raise ValueError("validation_fraction must be in [0, 1); got "
                             f"{self.validation_fraction!r}.")
        if not 0 <= float(self.dropout) < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}.")
        if float(self.lr) <= 0 or (self.finetune_lr is not None and float(self.finetune_lr) < 0):
            raise ValueError("lr must be > 0 and finetune_lr >= 0.")
        units = self.head_hidden_units
        if not isinstance(units, (tuple, list)) or not all(
                isinstance(u, (int, np.integer)) and u > 0 for u in units):
            raise ValueError(
                f"head_hidden_units must be a tuple of positive ints; got {units!r}.")
        if isinstance(self.class_weight, str) and self.class_weight != "balanced":
            raise ValueError(
                f"class_weight must be None, 'balanced' or a dict; got {self.class_weight!r}.")
        make_augment(self.augment, (32, 32))

    def _encode_targets(self, y, n: int):
        self.classes_, y_enc, self.target_type_ = encode_targets(y, n)
        return y_enc, self.target_type_

    def _split(self, y, task, seed):
        return split_rows(y, task, self.train_size, self.validation_fraction, seed)

    def _class_weights(self, y_train, task):
        return class_weights(self.class_weight, y_train, task, self.classes_)

    # ------------------------------------------------------------------ predict

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        source = check_images(X)
        device = _runtime.resolve_device(self.device)
        module = self.module_.to(device).eval()
        if self.prefix_namespace_ is not None:
            # the prefix is still the pretrained one: its cached outputs serve predict too
            acts = self._prefix_outputs(module, source, np.arange(len(source)),
                                        self.preprocessing_, device)
            loader = torch.utils.data.DataLoader(acts, batch_size=self.batch_size)
            module.input_is_prefix = True
        else:
            loader = make_loader(source, self.preprocessing_, batch_size=self.batch_size,
                                 num_workers=self.num_workers, pin_memory=device.type == "cuda",
                                 decoded=self._decoded(source, self.preprocessing_))
        try:
            out = _runtime.run_batches(module, loader, len(source), device=device,
                                       verbose=self.verbose > 1, desc="predict")
        finally:
            module.input_is_prefix = False
        if device.type == "cuda":
            self.module_.to("cpu")
            _runtime.release(device)
        return out

    def decision_function(self, X):
        """Logits: (n,) for binary targets (positive minus negative), else (n, n_outputs)."""
        logits = self._logits(X)
        if self._task() == "binary":
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities (softmax), or per-label probabilities (sigmoid) if multi-label."""
        logits = torch.from_numpy(self._logits(X))
        if self._task() == "multilabel":
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        """Class labels, or the 0/1 indicator matrix if multi-label (threshold 0.5)."""
        proba = self.predict_proba(X)
        if self._task() == "multilabel":
            return (proba >= 0.5).astype(np.int64)
        return self.classes_[proba.argmax(1)]

    def _task(self) -> str:
        return self.target_type_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.classifier_tags.multi_label = True
        tags.non_deterministic = self.random_state is None
        return tags

    def __getstate__(self):
        return _runtime.cpu_state(self.__dict__)


def _noop(*args, **kwargs):
    pass


def _seed(random_state) -> int:
    if random_state is None:
        return int(np.random.randint(2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    return int(random_state)

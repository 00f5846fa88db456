"""PretrainedCNNClassifier: fine-tune a pretrained CNN's last c layers as a sklearn classifier."""

from __future__ import annotations

import contextlib
import dataclasses
from numbers import Integral, Real
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from . import _runtime
from ._augment import make_augment
from ._base import CXREstimator
from ._fitted import classifier_network
from ._inference import view_logits
from ._lr_find import LRFinderDisplay, lr_grid
from ._network import build_network
from ._params import (
    CLASSIFIER_CONSTRAINTS,
    check_backbone_combinations,
    check_target_combinations,
    check_training_combinations,
    fill_doc,
)
from ._resume import FitCheckpoints
from ._training import (
    TrainingConfig,
    history_frame,
    lr_sweep,
    make_net,
    prefix_engine,
    train,
    training_datasets,
)
from ._validation import as_seed
from ._views import tta_views
from .backbones import DEFAULT_BACKBONE, weights_identity
from .calibration import apply_temperature, fit_temperature, fit_thresholds, probabilities
from .images import check_images, data_fingerprint
from .protocol import fit_rows


@fill_doc
class PretrainedCNNClassifier(ClassifierMixin, CXREstimator):
    """Fine-tune a pretrained CNN on chest X-rays, as a scikit-learn classifier.

    The backbone's last ``n_trainable_layers`` parameterised layers (the studies' *c*) and a
    new dense head train on a stratified subsample of ``train_size`` rows (the studies' *s*)
    of the data ``fit`` receives. Everything that learns from data (the subsample, the inner
    validation split used for early stopping and checkpoint selection, class weights) is
    computed inside ``fit`` from the rows it is given (:func:`skcxr.protocol.fit_rows`), so
    ``cross_val_score`` and ``GridSearchCV`` give honest estimates: the outer validation
    fold is never seen.

    Parameters
    ----------
    %(backbone)s
    %(weights)s
    %(image_size)s
    %(in_chans)s
    %(resize)s
    %(normalize)s
    %(intensity)s
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
        (``n_negative / n_positive`` for "balanced"); a dict names labels by column index,
        or by column name when ``y`` is a DataFrame.
    sampler : imbalanced-learn sampler or None, default=None
        Resamples the *training* rows after the inner validation split, so a duplicated row
        never sits on both sides of the early-stopping split (as it does with
        ``make_pipeline(RandomOverSampler(), clf)``, which resamples before ``fit`` splits).
        Samplers that select rows work (``RandomOverSampler``, ``RandomUnderSampler``);
        ones that make synthetic samples (SMOTE) are rejected. Seeded by ``random_state``
        when its own ``random_state`` is None.
    calibration : {None, "temperature"}, default=None
        After training, fit a temperature on the inner validation rows (one scalar dividing
        the logits, chosen to minimise their log-loss; Guo et al., 2017): ``predict_proba``
        is then calibrated. The ranking, ROC AUC and the single-label argmax do not change;
        the network is not refitted. See :mod:`skcxr.calibration`.
    threshold : None, {"balanced_accuracy", "f1", "youden"} or ("sensitivity", s), default=None
        After training (and calibration), choose decision thresholds on the inner validation
        rows for this objective: one on the positive class (binary) or one per label
        (multi-label); ``("sensitivity", 0.9)`` keeps at least that sensitivity with the best
        specificity. ``predict`` uses them (``thresholds_``). Not for multiclass targets.
    tta : None, {"flip", "shift", "flip+shift"} or tuple of views, default=None
        Test-time augmentation: ``predict_proba`` (and ``predict``) average the
        probabilities of each view of every image (``"hflip"``, ``"shift_left"``, ...: see
        :data:`skcxr.images.VIEWS`; shifts move the image by 4% with black filling in);
        ``decision_function`` averages the logits. Exact and deterministic; with a cached
        frozen prefix, each view's prefix outputs are cached too. ``calibration`` and
        ``threshold`` are then fitted on the view-averaged validation predictions.
    head_hidden_units : tuple of int, default=()
        Hidden dense layers of the head (study 000: ``(1028,)``; study 003: ``(512, 512)``).
    dropout : float, default=0.0
        Dropout before each dense layer of the head (study 001: 0.4).
    max_epochs : int, default=10
        The most epochs a fit trains (early stopping may end it sooner).
    lr : float, default=1e-3
        Learning rate of the head (and of the backbone layers unless ``finetune_lr``).
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
    optimizer_kwargs : dict or None, default=None
        E.g. ``{"momentum": 0.9, "nesterov": True}`` for SGD (study 000; "sgd" defaults to
        momentum 0.9), ``{"weight_decay": 1e-4}``.
    lr_scheduler : {None, "step", "cosine", "plateau", "onecycle", "cosine_warmup"}, \
default=None
        StepLR (default every 10 epochs, gamma 0.1; study 003), cosine annealing over
        ``max_epochs``, ReduceLROnPlateau on the validation loss (default patience 1), or a
        schedule over every batch of ``max_epochs``: "onecycle" (fastai's
        ``fit_one_cycle``: from ``lr/25`` up to ``lr`` over the first quarter, then down to
        ``lr/1e5``, both halves cosine), "cosine_warmup" (linear warm-up over the first 5%
        of the steps, then cosine down to 0). With ``finetune_lr``, each parameter group
        follows the schedule from its own rate.
    lr_scheduler_kwargs : dict or None, default=None
        E.g. ``{"step_size": 10, "gamma": 0.1}``; "onecycle" takes ``pct_start``, ``div``,
        ``div_final``, "cosine_warmup" ``warmup`` (a fraction of the steps).
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
        epochs, and restore the weights of the last epoch that improved it.
    patience : int, default=3
        Epochs without an improvement of the validation loss before early stopping ends
        the fit (or the head phase; see ``freeze_epochs``).
    min_delta : float, default=1e-3
        The least decrease of the validation loss that counts as an improvement.
    augment : None, {"flip", "standard", "crop", "views"} or callable, default=None
        Training-time augmentation of one ``(C, H, W)`` image tensor (uint8 for 8-bit
        images), training rows only. "flip": random horizontal flip (study 000).
        "standard": rotation +-10 degrees, shift 10%, zoom 0.9-1.1, shear 5 degrees,
        brightness/contrast 0.2 and horizontal flip (studies 001 and 003). "crop":
        RandomResizedCrop to the input size (scale 0.7-1) and horizontal flip (study 002).
        A callable (e.g. a ``torchvision.transforms.v2.Compose``) is used as given. With
        these the frozen prefix sees a new image every epoch, so it runs every epoch (its
        outputs are not cached; the decoded images are). "views": each epoch shows every
        training image in one of ``tta``'s six exact views (itself, left-right flipped,
        shifted 4% left/right/up/down), drawn at random; the prefix outputs of each view
        are computed once per image and cached, so epochs cost what un-augmented ones do
        (after a first pass of six prefix computations per image). The cheap way to
        augment a deep ``n_trainable_layers`` on a CPU.
    callbacks : list or None, default=None
        The skorch callbacks (instances, or ``(name, callback)`` pairs) run after skcxr's own
        in every epoch of ``fit``: e.g. ``skorch.callbacks.MlflowLogger(
        terminate_after_train=False)`` logs each epoch's losses and validation metrics to
        the active MLflow run, ``skorch.callbacks.TensorBoard(writer)`` to TensorBoard.
        ``skorch.callbacks.EpochScoring("f1", lower_is_better=False)`` adds a column to
        ``history_`` (the net predicts probabilities and classes, as skorch's classifier
        does). Each ``fit`` runs a copy, so the objects given are never changed and every
        fit of a grid search (``clone``) starts from the same ones. Names must be unique
        and not skcxr's own (``"early_stopping"``, ``"lr_scheduler"``, ...).
    %(batch_size)s
    %(cache)s
    %(memory)s
    %(engine)s
    %(device)s
    %(precision)s
    %(num_workers)s
    %(random_state)s
    %(verbose)s

    Attributes
    ----------
    classes_ : ndarray
        Class labels (multi-label: ``arange(n_labels)``).
    target_type_ : {"binary", "multiclass", "multilabel"}
    module_ : torch.nn.Module
        The trained network (normalise -> frozen prefix -> trainable suffix -> head), on the
        CPU, in eval mode.
    history_ : pandas.DataFrame
        Per epoch: train_loss, valid_loss, valid_acc, valid_auc, lr, backbone_lr,
        n_trainable_layers, dur.
    best_epoch_ : int
        Epoch whose weights were kept: the last one that improved the validation loss by
        more than ``min_delta`` (with early stopping), else the last epoch.
    trained_layers_ : list of str
        Backbone layers that trained: none if the fit ended before the unfreeze, and no
        BatchNorm layer that ``batchnorm="eval"`` keeps fixed.
    n_trainable_params_ : int
        Parameters that trained (head + trainable layers).
    class_weight_ : ndarray or None
        Weights used in the loss, computed on the training rows.
    n_train_samples_, n_valid_samples_ : int
        Rows trained on and rows of the inner validation split.
    temperature_ : float or None
        The fitted temperature (``calibration="temperature"``).
    thresholds_ : ndarray or None
        The fitted decision thresholds (``threshold=``), on probabilities.
    fit_rows_ : skcxr.protocol.FitRows
        The rows of the last fit: ``train`` (after ``sampler``) and ``valid`` indices into
        the ``X`` it received, encoded targets, loss weights (inspect what saw what).
    provenance_ : dict
        Backbone and weights provenance (see :class:`skcxr.backbones.Backbone`).
    preprocessing_ : skcxr.images.Preprocessing
        Input size, resize mode, channels and normalisation in use.
    data_fingerprint_ : str
        sha256 of the training images' content and labels (order and paths do not matter):
        which data a fitted model saw, recorded in exported model cards.
    device_ : torch.device
        Where ``fit`` trained. ``predict`` resolves ``device`` again at each call.
    precision_ : str
        Precision ``fit`` trained in ("fp32", "bf16" or "fp16").
    engine_ : str
        What ``fit`` would run the cached frozen prefix with ("torch" or "openvino").
    prefix_namespace_ : dict or None
        What keyed the cached frozen-prefix outputs in ``fit`` (None when the cache was not
        used: pixel augmentation, ``batchnorm="train"``, a backbone that does not split into
        a chain, or ``cache=False``). ``predict`` takes the prefix from the cache wherever
        it is a fixed function of the image (also after an augmented fit).

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

    _parameter_table = CLASSIFIER_CONSTRAINTS
    _parameter_checks = (check_backbone_combinations, check_training_combinations)

    def __init__(
        self,
        backbone=DEFAULT_BACKBONE,
        *,
        weights="imagenet",
        image_size=None,
        in_chans=3,
        resize="stretch",
        normalize="backbone",
        intensity="none",
        n_trainable_layers=0,
        train_size=None,
        class_weight=None,
        sampler=None,
        calibration=None,
        threshold=None,
        tta=None,
        head_hidden_units=(),
        dropout=0.0,
        max_epochs=10,
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
        callbacks=None,
        batch_size=32,
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
        self.intensity = intensity
        self.n_trainable_layers = n_trainable_layers
        self.train_size = train_size
        self.class_weight = class_weight
        self.sampler = sampler
        self.calibration = calibration
        self.threshold = threshold
        self.tta = tta
        self.head_hidden_units = head_hidden_units
        self.dropout = dropout
        self.max_epochs = max_epochs
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
        self.callbacks = callbacks
        self.batch_size = batch_size
        self.cache = cache
        self.memory = memory
        self.engine = engine
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y, sample_weight=None, groups=None):
        """Fine-tune on images ``X`` with targets ``y``.

        Every parameter, ``X``, ``y`` and ``sample_weight`` are checked before any image is
        decoded; the estimator's fitted state changes only when ``fit`` succeeds.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            The training images (files are read and checked before any training).
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels (binary, multiclass, strings) or a 0/1 indicator matrix
            (multi-label; NaN for a missing label, left out of the loss and every score:
            see ``docs/protocol.md``).
        sample_weight : array-like of shape (n_samples,), default=None
            Per-row loss weights (multiplied with the class weights).
        groups : array-like of shape (n_samples,), default=None
            Patient (or other group) ids: the ``train_size`` subsample and the inner
            validation split take whole groups, so one patient's images never sit on both
            sides of early stopping. Inside ``cross_validate`` / ``GridSearchCV`` it arrives
            through scikit-learn's metadata routing: ``sklearn.set_config(
            enable_metadata_routing=True)``, ``clf.set_fit_request(groups=True)``, then
            ``cross_validate(clf, X, y, cv=StratifiedGroupKFold(), params={"groups": g})``.

        Returns
        -------
        self : PretrainedCNNClassifier
            The fitted estimator.
        """
        t = self._setup_training(X, y, sample_weight, groups, fingerprint=True)
        params, execution, options, rows, prep, weights, module, source = (
            t.params, t.execution, t.options, t.rows, t.prep, t.weights, t.module, t.source)
        # with memory=: resumes an interrupted fit, skips a finished one (skcxr._resume)
        checkpoints = FitCheckpoints.of(options.location,
                                        {**self.get_params(deep=False),
                                         "execution": (execution.device.type,
                                                       execution.precision, execution.engine)},
                                        image_keys=source.keys(), rows=rows, weights=weights,
                                        seed=t.seed)
        with t.engine, t.rng.drawing():  # the engine compiles outside the RNG lock
            net = make_net(module, t.train_ds, t.valid_ds, task=rows.task,
                           pos_weight=rows.pos_weight, device=execution.device,
                           config=TrainingConfig.from_params(params), checkpoints=checkpoints)
            kept = train(net, t.train_ds, checkpoints)
        module = net.module_.to("cpu").eval()  # keep the weights, drop optimizer and callbacks
        temperature, thresholds = None, None
        if self.calibration is not None or self.threshold is not None:
            logits = view_logits(module, prep, weights, source.subset(rows.valid), execution,
                                 options, tta_views(self.tta))
            temperature, thresholds = _calibrate(logits, rows, self.calibration, self.threshold)
        _runtime.release(execution.device)
        self._set_fitted({
            "classes_": rows.classes, "target_type_": rows.task, "module_": module,
            "history_": history_frame(net), "best_epoch_": kept,
            "trained_layers_": module.unfrozen_layers,
            "n_trainable_params_": int(sum(p.numel() for p in module.parameters()
                                           if p.requires_grad)),
            "class_weight_": rows.class_weight, "n_train_samples_": len(rows.train),
            "n_valid_samples_": len(rows.valid), "fit_rows_": rows,
            "temperature_": temperature, "thresholds_": thresholds,
            "provenance_": t.backbone.provenance, "data_fingerprint_": t.fingerprint,
            "preprocessing_": prep, "device_": execution.device,
            "precision_": execution.precision, "engine_": execution.engine,
            "prefix_namespace_": t.namespace,
        })
        return self

    def _setup_training(self, X, y, sample_weight, groups, *, fingerprint: bool):
        """What ``fit`` and ``lr_find`` do before training: every check, the fit's rows, the
        backbone, the network (in the fit's RandomStream) and the training datasets."""
        params, execution, source = self._begin_fit(X)
        options = self._options("frozen prefix", verbose=self.verbose > 1)
        seed = as_seed(self.random_state)
        rows = fit_rows(y, len(source), sample_weight=sample_weight, train_size=self.train_size,
                        validation_fraction=self.validation_fraction,
                        class_weight=self.class_weight, groups=groups,
                        sampler=self.sampler, seed=seed)
        check_target_combinations(params, rows.task, len(rows.classes), type(self).__name__)
        # before training: reads every file
        digest = data_fingerprint(source, y) if fingerprint else None
        backbone, prep = self._load(seed)
        weights = weights_identity(backbone.provenance)
        rng = _runtime.RandomStream(seed)  # the fit's own draws, whatever runs beside it
        with rng.drawing():
            module = build_network(backbone, prep, self.n_trainable_layers,
                                   n_outputs=rows.n_outputs, hidden_units=self.head_hidden_units,
                                   dropout=self.dropout, batchnorm=self.batchnorm,
                                   precision=execution.precision)
        # no global RNG draws here (private loader generators): computed outside the stream,
        # so fits in other threads compute their prefixes meanwhile
        augment = make_augment(self.augment, prep.size)
        train_ds, valid_ds, namespace = training_datasets(
            module, source, rows, prep, execution, options, augment=augment, weights=weights)
        if namespace is None:
            # the network runs on images every epoch: channels_last weights match the
            # channels_last images (1.36x for lite0 trained whole at 224 on the CPU). A
            # cached prefix's suffix gets channels_last inputs too (CXRNet.logits); its
            # weights' layout made no measurable difference there (lite0 c=16, resnet18)
            module.to(memory_format=torch.channels_last)
        engine = (prefix_engine(module, prep, weights, execution, options) if namespace is None
                  else contextlib.nullcontext())
        return SimpleNamespace(params=params, execution=execution, options=options, seed=seed,
                               rows=rows, fingerprint=digest, backbone=backbone, prep=prep,
                               weights=weights, rng=rng, module=module, source=source,
                               train_ds=train_ds, valid_ds=valid_ds, namespace=namespace,
                               engine=engine)

    def lr_find(self, X, y, sample_weight=None, groups=None, *, start_lr=1e-7, end_lr=10.0,
                num_it=100):
        """Sweep the learning rate and suggest one (fastai's ``lr_find``, MONAI's
        ``LearningRateFinder``).

        One training step per rate, on a geometric grid from ``start_lr`` to ``end_lr``,
        on the training rows a ``fit`` with these parameters would train on (never its
        validation rows), from the cached frozen prefix where ``fit`` would use it; stopped
        once the smoothed loss exceeds four times its minimum. The estimator is not changed
        (nothing is fitted). With ``freeze_epochs > 0`` the sweep trains the head alone,
        as ``lr`` does first; with ``finetune_lr`` the backbone's rate keeps its ratio.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            As :meth:`fit`.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            As :meth:`fit`.
        sample_weight : array-like of shape (n_samples,), default=None
            As :meth:`fit`.
        groups : array-like of shape (n_samples,), default=None
            As :meth:`fit`.
        start_lr, end_lr : float, default=1e-7, 10.0
            The first and last rate of the sweep.
        num_it : int, default=100
            Steps of the sweep (epochs of the training rows repeat as needed).

        Returns
        -------
        skcxr.plotting.LRFinderDisplay
            ``suggestion`` (the "valley" rate), ``suggestions``, ``lrs``, ``losses``;
            ``.plot()`` draws the curve. Then ``clf.set_params(lr=finder.suggestion)``.
        """
        if not (isinstance(start_lr, Real) and isinstance(end_lr, Real)
                and 0 < start_lr < end_lr and np.isfinite(end_lr)):
            raise ValueError(f"lr_find needs 0 < start_lr < end_lr (finite); got start_lr="
                             f"{start_lr!r}, end_lr={end_lr!r}.")
        if isinstance(num_it, bool) or not isinstance(num_it, Integral) or num_it < 10:
            raise ValueError(f"lr_find's num_it must be an int >= 10; got {num_it!r}.")
        t = self._setup_training(X, y, sample_weight, groups, fingerprint=False)
        config = dataclasses.replace(TrainingConfig.from_params(t.params), callbacks=None,
                                     early_stopping=False, lr_scheduler=None,
                                     lr_scheduler_kwargs=None, verbose=0)
        lrs = lr_grid(start_lr, end_lr, num_it)
        with t.engine, t.rng.drawing():
            net = make_net(t.module, t.train_ds, None, task=t.rows.task,
                           pos_weight=t.rows.pos_weight, device=t.execution.device,
                           config=config)
            losses = lr_sweep(net, t.train_ds, lrs, unfreeze=self.freeze_epochs == 0)
        _runtime.release(t.execution.device)
        return LRFinderDisplay.from_sweep(lrs, losses)

    def _as_network(self, copy: bool = True):
        """The fitted classifier as one network (:func:`skcxr._fitted.as_network`)."""
        return classifier_network(
            self.module_, self.preprocessing_, weights_identity(self.provenance_), copy=copy,
            views=tta_views(self.tta), temperature=self.temperature_, classes=self.classes_,
            multilabel=self.target_type_ == "multilabel", estimator=self)

    def _view_logits(self, X) -> np.ndarray:
        """Logits ``(views, n, n_outputs)`` of ``X`` in each ``tta`` view (one without
        ``tta``); reads the fitted state and writes nothing."""
        check_is_fitted(self)
        source = check_images(X)
        return view_logits(self.module_, self.preprocessing_,
                           weights_identity(self.provenance_), source,
                           self._execution(len(source)),
                           self._options("frozen prefix", verbose=self.verbose > 1),
                           tta_views(self.tta))

    def decision_function(self, X):
        """Logits: (n,) for binary targets (positive minus negative), else (n, n_outputs).

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            The images.

        Returns
        -------
        ndarray of shape (n,) or (n, n_outputs), float32
            The logits; with ``tta``, the mean over views.
        """
        logits = np.mean(self._view_logits(X), axis=0)
        if self.target_type_ == "binary":
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities (softmax), or per-label probabilities (sigmoid) if multi-label.

        Calibrated when ``calibration`` was set (logits divided by ``temperature_``); with
        ``tta``, the mean over views.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            The images.

        Returns
        -------
        ndarray of shape (n, n_classes) or (n, n_labels), float32
            Probabilities, in the order of ``classes_``.
        """
        logits = apply_temperature(self._view_logits(X), self.temperature_)
        # the function fit calibrated with: what predict decides on is what was fitted
        return probabilities(logits, self.target_type_).astype(np.float32)

    def predict(self, X):
        """Class labels, or the 0/1 indicator matrix if multi-label.

        By ``thresholds_`` when ``threshold`` was set, else the most probable class
        (multi-label: probability >= 0.5).

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            The images.

        Returns
        -------
        ndarray of shape (n,), or (n, n_labels) of 0/1 int64 if multi-label
            The decisions, as labels of ``classes_``.
        """
        proba = self.predict_proba(X)
        thresholds = self.thresholds_
        if self.target_type_ == "multilabel":
            cut = 0.5 if thresholds is None else thresholds[None, :]
            return (proba >= cut).astype(np.int64)
        if thresholds is not None:  # binary
            return self.classes_[(proba[:, 1] >= thresholds[0]).astype(np.int64)]
        return self.classes_[proba.argmax(1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.non_deterministic = self.random_state is None
        return tags


def _calibrate(logits, rows, calibration, threshold):
    """Temperature and thresholds fitted on the inner validation rows' ``(views, n, k)``
    logits (after training, with the kept weights), or None each."""
    y = rows.y[rows.valid]
    temperature = fit_temperature(logits, y, rows.task) if calibration else None
    thresholds = None
    if threshold is not None:
        proba = probabilities(apply_temperature(logits, temperature), rows.task)
        thresholds = fit_thresholds(proba, y, rows.task, threshold)
    return temperature, thresholds

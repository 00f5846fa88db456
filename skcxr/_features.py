"""FeatureExtractorTransformer: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _openvino, _runtime
from ._frozen import FrozenPart
from ._params import (
    TRANSFORMER_CONSTRAINTS,
    check_backbone_combinations,
    fill_doc,
    validate_params,
)
from .backbones import DEFAULT_BACKBONE, load_backbone
from .cache import resolve_location
from .images import check_images, make_loader, make_preprocessing

#: Images of ``X`` that ``fit`` calibrates the int8 quantization on (``precision="int8"``).
INT8_CALIBRATION_IMAGES = 300


@fill_doc
class FeatureExtractorTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Pooled features of a frozen pretrained CNN, computed batch by batch from image files.

    ``fit`` loads the backbone (the constructor only stores parameters, so ``clone`` is
    cheap); ``transform`` streams the images through it in eval mode under
    ``torch.inference_mode`` and returns one row of pooled features per image. Use it as the
    first step of a pipeline: ``make_pipeline(FeatureExtractorTransformer(),
    LogisticRegression())`` is a strong baseline for chest X-ray classification.

    Parameters
    ----------
    %(backbone)s
    %(weights)s
    %(image_size)s
    %(in_chans)s
    %(resize)s
    %(normalize)s
    pooling : {"avg", "max", "avgmax", "catavgmax"}, default="avg"
        Global pooling of the last feature map (timm backbones and modules that return one).
    %(batch_size)s
    %(device)s
    %(precision)s
        The transformer also takes "int8": ``fit`` quantizes the backbone with NNCF's
        post-training quantization, calibrated on up to 300 of the fit images, and
        ``transform`` runs it in OpenVINO (CPU only; ``pip install nncf``). Measured on
        lite0 (docs "Performance"): 1.4x bf16's speed end to end from JPEG files
        (``benchmarks/bench_features.py``), CV ROC AUC of features + logistic regression
        0.0001 below fp32's (``benchmarks/bench_int8.py``).
    %(num_workers)s
    %(engine)s
    %(cache)s
    %(memory)s
    %(random_state)s
    %(verbose)s

    Attributes
    ----------
    module_ : torch.nn.Module
        The frozen backbone (classifier removed) on the CPU, in eval mode.
    quantized_ : dict or None
        With ``precision="int8"``: the quantized backbone as OpenVINO IR bytes (``xml``,
        ``bin``) and their ``sha256``; None otherwise.
    n_features_out_ : int
        Width of the pooled features.
    preprocessing_ : skcxr.images.Preprocessing
        Input size, resize mode, channels and normalisation in use.
    data_config_ : skcxr.images.DataConfig
        The backbone's data config (input size, mean, std, interpolation, crop_pct).
    provenance_ : dict
        Backbone name, pooling, weights source, weights file and its sha256, state digest
        (see :class:`skcxr.backbones.Backbone`).
    device_ : torch.device
        The device ``fit`` resolved. ``transform`` resolves ``device`` again at each call.
    precision_ : str
        The precision ``fit`` resolved for that device ("fp32", "bf16" or "fp16").
    engine_ : str
        The engine ``fit`` resolved ("torch" or "openvino").

    Examples
    --------
    >>> import numpy as np
    >>> from skcxr import FeatureExtractorTransformer
    >>> X = np.random.RandomState(0).randint(0, 255, size=(4, 64, 64), dtype=np.uint8)
    >>> fe = FeatureExtractorTransformer(backbone="test_efficientnet", weights=None,
    ...                                  image_size=64, random_state=0)
    >>> fe.fit_transform(X).shape
    (4, 256)
    """

    _parameter_table = TRANSFORMER_CONSTRAINTS
    _parameter_checks = (check_backbone_combinations,)

    def __init__(
        self,
        backbone=DEFAULT_BACKBONE,
        *,
        weights="imagenet",
        image_size=None,
        in_chans=3,
        resize="stretch",
        normalize="backbone",
        pooling="avg",
        batch_size=32,
        device="auto",
        precision="auto",
        num_workers=0,
        engine="auto",
        cache=True,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.in_chans = in_chans
        self.resize = resize
        self.normalize = normalize
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.engine = engine
        self.cache = cache
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- sklearn API

    def fit(self, X, y=None):
        """Check the parameters and ``X`` and load the backbone; no image is decoded, except
        with ``precision="int8"``, which quantizes the backbone calibrated on up to 300 of
        the images of ``X``.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            See :mod:`skcxr.images` for the accepted forms.
        y : ignored

        Returns
        -------
        self : FeatureExtractorTransformer
        """
        validate_params(self)
        run = _runtime.resolve(self.device, self.precision, self.engine)
        source = check_images(X)
        if run.precision == "int8" and len(source) < _openvino.CompiledModule.request_size:
            raise ValueError(
                f"precision='int8' calibrates the quantization on the images given to fit; "
                f"X has {len(source)}, at least {_openvino.CompiledModule.request_size} are "
                f"needed (up to {INT8_CALIBRATION_IMAGES} are used).")
        backbone = load_backbone(self.backbone, self.weights, in_chans=self.in_chans,
                                 pooling=self.pooling, random_state=self.random_state)
        prep = make_preprocessing(backbone.data_config, image_size=self.image_size,
                                  in_chans=self.in_chans, resize=self.resize,
                                  normalize=self.normalize)
        # channels_last: the layout oneDNN (CPU) and cuDNN convolutions are fastest in
        # (1.6x for EfficientNet-Lite0 in fp32 here, more under bf16)
        module = backbone.module.to(memory_format=torch.channels_last).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        quantized = None
        if run.precision == "int8":
            quantized = self._quantize(module, prep, source)
        fitted = {"module_": module, "n_features_out_": backbone.num_features,
                  "quantized_": quantized,
                  "data_config_": backbone.data_config, "provenance_": backbone.provenance,
                  "preprocessing_": prep, "device_": run.device, "precision_": run.precision,
                  "engine_": run.engine}
        for name, value in fitted.items():  # only now, after everything that can fail
            setattr(self, name, value)
        return self

    def _quantize(self, module, prep, source) -> dict:
        """The backbone quantized to int8 (NNCF), calibrated on up to
        ``INT8_CALIBRATION_IMAGES`` of the fit images (a seeded random subset)."""
        import numpy as np

        from ._validation import as_seed

        size = _openvino.CompiledModule.request_size
        n = min(len(source), INT8_CALIBRATION_IMAGES) // size * size
        rows = np.sort(np.random.default_rng(as_seed(self.random_state))
                       .choice(len(source), n, replace=False))
        loader = make_loader(source.subset(rows), prep, batch_size=size,
                             num_workers=self.num_workers)
        batches = [prep.normalize(b) for b in loader]
        return _openvino.quantize(module, (prep.in_chans, *prep.size), batches)

    def transform(self, X):
        """Pooled backbone features of each image; reads the fitted state, writes nothing.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), dtype float32
        """
        check_is_fitted(self)
        source = check_images(X)
        run = _runtime.resolve(self.device, self.precision, self.engine)
        part = FrozenPart(self.module_, self.preprocessing_, self.provenance_,
                          {"kind": "pooled-features", "pooling": self.provenance_["pooling"]},
                          quantized=getattr(self, "quantized_", None)
                          if run.precision == "int8" else None)
        return part.outputs(source, run, cache=self.cache,
                            location=resolve_location(self.memory),
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            verbose=self.verbose, desc="features").numpy()

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    def __getstate__(self):
        return _runtime.cpu_state(self.__dict__)

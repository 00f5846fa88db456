"""FeatureExtractorTransformer: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _openvino
from ._base import CXREstimator
from ._fitted import feature_network
from ._frozen import FrozenPart
from ._params import (
    TRANSFORMER_CONSTRAINTS,
    check_backbone_combinations,
    check_input_combinations,
    fill_doc,
)
from ._validation import as_seed
from .backbones import DEFAULT_BACKBONE, weights_identity
from .images import check_images, make_loader

#: Images of ``X`` that ``fit`` calibrates the int8 quantization on (``precision="int8"``).
INT8_CALIBRATION_IMAGES = 300


@fill_doc
class FeatureExtractorTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                                  CXREstimator):
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
    %(intensity)s
    pooling : {"avg", "max", "avgmax", "catavgmax"}, default="avg"
        Global pooling of the last feature map (timm backbones and modules that return one).
    %(batch_size)s
    %(cache)s
    %(memory)s
    %(engine)s
    %(device)s
    %(precision)s
        The transformer also takes "int8": ``fit`` quantizes the backbone with NNCF's
        post-training quantization, calibrated on up to 300 of the fit images, and
        ``transform`` runs it in OpenVINO (CPU only; ``pip install nncf``). Measured on
        lite0 (docs "Performance"): 1.4x bf16's speed end to end from JPEG files
        (``benchmarks/bench_features.py``), CV ROC AUC of features + logistic regression
        0.0001 below fp32's (``benchmarks/bench_int8.py``).
    %(num_workers)s
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
        intensity="none",
        pooling="avg",
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
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache = cache
        self.memory = memory
        self.engine = engine
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
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
        y : None
            Ignored: present for the scikit-learn API (pipelines pass ``y`` along).

        Returns
        -------
        self : FeatureExtractorTransformer
            The fitted transformer.
        """
        params, execution, source = self._begin_fit(X)
        check_input_combinations(params, len(source), type(self).__name__,
                                 _openvino.CompiledModule.request_size, INT8_CALIBRATION_IMAGES)
        backbone, prep = self._load(as_seed(self.random_state), pooling=self.pooling)
        # channels_last: the layout oneDNN (CPU) and cuDNN convolutions are fastest in
        # (1.6x for EfficientNet-Lite0 in fp32 here, more under bf16)
        module = backbone.module.to(memory_format=torch.channels_last).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        quantized = None
        if execution.precision == "int8":
            quantized = self._quantize(module, prep, source)
        self._set_fitted({
            "module_": module, "n_features_out_": backbone.num_features,
            "quantized_": quantized, "data_config_": backbone.data_config,
            "provenance_": backbone.provenance, "preprocessing_": prep,
            "device_": execution.device, "precision_": execution.precision,
            "engine_": execution.engine})
        return self

    def _quantize(self, module, prep, source) -> dict:
        """The backbone quantized to int8 (NNCF), calibrated on up to
        ``INT8_CALIBRATION_IMAGES`` of the fit images (a seeded random subset)."""
        size = _openvino.CompiledModule.request_size
        n = min(len(source), INT8_CALIBRATION_IMAGES) // size * size
        rows = np.sort(np.random.default_rng(as_seed(self.random_state))
                       .choice(len(source), n, replace=False))
        loader = make_loader(source.subset(rows), prep, batch_size=size,
                             num_workers=self.num_workers)
        batches = [prep.normalize(b) for b in loader]
        return _openvino.quantize(module, (prep.in_chans, *prep.size), batches)

    def _as_network(self, copy: bool = True):
        """The fitted transformer as one network (:func:`skcxr._fitted.as_network`)."""
        return feature_network(self.module_, self.preprocessing_,
                               weights_identity(self.provenance_), copy=copy, estimator=self)

    def transform(self, X):
        """Pooled backbone features of each image; reads the fitted state, writes nothing.

        Parameters
        ----------
        X : array-like of paths, (n, 1) column of paths, or array of images
            The images, in any form :func:`skcxr.images.check_images` accepts; they need
            not have the size of the fit images.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), dtype float32
            One row of pooled features per image, in the order of ``X``
            (``n_features == n_features_out_``).
        """
        check_is_fitted(self)
        source = check_images(X)
        execution = self._execution(len(source))
        part = FrozenPart(self.module_, self.preprocessing_, weights_identity(self.provenance_),
                          {"kind": "pooled-features", "pooling": self.provenance_["pooling"]},
                          quantized=self.quantized_ if execution.precision == "int8" else None)
        return part.outputs(source, execution, self._options("features")).numpy()

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []
        return tags

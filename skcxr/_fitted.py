"""A fitted estimator (or a feature pipeline) as one network: the one builder.

:func:`as_network` turns what a user fitted into a :class:`FittedNetwork`: a torch module
from normalised images to class scores (or features), with the preprocessing, the test-time
views, the temperature and the link (softmax, sigmoid, ...) that turn those scores into what
the estimator returns. Everything that needs a fitted model as a network is built from it:

* the whole-network OpenVINO path of ``predict`` (:func:`skcxr._frozen.network_part`);
* ONNX export (:meth:`FittedNetwork.export_graph`, :func:`skcxr.export.to_onnx`);
* Grad-CAM (:meth:`FittedNetwork.explained`, :func:`skcxr.explain.gradcam`).

So all three accept the same estimators and pipelines, the ones :data:`ACCEPTED` lists.
Each skcxr estimator presents itself through its ``_as_network`` hook; pipeline steps after
a feature extractor become layers here.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._preprocessing import InputGraph, Preprocessing

#: What :func:`as_network` (and so export, explain and the whole-network engine) accepts.
ACCEPTED = (
    "a fitted PretrainedCNNClassifier or FeatureExtractorTransformer, or a Pipeline "
    "(scikit-learn's or imbalanced-learn's) of one of them: imbalanced-learn samplers "
    "(which act in fit only) anywhere, and after a FeatureExtractorTransformer affine "
    "scalers (StandardScaler, MinMaxScaler without clip, MaxAbsScaler) and optionally a "
    "final linear classifier with coef_ (LogisticRegression, LinearSVC, RidgeClassifier, "
    "SGDClassifier, ...)")


@dataclass
class FittedNetwork:
    """A fitted model as one network.

    Attributes
    ----------
    body : nn.Module
        Normalised images ``(n, in_chans, H, W)`` -> scores (logits, or a linear model's
        decision function) or features, in float32; eval mode.
    backbone : nn.Module
        The backbone inside ``body`` (what Grad-CAM explains a layer of).
    preprocessing : skcxr.images.Preprocessing
        What turns a decoded image into ``body``'s input (view "none").
    views : tuple of str
        Test-time views whose outputs are averaged.
    output : {"probabilities", "scores", "features"}
        What the estimator returns for an image: the link of the scores, the scores
        themselves (a linear classifier without probabilities), or features.
    link : {"softmax", "sigmoid", "logistic", "ovr"} or None
        Scores -> probabilities: softmax; per-label sigmoid; binary logistic (one score ->
        ``[1 - p, p]``); one-vs-rest logistic normalised over classes.
    temperature : float
        Scores are divided by it before the link (calibration).
    classes : ndarray or None
        Labels of the score columns (multi-label: label indices).
    multilabel : bool
    estimator : estimator
        The skcxr estimator inside (its provenance, preprocessing, parameters).
    source_module : nn.Module
        The fitted module ``body`` was built from (identifies the trained weights).
    """

    body: nn.Module
    backbone: nn.Module
    preprocessing: Preprocessing
    views: tuple = ("none",)
    output: str = "features"
    link: str | None = None
    temperature: float = 1.0
    classes: np.ndarray | None = None
    multilabel: bool = False
    estimator: object = None
    source_module: nn.Module | None = None
    weights: dict = field(default_factory=dict)

    def export_graph(self) -> nn.Module:
        """uint8 images ``(n, H, W, C)`` at the fitted size -> what the estimator returns
        (``predict_proba``, ``decision_function`` of a linear model, or ``transform``)."""
        return _ExportGraph(self)

    def explained(self) -> nn.Module:
        """Float images in [0, 1] ``(n, in_chans, H, W)`` (after the per-image steps) ->
        class scores, with the input requiring grad (so that gradients reach every layer,
        frozen ones too); one binary score is expanded to ``[-z, z]`` (class 0, class 1)."""
        if self.output == "features":
            raise TypeError(
                "gradcam explains class scores, and this model's output is features: explain "
                "a PretrainedCNNClassifier, or a feature pipeline that ends in a linear "
                f"classifier. It accepts {ACCEPTED}.")
        return _Explained(self)


def _float_copy(module: nn.Module) -> nn.Module:
    """A float32 copy in eval mode, that callers may change (trace, make require grad)."""
    return deepcopy(module).float().eval()


def classifier_network(net, preprocessing: Preprocessing, weights: dict, *, copy: bool,
                       views=("none",), temperature=None, classes=None, multilabel=False,
                       estimator=None) -> FittedNetwork:
    """A classifier's network (:class:`skcxr._network.CXRNet`) as a FittedNetwork: its whole
    chain and head on normalised images; fitted or just trained (calibration inside fit)."""
    source, net = net, _float_copy(net) if copy else net
    return FittedNetwork(
        body=net.whole(), backbone=net.backbone, preprocessing=preprocessing,
        views=tuple(views), output="probabilities", link="sigmoid" if multilabel else "softmax",
        temperature=float(temperature or 1.0), classes=classes, multilabel=multilabel,
        estimator=estimator, source_module=source, weights=weights)


def feature_network(module, preprocessing: Preprocessing, weights: dict, *, copy: bool,
                    estimator=None) -> FittedNetwork:
    """A feature extractor's backbone (pooled features) as a FittedNetwork."""
    source, module = module, _float_copy(module) if copy else module
    return FittedNetwork(body=nn.Sequential(module, nn.Flatten(1)).eval(), backbone=module,
                         preprocessing=preprocessing, output="features", estimator=estimator,
                         source_module=source, weights=weights)


class _Affine(nn.Module):
    """``x * a + b`` per feature: a fitted affine scaler."""

    def __init__(self, a, b):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(np.asarray(a, dtype=np.float32)))
        self.register_buffer("b", torch.as_tensor(np.asarray(b, dtype=np.float32)))

    def forward(self, x):
        return x * self.a + self.b


def _affine(step) -> _Affine | None:
    """A fitted scaler as ``x * a + b``, or None when it is not an affine scaler we know."""
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

    if not isinstance(step, (StandardScaler, MinMaxScaler, MaxAbsScaler)):
        return None
    ones, zeros = np.ones(step.n_features_in_), np.zeros(step.n_features_in_)
    if isinstance(step, StandardScaler):
        scale = step.scale_ if step.with_std else ones
        mean = step.mean_ if step.with_mean else zeros
        return _Affine(1.0 / scale, -mean / scale)
    if isinstance(step, MinMaxScaler) and not step.clip:
        return _Affine(step.scale_, step.min_)
    if isinstance(step, MaxAbsScaler):
        return _Affine(1.0 / step.scale_, zeros)
    return None


def _linear(step):
    """A fitted linear classifier as (nn.Linear, output, link), or None."""
    if not (is_classifier(step) and hasattr(step, "coef_") and hasattr(step, "intercept_")):
        return None
    from sklearn.linear_model import LogisticRegression

    w = np.atleast_2d(np.asarray(step.coef_, dtype=np.float32))
    b = np.broadcast_to(np.atleast_1d(np.asarray(step.intercept_, np.float32)), (w.shape[0],))
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b.copy()))
    if not isinstance(step, LogisticRegression):
        return layer, "scores", None
    if len(step.classes_) <= 2:
        return layer, "probabilities", "logistic"
    # scikit-learn's predict_proba: one-vs-rest for multi_class="ovr" (and liblinear's
    # "auto" in the versions that have the parameter), else the multinomial softmax
    multi = getattr(step, "multi_class", None)
    ovr = multi == "ovr" or (multi in ("auto", "warn", "deprecated") and step.solver == "liblinear")
    return layer, "probabilities", "ovr" if ovr else "softmax"


def _steps(estimator) -> list:
    """The steps of a pipeline that act at predict time (samplers act in fit only), or the
    estimator alone."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline):
        return [estimator]
    check_is_fitted(estimator)
    return [s for _, s in estimator.steps
            if s not in (None, "passthrough") and not hasattr(s, "fit_resample")]


def _refuse(what: str):
    return TypeError(f"{what}. Accepted: {ACCEPTED}.")


def as_network(estimator, *, copy: bool = True) -> FittedNetwork:
    """The fitted ``estimator`` (see :data:`ACCEPTED`) as one network.

    ``copy``: a float32 copy of the weights that callers may change (export traces it,
    Grad-CAM makes its input require grad); without, the fitted module itself (for an engine
    that compiles it, never writing to it).
    """
    steps = _steps(estimator)
    if not steps:
        raise _refuse(f"the pipeline {estimator!r} has no step that acts at predict time")
    first, rest = steps[0], steps[1:]
    if isinstance(getattr(first, "estimators_", None), list):
        raise _refuse(f"a {type(first).__name__} holds {len(first.estimators_)} networks, "
                      "which may differ in input size and intensity step: export each member "
                      "(estimators_[i]) and average their probabilities")
    if not hasattr(first, "_as_network"):
        raise _refuse(f"{type(first).__name__} is not an skcxr estimator")
    check_is_fitted(first)
    net = first._as_network(copy=copy)
    if not rest:
        return net
    if net.output != "features":
        raise _refuse(f"pipeline step {type(rest[0]).__name__} comes after a "
                      f"{type(first).__name__}, which ends a pipeline")
    layers = []
    for k, step in enumerate(rest, start=1):
        check_is_fitted(step)
        affine = _affine(step)
        if affine is not None:
            layers.append(affine)
            continue
        linear = _linear(step) if k == len(rest) else None
        if linear is None:
            raise _refuse(f"pipeline step {k} ({type(step).__name__}) cannot be part of the "
                          "network: use the FeatureExtractorTransformer alone (its output is "
                          "the features) and convert the rest with skl2onnx, or refit with "
                          "steps it takes")
        layer, output, link = linear
        layers.append(layer)
        return replace(net, body=nn.Sequential(net.body, *layers).eval(), output=output,
                       link=link, classes=np.asarray(step.classes_))
    return replace(net, body=nn.Sequential(net.body, *layers).eval())


def _apply_link(z: torch.Tensor, link: str | None) -> torch.Tensor:
    if link is None:
        return z
    if link == "softmax":
        return z.softmax(-1)
    if link == "sigmoid":
        return torch.sigmoid(z)
    p = torch.sigmoid(z)
    if link == "logistic":  # one score: [1 - p, p]
        return torch.cat([1 - p, p], dim=1)
    return p / p.sum(-1, keepdim=True)  # "ovr"


class _ExportGraph(nn.Module):
    """uint8 NHWC images -> per view: the preprocessing's steps after the resize, the body,
    the temperature and the link; averaged over the views."""

    def __init__(self, net: FittedNetwork):
        super().__init__()
        self.views = nn.ModuleList(InputGraph(net.preprocessing.with_view(v), layout="NHWC")
                                   for v in net.views)
        self.body = net.body
        self.temperature = float(net.temperature)
        self.link = net.link

    def forward(self, images):
        out = 0.0
        for pre in self.views:
            z = self.body(pre(images))
            if self.link is not None:
                z = _apply_link(z / self.temperature, self.link)
            out = out + z
        return out / len(self.views)


class _Explained(nn.Module):
    """Float images after the per-image steps -> class scores, the input requiring grad."""

    def __init__(self, net: FittedNetwork):
        super().__init__()
        self.input = InputGraph(net.preprocessing, ("batch",))
        self.body = net.body

    def forward(self, x):
        x = x.detach().float().requires_grad_(True)
        z = self.body(self.input(x))
        return torch.cat([-z, z], dim=1) if z.shape[1] == 1 else z

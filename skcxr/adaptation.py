"""Label-free adaptation of a fitted model to a new site, from its unlabelled images.

Each method is opt-in, takes only what it says (the target site's images, or a prevalence
known from outside the evaluation labels), never a target label, and is recorded where the
model's other provenance is. Results of a model adapted with a test set's own images are
*transductive* and must be reported apart from the inductive ones
(:func:`skcxr.evaluation.external_validation` labels them so).

* :func:`adapt_batchnorm` (AdaBN, Li et al. 2016): every BatchNorm layer's running mean and
  variance re-estimated on the target images, and with ``reference`` (unlabelled images of
  the training site) mapped onto the training site's statistics, which models with frozen,
  pretrained statistics need (skcxr's default fine-tunes, feature extractors); no weight
  changes. Works on both estimators
  and on pipelines, searches and ensembles holding them. The adapted model's caches, compiled
  models and ONNX export carry the new statistics (its ``provenance_["state_sha256"]``
  changes, so adapted and unadapted outputs never share a cache entry).
  *Assumes* the shift is mostly in low-level image statistics (exposure, contrast,
  processing), which BatchNorm's per-channel moments capture, and that the target images'
  class mix is not extreme. *Fails* when the target set is small or one class dominates
  it (the statistics then encode the class mix) and for a label-definition shift, which no
  image statistic can see.
* Prior (label) shift: :func:`adjust_to_prior` moves probabilities to a target prevalence
  by Bayes' rule; :func:`estimate_prior` estimates the target prevalence from unlabelled
  probabilities by EM (Saerens et al. 2002) and checks the assumption that makes it valid
  (``p(x | y)`` unchanged: the target's score distribution must then be a mixture of the
  source classes' score distributions), warning when it fails;
  :class:`PriorAdjustedClassifier` applies either as an estimator. *Fails* under covariate
  or concept shift (the warning's case), where the correction can make things worse.
* :class:`SiteStandardScaler`: per-site standardisation of features (frozen-feature
  pipelines), driven by site ids. A site seen at ``fit`` uses its fitted statistics; an
  unseen site is standardised by the statistics of its own rows in the call
  (transductive). *Assumes* each site's feature distribution differs by location and scale
  only and sites have similar class mixes.

Entropy minimisation (TENT) is deliberately absent: on a model that already over-calls one
class it amplifies that bias, and its steps cannot be tuned without target labels.

Examples
--------
>>> from skcxr.adaptation import adjust_to_prior
>>> # trained for a uniform prior (class_weight="balanced"); the new site has 20% positives
>>> adjust_to_prior([[0.5, 0.5], [0.2, 0.8]], 0.5, 0.2).round(3).tolist()
[[0.8, 0.2], [0.5, 0.5]]
"""

from __future__ import annotations

import copy
import hashlib
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._prior_shift import (
    PriorAdjustedClassifier,
    PriorEstimate,
    PriorShiftWarning,
    adjust_prior,
    adjust_to_prior,
    estimate_prior,
    training_prior,
)

__all__ = [
    "PriorAdjustedClassifier",
    "PriorEstimate",
    "PriorShiftWarning",
    "SiteStandardScaler",
    "adapt_batchnorm",
    "adjust_prior",
    "adjust_to_prior",
    "estimate_prior",
    "training_prior",
]


# ===================================================================== AdaBN

def adapt_batchnorm(estimator, X, *, reference=None, batch_size: int | None = None,
                    verbose: int = 0):
    """Copy a fitted model, with the BatchNorm statistics of the images ``X``.

    Parameters
    ----------
    estimator : fitted skcxr estimator, or a Pipeline, FeatureUnion, search or ensemble
        The model; every skcxr estimator inside it is adapted (in a pipeline, on ``X`` as
        it reaches that step); nothing else changes. The argument itself is not modified.
    X : images (paths, a column of paths, or an array)
        Unlabelled images of the target site.
    reference : images, optional
        Images of the site the model was trained on (its training images, or a sample of a
        few hundred). With them, each layer's statistics on ``X`` are mapped onto the
        reference's: at inference the layer's normalised output has on ``X`` the mean and
        variance it has on the reference with the model's own statistics, i.e. the new
        site's images reach the trained layers standardised as the training site's did.
        Needed for models whose BatchNorm statistics are not the training site's: skcxr's
        fine-tunes keep the pretrained statistics of frozen layers (``batchnorm="frozen"``,
        the default) and a feature extractor keeps all of them; without ``reference`` such
        a model gets a warning. Without it, the statistics on ``X`` replace the running
        ones outright (AdaBN as published, right for ``batchnorm="train"``).
    batch_size : int, optional
        Images per batch in the estimation pass (default: the estimator's ``batch_size``).
    verbose : int, default=0
        A progress bar over the batches when > 0.

    Returns
    -------
    adapted : a deep copy of ``estimator``
        With the adapted statistics in every skcxr estimator inside.

    Notes
    -----
    One pass over ``X`` (preprocessed as at predict, without test-time views), in fp32, with
    every BatchNorm layer normalising by its batch's statistics (as in training) while the
    per-channel moments of its input over all of ``X`` are accumulated (each batch's sums
    in float32, their total in float64);
    these become the layer's running mean and variance (the population variance, which
    training-mode BatchNorm normalises by). With all of ``X`` in one batch this is AdaBN
    exactly: at inference each layer sees inputs whose mean and variance over the target
    set are its statistics; in batches, the layers before normalise by their batch's
    statistics during the pass (torch's ``swa_utils.update_bn`` does the same, but averages
    per-batch variances, which leaves out the spread between batch means). Recorded in
    ``provenance_["adaptations"]``.
    """
    from ._base import CXREstimator
    from .images import check_images

    if not _holds_skcxr(estimator):
        raise TypeError(f"adapt_batchnorm adapts skcxr estimators (and pipelines, searches or "
                        f"ensembles holding them); {type(estimator).__name__} holds none.")
    check_images(X)  # every file checked before any work
    if reference is not None:
        check_images(reference)
    adapted = copy.deepcopy(estimator)
    _adapt_all(adapted, X, reference, batch_size, verbose, CXREstimator)
    return adapted


def _holds_skcxr(obj) -> bool:
    from ._base import CXREstimator

    return any(isinstance(o, CXREstimator) for o in _children(obj, deep=True))


def _children(obj, deep=False):
    """obj and the fitted estimators it holds (pipelines, unions, searches, ensembles)."""
    yield obj
    inner = []
    if hasattr(obj, "steps"):
        inner = [s for _, s in obj.steps]
    elif hasattr(obj, "transformer_list"):
        inner = [t for _, t in obj.transformer_list]
    for attr in ("best_estimator_", "estimator_"):
        if hasattr(obj, attr) and getattr(obj, attr) is not obj:
            inner.append(getattr(obj, attr))
    if isinstance(getattr(obj, "estimators_", None), list):
        inner.extend(obj.estimators_)
    for child in inner:
        if child is None or isinstance(child, str):
            continue
        if deep:
            yield from _children(child, deep=True)
        else:
            yield child


def _adapt_all(obj, X, reference, batch_size, verbose, base) -> None:
    if isinstance(obj, base):
        _adapt_estimator(obj, X, reference, batch_size, verbose)
        return
    if hasattr(obj, "steps"):  # Pipeline (sklearn or imbalanced-learn)
        steps = [s for _, s in obj.steps if s is not None and not isinstance(s, str)]
        Xt, Rt = X, reference
        for i, step in enumerate(steps):
            if _holds_skcxr(step):
                _adapt_all(step, Xt, Rt, batch_size, verbose, base)
            if not any(_holds_skcxr(s) for s in steps[i + 1:]):
                return
            if hasattr(step, "transform"):  # samplers resample only in fit
                Xt = step.transform(Xt)
                Rt = None if Rt is None else step.transform(Rt)
        return
    for child in _children(obj):
        if child is not obj and _holds_skcxr(child):
            _adapt_all(child, X, reference, batch_size, verbose, base)


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _adapt_estimator(est, X, reference, batch_size, verbose) -> None:
    from ._network import CXRNet
    from .images import check_images, data_fingerprint

    check_is_fitted(est)
    name = type(est).__name__
    if getattr(est, "quantized_", None) is not None:
        raise ValueError(f"{name} with precision='int8' runs a quantized copy of the backbone "
                         "whose statistics are folded into its weights; adapt a fp32/bf16 "
                         "model (set_params(precision='auto') and fit again).")
    network = est.module_.backbone if isinstance(est.module_, CXRNet) else est.module_
    layers = _batchnorms(network)
    if not layers:
        raise ValueError(f"{name}: the backbone has no BatchNorm layer with running "
                         "statistics; there is nothing for adapt_batchnorm to re-estimate.")
    source = check_images(X)
    if len(source) < 2:
        raise ValueError(f"adapt_batchnorm needs at least 2 target images; got {len(source)}.")
    if reference is None and getattr(est, "batchnorm", None) != "train":
        warnings.warn(
            f"{name}: its frozen BatchNorm layers hold the pretraining data's statistics, "
            "not those of the images it was trained on; replacing them by the new site's "
            "moves the new site's images away from what the trained layers saw. Pass "
            "reference=<images of the training site> to map the new site's statistics onto "
            "the training site's instead.", UserWarning, stacklevel=4)
    run = _MomentPass(network, est, batch_size, verbose)
    ref = None
    if reference is not None:
        ref_source = check_images(reference)
        ref = run.moments(ref_source, adapt=False, ref=None, desc="AdaBN reference")
    target = run.moments(source, adapt=True, ref=ref, desc="AdaBN")
    for k, layer in enumerate(layers):  # the estimator's own layers
        mean, var = _mapped(target[k], None if ref is None else ref[k],
                            (layer.running_mean, layer.running_var), layer.eps)
        with torch.no_grad():
            layer.running_mean.copy_(mean.to(layer.running_mean))
            layer.running_var.copy_(var.to(layer.running_var))
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(layer.running_mean.numpy().tobytes())
        digest.update(layer.running_var.numpy().tobytes())
    provenance = dict(est.provenance_)
    record = {"method": "batchnorm",
              "reference": ("AdaBN (Li et al. 2016)" if ref is None else
                            "AdaBN mapped onto the reference images' statistics"),
              "n_images": len(source),
              "images_sha256": data_fingerprint(source, np.zeros(len(source))),
              "n_reference_images": 0 if ref is None else len(ref_source),
              "reference_sha256": None if ref is None else
              data_fingerprint(ref_source, np.zeros(len(ref_source))),
              "n_layers": len(layers), "statistics_sha256": digest.hexdigest(),
              "state_sha256_before": provenance["state_sha256"]}
    provenance["adaptations"] = [*provenance.get("adaptations", []), record]
    # what keys every cache, compiled model and conversion: adapted outputs never mix
    provenance["state_sha256"] = hashlib.sha256(
        (provenance["state_sha256"] + digest.hexdigest()).encode()).hexdigest()
    est.provenance_ = provenance


def _mapped(target, ref, original, eps: float):
    """A layer's new (running_mean, running_var) from its input's moments on the target
    ``(mean, var)``; with the reference's moments ``(mean, var)`` and the layer's own
    ``original`` statistics, such that at inference the layer's normalised output has on the
    target the mean and variance it has on the reference with its own statistics."""
    mean_t, var_t = target
    if ref is None:  # the batch statistics themselves (what training-mode BN uses)
        return mean_t, var_t
    mean_r, var_r = ref
    mean_0 = original[0].double().to(mean_t.device)
    scale_0 = (original[1].double().to(mean_t.device) + eps).sqrt()
    scale = var_t.sqrt() * scale_0 / var_r.sqrt().clamp_min(1e-12)
    return mean_t - scale * (mean_r - mean_0) / scale_0, (scale * scale - eps).clamp_min(0)


class _MomentPass:
    """Passes over images through one copy of a network in eval mode, summing every
    BatchNorm layer's input moments per channel (each batch's sums in float32, their total
    in float64). With ``adapt``, each layer first sets its statistics from the batch's own
    moments (:func:`_mapped`), so the layers after it see what they will see after the
    adaptation; otherwise the layers keep their statistics (a reference pass, which must
    come first: the copy is shared)."""

    def __init__(self, network, est, batch_size, verbose):
        self.est, self.batch_size, self.verbose = est, batch_size, verbose
        self.device = est._execution().device
        self.work = copy.deepcopy(network).to(self.device).eval()
        self.layers = _batchnorms(self.work)
        self.originals = [(m.running_mean.clone(), m.running_var.clone()) for m in self.layers]

    def moments(self, source, *, adapt: bool, ref, desc: str):
        from ._runtime import run_batches
        from .images import make_loader

        sums = [[0, 0.0, 0.0] for _ in self.layers]

        def hook(k):
            def pre(module, inputs):
                x = inputs[0].detach()
                dims = [d for d in range(x.dim()) if d != 1]
                n = x.numel() // x.shape[1]
                s, q = x.sum(dims).double(), (x * x).sum(dims).double()
                sums[k][0] += n
                sums[k][1] = sums[k][1] + s
                sums[k][2] = sums[k][2] + q
                if adapt:
                    mean = s / n
                    m, v = _mapped((mean, (q / n - mean * mean).clamp_min(0)),
                                   None if ref is None else ref[k], self.originals[k],
                                   module.eps)
                    module.running_mean.copy_(m.to(module.running_mean))
                    module.running_var.copy_(v.to(module.running_var))
            return pre

        handles = [m.register_forward_pre_hook(hook(k)) for k, m in enumerate(self.layers)]
        prep = self.est.preprocessing_.with_view("none")
        loader = make_loader(source, prep, batch_size=self.batch_size or self.est.batch_size,
                             num_workers=self.est.num_workers)
        try:
            with torch.no_grad():
                run_batches(lambda b: self.work(prep.normalize(b).float())[:, :1], loader,
                            len(source), device=self.device, verbose=self.verbose, desc=desc)
        finally:
            for h in handles:
                h.remove()
        out = []
        for n, s, q in sums:
            mean = s / n
            out.append((mean.cpu(), (q / n - mean * mean).clamp_min(0).cpu()))
        return out


# ===================================================================== per-site scaling

class SiteStandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardise features per site (hospital, scanner), driven by site ids.

    ``fit(X, sites=...)`` stores each site's feature mean and standard deviation;
    ``transform(X, sites=...)`` standardises each row by its site's statistics. A site
    not seen at ``fit`` is standardised by the statistics of its own rows in the call
    (transductive: it uses the new site's unlabelled features; at least ``min_rows`` of
    them). Without ``sites`` every row is one site.

    Inside a Pipeline, ``sites`` reach it through scikit-learn's metadata routing
    (requested by default): ``with sklearn.config_context(enable_metadata_routing=True):
    pipe.fit(X, y, sites=s); pipe.predict(X_new, sites=s_new)``.

    Parameters
    ----------
    min_rows : int, default=20
        Rows a site needs for its statistics (at ``fit``, and for a new site at
        ``transform``).
    """

    __metadata_request__fit = {"sites": True}
    __metadata_request__transform = {"sites": True}

    def __init__(self, *, min_rows: int = 20):
        self.min_rows = min_rows

    def fit(self, X, y=None, sites=None):
        """Store each site's feature mean and standard deviation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features (e.g. :class:`~skcxr.FeatureExtractorTransformer`'s).
        y : None
            Ignored.
        sites : array-like of shape (n_samples,), default=None
            Each row's site id; None: every row is one site.

        Returns
        -------
        self : SiteStandardScaler
            The fitted scaler.
        """
        X = validate_data(self, X, dtype=np.float64)
        sites = self._sites(sites, len(X))
        self.sites_ = {}
        for s in np.unique(sites):
            self.sites_[s] = self._stats(X[sites == s], s)
        return self

    def _sites(self, sites, n):
        if sites is None:
            return np.zeros(n, dtype=np.int64)
        sites = np.asarray(sites)
        if sites.shape != (n,):
            raise ValueError(f"sites must have one id per row ({n}); got shape {sites.shape}.")
        return sites

    def _stats(self, X, site):
        if len(X) < self.min_rows:
            raise ValueError(f"site {site!r} has {len(X)} rows; per-site statistics need at "
                             f"least min_rows={self.min_rows}.")
        std = X.std(0)
        return X.mean(0), np.where(std > 0, std, 1.0)

    def transform(self, X, sites=None):
        """Standardise each row by its site's statistics.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        sites : array-like of shape (n_samples,), default=None
            Each row's site id; a site not seen at ``fit`` is standardised by its own rows'
            statistics (at least ``min_rows`` of them). None: every row is one site.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            The standardised features.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        sites = self._sites(sites, len(X))
        out = np.empty_like(X)
        for s in np.unique(sites):
            rows = sites == s
            mean, std = self.sites_[s] if s in self.sites_ else self._stats(X[rows], s)
            out[rows] = (X[rows] - mean) / std
        return out

    def fit_transform(self, X, y=None, sites=None):
        """Fit, then standardise ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        y : None
            Ignored.
        sites : array-like of shape (n_samples,), default=None
            Each row's site id; None: every row is one site.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            The standardised features.
        """
        return self.fit(X, y, sites=sites).transform(X, sites=sites)

"""Prior (label) shift: probabilities moved to a new prevalence by Bayes' rule, and the EM
estimate of that prevalence with a check of its assumption. Public in
:mod:`skcxr.adaptation`, whose docstring says what each method assumes."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted


class PriorShiftWarning(UserWarning):
    """The label-shift assumption (``p(x | y)`` unchanged) looks violated."""


def _prior(value, k: int, what: str) -> np.ndarray:
    p = np.asarray(value, dtype=np.float64).ravel()
    if p.size == 1 and k == 2:
        p = np.array([1 - p[0], p[0]])
    if p.size != k or (p <= 0).any() or (p >= 1).any() or not np.isclose(p.sum(), 1):
        raise ValueError(f"{what} must be {k} class probabilities in (0, 1) summing to 1 "
                         f"(or, for two classes, the positive class's); got {value!r}.")
    return p


def _proba(proba) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape (n, n_classes); got {p.shape}.")
    return p


def adjust_to_prior(proba, source_prior, target_prior) -> np.ndarray:
    """Move posterior probabilities from the prior they were trained for to another.

    ``p_t(k | x) ∝ p_s(k | x) * target_prior[k] / source_prior[k]`` (Bayes' rule; exact when
    only the class prevalences differ and ``proba`` are calibrated at ``source_prior``).
    For two classes, a prior may be given as the positive class's prevalence alone.

    Parameters
    ----------
    proba : array-like of shape (n, n_classes) or (n,)
        The model's probabilities (1-D: the positive class's, for two classes).
    source_prior : array-like or float
        The prevalence the model's probabilities reflect: the training rows' (with their
        loss weights: ``class_weight="balanced"`` trains for a uniform prior), see
        :func:`training_prior`.
    target_prior : array-like or float
        The prevalence to move them to.

    Returns
    -------
    ndarray of shape (n, n_classes)
        The moved probabilities; each row sums to 1.
    """
    p = _proba(proba)
    k = p.shape[1]
    w = _prior(target_prior, k, "target_prior") / _prior(source_prior, k, "source_prior")
    q = p * w
    return q / q.sum(1, keepdims=True)


class PriorEstimate:
    """What :func:`estimate_prior` found.

    Parameters
    ----------
    prior : ndarray
        Estimated target prevalence per class.
    n_iter : int
        EM iterations run.
    converged : bool
        Whether the estimate moved by less than ``tol`` before ``max_iter``.
    ks_statistic, ks_critical : float or None
        The largest distance between the target's score distribution and the mixture of
        the source classes' score distributions at ``prior``, and the 95% critical value
        it is compared with (None without a source reference).

    Attributes
    ----------
    assumption_holds : bool or None
        ``ks_statistic <= ks_critical`` (None without a source reference).
    """

    def __init__(self, prior, n_iter, converged, ks_statistic=None, ks_critical=None):
        self.prior = prior
        self.n_iter = n_iter
        self.converged = converged
        self.ks_statistic = ks_statistic
        self.ks_critical = ks_critical
        self.assumption_holds = (None if ks_statistic is None
                                 else bool(ks_statistic <= ks_critical))

    def __repr__(self):
        ks = ("" if self.ks_statistic is None else
              f", ks={self.ks_statistic:.3f} (critical {self.ks_critical:.3f})")
        return (f"PriorEstimate(prior={np.round(self.prior, 4).tolist()}, "
                f"n_iter={self.n_iter}, converged={self.converged}{ks})")


def estimate_prior(proba, source_prior, *, source_proba=None, source_y=None,
                   max_iter: int = 1000, tol: float = 1e-8) -> PriorEstimate:
    """Estimate the target prevalence from unlabelled probabilities by EM, and check it.

    The EM of Saerens et al. (2002), with a check of its assumption (only the prevalence
    changed).

    Parameters
    ----------
    proba : array-like (n, n_classes) or (n,)
        The model's probabilities on the target images (calibrated at ``source_prior``).
    source_prior : array-like or float
        The prior those probabilities reflect (:func:`training_prior`).
    source_proba, source_y : array-like, optional
        The same model's probabilities on held-out *source* rows (validation or
        out-of-fold rows, never training rows) and their labels: the reference for the
        assumption check. Under pure label shift the target's distribution of each class
        score is the mixture ``sum_k prior[k] F_k`` of the source classes' distributions
        ``F_k``; the largest CDF distance (Kolmogorov-Smirnov) is compared with its 95%
        two-sample critical value, and a :class:`PriorShiftWarning` is given when it is
        larger. Without them no check is possible and a warning says so.
    max_iter : int, default=1000
        EM iterations at most.
    tol : float, default=1e-8
        EM stops when no class's estimate moves by more than this.

    Returns
    -------
    PriorEstimate
        The prior, the iterations, whether EM converged, and the check's statistics.
    """
    p = _proba(proba)
    k = p.shape[1]
    ps = _prior(source_prior, k, "source_prior")
    prior, converged, it = ps.copy(), False, 0
    for it in range(1, max_iter + 1):
        q = p * (prior / ps)
        q /= q.sum(1, keepdims=True)
        new = q.mean(0)
        if np.abs(new - prior).max() < tol:
            prior, converged = new, True
            break
        prior = new
    if source_proba is None or source_y is None:
        warnings.warn("estimate_prior without source_proba/source_y cannot check that only "
                      "the prevalence changed; pass held-out source predictions to check.",
                      PriorShiftWarning, stacklevel=2)
        return PriorEstimate(prior, it, converged)
    sp = _proba(source_proba)
    sy = np.asarray(source_y)
    labels = np.unique(sy)
    if len(labels) != k or sp.shape[1] != k:
        raise ValueError(f"source_y has {len(labels)} classes and source_proba {sp.shape[1]} "
                         f"columns; the target probabilities have {k}.")
    codes = np.searchsorted(labels, sy)
    counts = np.bincount(codes, minlength=k)
    d = 0.0
    for col in range(k if k > 2 else 1):
        c = -1 if k == 2 else col
        t = np.sort(p[:, c])
        grid = np.unique(np.r_[t, sp[:, c]])
        target_cdf = np.searchsorted(t, grid, side="right") / len(t)
        mix = sum(prior[j] * np.searchsorted(np.sort(sp[codes == j, c]), grid, side="right")
                  / counts[j] for j in range(k))
        d = max(d, float(np.abs(target_cdf - mix).max()))
    n_eff = 1.0 / float(np.sum(prior ** 2 / counts))
    critical = 1.358 * np.sqrt(1 / len(p) + 1 / n_eff)
    estimate = PriorEstimate(prior, it, converged, d, float(critical))
    if not estimate.assumption_holds:
        warnings.warn(
            f"the target's score distribution is not a mixture of the source classes' (KS "
            f"distance {d:.3f} > {critical:.3f} at the estimated prior "
            f"{np.round(prior, 3).tolist()}): p(x | y) looks changed (covariate or concept "
            "shift), so the prior estimate, and a correction by it, may make things worse.",
            PriorShiftWarning, stacklevel=2)
    return estimate


def training_prior(estimator) -> np.ndarray:
    """Return the class prior a fitted skcxr classifier's probabilities reflect.

    That is its training rows' class frequencies weighted by their loss weights (class and
    sample weights), so ``class_weight="balanced"`` gives a uniform prior.

    Parameters
    ----------
    estimator : PretrainedCNNClassifier
        A fitted single-label skcxr classifier (it reads ``fit_rows_``).

    Returns
    -------
    ndarray of shape (n_classes,)
        The prior, summing to 1, in the order of ``classes_``.
    """
    check_is_fitted(estimator)
    rows = getattr(estimator, "fit_rows_", None)
    if rows is None or rows.task not in ("binary", "multiclass"):
        raise ValueError(f"training_prior reads a single-label skcxr classifier's fit_rows_; "
                         f"pass source_prior for a {type(estimator).__name__}.")
    y = rows.y[rows.train].astype(np.int64)  # rows.weights: sample times class weight
    prior = np.bincount(y, weights=rows.weights[rows.train], minlength=len(rows.classes))
    return prior / prior.sum()


class PriorAdjustedClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose probabilities are moved to a target prevalence (Bayes' rule).

    Parameters
    ----------
    estimator : classifier
        Fitted by ``fit`` (a clone); wrap a model that is already fitted in
        ``sklearn.frozen.FrozenEstimator`` to use it as it is.
    target_prior : array-like, float or "estimate"
        The target site's class prevalence (for two classes, the positive class's), known
        from outside the evaluation labels; or ``"estimate"``: EM on the probabilities of
        the images passed to ``predict_proba`` (:func:`estimate_prior`; transductive, and
        then a prediction depends on the other images of the call).
    source_prior : array-like, float or "training", default="training"
        The prior the estimator's probabilities reflect; "training" reads it from a skcxr
        classifier (:func:`training_prior`).
    decision : {"bayes", "keep"}, default="bayes"
        "bayes": predict the most probable class under the target prior (the decision that
        minimises errors there). "keep": the estimator's own decisions (right for a
        threshold chosen for a prior-free objective, such as balanced accuracy).
    """

    def __init__(self, estimator, *, target_prior, source_prior="training", decision="bayes"):
        self.estimator = estimator
        self.target_prior = target_prior
        self.source_prior = source_prior
        self.decision = decision

    def fit(self, X, y, **fit_params):
        """Fit a clone of ``estimator`` and read its source prior.

        Parameters
        ----------
        X : array-like
            Training inputs, as ``estimator`` takes them.
        y : array-like of shape (n_samples,)
            Class labels.
        **fit_params : dict
            Passed to the estimator's ``fit``.

        Returns
        -------
        self : PriorAdjustedClassifier
            The fitted classifier.
        """
        from sklearn.base import clone

        est = clone(self.estimator).fit(X, y, **fit_params)
        return self._set(est)

    def _set(self, est):
        if self.decision not in ("bayes", "keep"):
            raise ValueError(f"decision must be 'bayes' or 'keep'; got {self.decision!r}.")
        self.estimator_ = est
        self.classes_ = est.classes_
        k = len(self.classes_)
        if isinstance(self.source_prior, str) and self.source_prior == "training":
            inner = getattr(est, "estimator", est)  # FrozenEstimator
            self.source_prior_ = training_prior(inner)
        else:
            self.source_prior_ = _prior(self.source_prior, k, "source_prior")
        if not (isinstance(self.target_prior, str) and self.target_prior == "estimate"):
            _prior(self.target_prior, k, "target_prior")
        return self

    def _target(self, proba):
        if isinstance(self.target_prior, str) and self.target_prior == "estimate":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PriorShiftWarning)
                return estimate_prior(proba, self.source_prior_).prior
        return self.target_prior

    def predict_proba(self, X):
        """Return the estimator's probabilities moved to the target prior.

        Parameters
        ----------
        X : array-like
            Inputs, as the estimator takes them.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Probabilities under ``target_prior`` (with ``"estimate"``: the prior EM finds
            on these inputs).
        """
        check_is_fitted(self)
        proba = self.estimator_.predict_proba(X)
        return adjust_to_prior(proba, self.source_prior_, self._target(proba))

    def predict(self, X):
        """Predict classes: the most probable under the target prior, or as the estimator.

        Parameters
        ----------
        X : array-like
            Inputs, as the estimator takes them.

        Returns
        -------
        ndarray of shape (n_samples,)
            Class labels (``decision="keep"``: the estimator's own).
        """
        if self.decision == "keep":
            check_is_fitted(self)
            return self.estimator_.predict(X)
        return self.classes_[self.predict_proba(X).argmax(1)]


def adjust_prior(estimator, target_prior, *, source_prior="training",
                 decision: str = "bayes") -> PriorAdjustedClassifier:
    """Move a fitted classifier to ``target_prior``, as it is (nothing refitted, no data read).

    Parameters
    ----------
    estimator : classifier
        A fitted classifier with ``predict_proba``.
    target_prior : array-like, float or "estimate"
        As for :class:`PriorAdjustedClassifier`.
    source_prior : array-like, float or "training", default="training"
        The prior the estimator's probabilities reflect; "training" reads it from a skcxr
        classifier, or averages it over the skcxr members of an ensemble
        (``VotingClassifier``'s ``estimators_``).
    decision : {"bayes", "keep"}, default="bayes"
        As for :class:`PriorAdjustedClassifier`.

    Returns
    -------
    PriorAdjustedClassifier
        Fitted, around ``FrozenEstimator(estimator)``.
    """
    from sklearn.frozen import FrozenEstimator

    check_is_fitted(estimator)
    if isinstance(source_prior, str) and source_prior == "training":
        members = getattr(estimator, "estimators_", None)
        source_prior = (np.mean([training_prior(m) for m in members], axis=0)
                        if isinstance(members, list) else training_prior(estimator))
    model = PriorAdjustedClassifier(FrozenEstimator(estimator), target_prior=target_prior,
                                    source_prior=source_prior, decision=decision)
    return model._set(model.estimator)

"""External validation: a protocol scored by internal cross-validation and on a second
site, with intervals for both and for their gap; public in :mod:`skcxr.evaluation`
(:func:`~skcxr.evaluation.external_validation`, :class:`~skcxr.evaluation.ExternalValidation`).

Adapted variants (which see the external site's *unlabelled* images) are reported apart,
labelled transductive. The external labels are read after every external prediction
exists, and only to score them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._bootstrap import DEFAULT_METRICS, METRICS, _bootstrap, _offset, _resampled


@dataclass
class ExternalValidation:
    """What :func:`external_validation` measured.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per (setting, metric): ``setting`` ("internal CV", "external", or an
        adapted variant marked transductive), ``estimate``, ``ci_low``, ``ci_high``, and for
        every setting but the internal one the ``gap`` to the internal estimate (external -
        internal) with its interval (``gap_low``, ``gap_high``: internal and external
        resampled independently).
    estimator : estimator
        The protocol fitted on all the internal rows (what was scored externally).
    internal : pandas.DataFrame
        Out-of-fold ``score``, ``pred``, ``y`` and ``fold`` of each internal row.
    external : dict of pandas.DataFrame
        Per setting, ``score``, ``pred`` and ``y`` of each external row.
    """

    table: pd.DataFrame
    estimator: object
    internal: pd.DataFrame
    external: dict = field(default_factory=dict)


def _positive_score(estimator, X):
    proba = np.asarray(estimator.predict_proba(X))
    return proba[:, -1] if proba.ndim == 2 else proba


def external_validation(estimator, X, y, X_external, y_external, *, cv=5, groups=None,
                        external_groups=None, fit_params=None, adaptations=None,
                        metrics=DEFAULT_METRICS, n_resamples: int = 1000,
                        confidence: float = 0.95, random_state=0, n_jobs=None
                        ) -> ExternalValidation:
    """Score a protocol by internal cross-validation and on an external site, with CIs.

    1. Internal: out-of-fold predictions of ``estimator`` (a clone per fold of ``cv``; with
       ``groups``, a grouped splitter keeps each patient in one fold: pass e.g.
       ``StratifiedGroupKFold``) on ``X, y``; pooled and bootstrapped by patient.
    2. External: ``estimator`` refitted on all of ``X, y`` predicts ``X_external``. Its
       decision rule (``predict``) is the one it learned on ``X, y``. ``y_external`` is
       read after the predictions exist, only to score them: no epoch, threshold,
       calibration or candidate can depend on it.
    3. Adaptations (optional, **transductive**: they use the external site's unlabelled
       images, never its labels): ``{"name": callable(fitted, X_external) -> adapted}``,
       e.g. ``{"AdaBN": adapt_batchnorm}`` (:mod:`skcxr.adaptation`); each is scored on
       the same external rows and reported as its own setting, named ``"<name>
       (transductive)"``.

    ``fit_params`` (e.g. ``{"groups": g}`` for a classifier that splits its inner
    validation by patient) go to every fit; the fold's own rows of them.

    Parameters
    ----------
    estimator : estimator
        The protocol: a binary classifier (or pipeline), cloned for every fit.
    X, y : array-like
        The internal site's images and labels.
    X_external, y_external : array-like
        The external site's images and labels (the labels only score).
    cv : int or cross-validation splitter, default=5
        The internal folds (``check_cv``; stratified for an int).
    groups : array-like of shape (n,), default=None
        Internal patient ids: for the splitter and the bootstrap.
    external_groups : array-like, default=None
        External patient ids: for the bootstrap.
    fit_params : dict, default=None
        Passed to every fit (each fold gets its rows of them).
    adaptations : dict, default=None
        Name -> ``callable(fitted, X_external)`` returning an adapted model (transductive).
    metrics : sequence of str, default=DEFAULT_METRICS
        Names in :data:`METRICS`.
    n_resamples : int, default=1000
        Bootstrap resamples.
    confidence : float, default=0.95
        Two-sided percentile interval.
    random_state : int, default=0
        Seeds the resampling.
    n_jobs : int, default=None
        Folds fitted in parallel (joblib, as in ``cross_val_predict``); the refit on all
        of ``X, y`` follows them. ``None``: one at a time unless inside a
        ``joblib.parallel_config`` block.

    Returns
    -------
    ExternalValidation
        The table of settings and metrics, the refitted estimator, and every prediction.
    """
    from sklearn.base import clone
    from sklearn.model_selection import check_cv
    from sklearn.utils import indexable
    from sklearn.utils.parallel import Parallel, delayed

    X, y = indexable(X, y)
    y = np.asarray(y)
    y_external = np.asarray(y_external)
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"external_validation scores binary targets; y has classes "
                         f"{classes.tolist()}.")
    if not np.isin(np.unique(y_external), classes).all():
        raise ValueError(f"y_external has classes {np.unique(y_external).tolist()} that the "
                         f"internal data do not ({classes.tolist()}).")
    if len(X_external) != len(y_external):
        raise ValueError(f"X_external has {len(X_external)} rows, y_external "
                         f"{len(y_external)}.")
    fit_params = dict(fit_params or {})
    splitter = check_cv(cv, y, classifier=True)
    n = len(y)
    score = np.full(n, np.nan)
    pred = np.empty(n, dtype=y.dtype)
    fold = np.full(n, -1)
    splits = list(splitter.split(X, y, groups))
    folds = Parallel(n_jobs=n_jobs)(
        delayed(_fit_and_score_fold)(clone(estimator), X, y, train, test, fit_params)
        for train, test in splits)
    for k, ((_, test), (fold_score, fold_pred)) in enumerate(zip(splits, folds)):
        score[test] = fold_score
        pred[test] = fold_pred
        fold[test] = k
    internal = pd.DataFrame({"score": score, "pred": pred, "y": y, "fold": fold})
    fitted = clone(estimator).fit(X, y, **fit_params)
    settings = {"external": fitted}
    for name, adapt in (adaptations or {}).items():
        settings[f"{name} (transductive)"] = adapt(fitted, X_external)
    external = {}
    for name, model in settings.items():  # every prediction before any external label
        external[name] = pd.DataFrame({"score": _positive_score(model, X_external),
                                       "pred": model.predict(X_external)})
    kw = dict(metrics=metrics, classes=classes, n_resamples=n_resamples,
              confidence=confidence, random_state=random_state)
    inside, inside_resamples = _bootstrap(y, score, pred, groups=groups, **kw)
    rows = [inside.assign(setting="internal CV")]
    alpha = (1 - confidence) / 2
    for name, frame in external.items():
        frame["y"] = y_external
        outside, outside_resamples = _bootstrap(y_external, frame["score"], frame["pred"],
                                    groups=external_groups,
                                    **{**kw, "random_state": _offset(random_state)})
        gaps = {}
        for metric in metrics:
            fn = METRICS[metric][0]
            a = _resampled(fn, y, score, pred, classes, inside_resamples)
            b = _resampled(fn, y_external, frame["score"].to_numpy(), frame["pred"].to_numpy(),
                           classes, outside_resamples)
            d = b - a
            d = d[np.isfinite(d)]
            gaps[metric] = (outside.loc[metric, "estimate"] - inside.loc[metric, "estimate"],
                            *np.quantile(d, [alpha, 1 - alpha]))
        outside["gap"] = [gaps[m][0] for m in metrics]
        outside["gap_low"] = [gaps[m][1] for m in metrics]
        outside["gap_high"] = [gaps[m][2] for m in metrics]
        rows.append(outside.assign(setting=name))
    table = pd.concat(rows).rename_axis("metric").reset_index()
    table = table[["setting", "metric", "estimate", "ci_low", "ci_high", "gap", "gap_low",
                   "gap_high", "n", "n_groups"]]
    return ExternalValidation(table=table, estimator=fitted, internal=internal,
                              external=external)


def _fit_and_score_fold(model, X, y, train, test, fit_params):
    """One internal fold: ``model`` fitted on the ``train`` rows (and their rows of
    ``fit_params``), its positive-class scores and predictions on the ``test`` rows."""
    params = {key: _rows(v, train) for key, v in fit_params.items()}
    model.fit(_take(X, train), y[train], **params)
    Xt = _take(X, test)
    return _positive_score(model, Xt), model.predict(Xt)


def _take(X, rows):
    from sklearn.utils import _safe_indexing

    return _safe_indexing(X, rows)


def _rows(value, rows):
    if value is None or np.isscalar(value):
        return value
    return _take(value, rows)

"""Metrics with bootstrap confidence intervals, and external validation.

One home for the numbers a reader of a CXR study needs: a metric together with the
uncertainty of its estimate, on the internal (cross-validated) data and on a second site.

* :func:`bootstrap_metrics`: point estimates and percentile bootstrap 95% intervals of
  threshold-free (ROC AUC, PR AUC) and decision metrics (accuracy, balanced accuracy,
  sensitivity, specificity, PPV, NPV, F1) from predictions. Resampling is stratified by
  class (each resample keeps the class counts, so every resample has both classes and the
  interval is that of the study's design); with ``groups`` (patient ids) whole patients are
  resampled, since one patient's images are not independent.
* :func:`external_validation`: a whole protocol (an unfitted estimator) scored by
  cross-validation on the internal data and, fitted on all of it, on an external site,
  with intervals for both and for their gap; adapted variants (which see the external
  site's *unlabelled* images) are reported apart, labelled transductive.

Nothing here picks a threshold, an epoch or a candidate: the decision rule is the
estimator's own (``predict``: its ``thresholds_`` when it has them), fixed before any
external label is read. The external labels are passed to scoring only, never to the
estimator.

Examples
--------
>>> import numpy as np
>>> from skcxr.evaluation import bootstrap_metrics
>>> rng = np.random.RandomState(0)
>>> y = np.r_[np.zeros(100), np.ones(100)].astype(int)
>>> score = y + rng.normal(0, 1, 200)
>>> table = bootstrap_metrics(y, score, metrics=("roc_auc",), n_resamples=200,
...                           random_state=0)
>>> row = table.loc["roc_auc"]
>>> bool(row.ci_low < row.estimate < row.ci_high)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

__all__ = [
    "METRICS",
    "ExternalValidation",
    "bootstrap_indices",
    "bootstrap_metrics",
    "external_validation",
]


# --------------------------------------------------------------------- metrics (vectorised)
# Each takes (y, score, pred) as (B, n) arrays (one row per resample) and returns (B,).

def _roc_auc(y, score, pred):
    """Mann-Whitney: mean rank of the positives, ties counted half."""
    ranks = rankdata(score, axis=1)
    n1 = y.sum(1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _average_precision(y, score, pred):
    """Average precision (scikit-learn's step-wise PR AUC), per row."""
    out = np.empty(len(y))
    for b in range(len(y)):
        order = np.argsort(-score[b], kind="mergesort")
        s, t = score[b][order], y[b][order]
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie block
        tp = np.cumsum(t)[last]
        precision = tp / (last + 1)
        recall_step = np.diff(np.r_[0, tp]) / max(t.sum(), 1)
        out[b] = float((precision * recall_step).sum())
    return out


def _counts(y, pred):
    tp = ((pred == 1) & (y == 1)).sum(1)
    tn = ((pred == 0) & (y == 0)).sum(1)
    fp = ((pred == 1) & (y == 0)).sum(1)
    fn = ((pred == 0) & (y == 1)).sum(1)
    return tp, tn, fp, fn


def _ratio(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _rate(numerator: str, denominator: tuple):
    """A metric ``count / sum(counts)`` over the confusion counts (tp, tn, fp, fn)."""
    names = ("tp", "tn", "fp", "fn")

    def metric(y, score, pred):
        counts = dict(zip(names, _counts(y, pred)))
        return _ratio(counts[numerator], sum(counts[c] for c in denominator))
    return metric


_sensitivity = _rate("tp", ("tp", "fn"))
_specificity = _rate("tn", ("tn", "fp"))
_ppv = _rate("tp", ("tp", "fp"))
_npv = _rate("tn", ("tn", "fn"))


def _accuracy(y, score, pred):
    return (y == pred).mean(1)


def _balanced_accuracy(y, score, pred):
    return (_sensitivity(y, score, pred) + _specificity(y, score, pred)) / 2


def _f1(y, score, pred):
    tp, tn, fp, fn = _counts(y, pred)
    return _ratio(2 * tp, 2 * tp + fp + fn)


#: Metric name -> (function of (y, score, pred) per resample row, needs a decision).
METRICS = {
    "roc_auc": (_roc_auc, False),
    "pr_auc": (_average_precision, False),
    "accuracy": (_accuracy, True),
    "balanced_accuracy": (_balanced_accuracy, True),
    "sensitivity": (_sensitivity, True),
    "specificity": (_specificity, True),
    "ppv": (_ppv, True),
    "npv": (_npv, True),
    "f1": (_f1, True),
}
DEFAULT_METRICS = ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "sensitivity",
                   "specificity")


# --------------------------------------------------------------------- resampling

def bootstrap_indices(y, *, groups=None, n_resamples: int = 1000, random_state=0) -> list:
    """Row indices of ``n_resamples`` stratified bootstrap resamples of ``y``.

    Without ``groups``: rows drawn with replacement within each class, so every resample
    keeps the class counts (returned as one ``(n_resamples, n)`` array). With ``groups``:
    whole groups drawn with replacement within each stratum of groups (a group's stratum is
    its most frequent class), so one patient's images stay together and the interval
    reflects patients, not images (a list of index arrays, whose lengths vary).
    Multi-label ``y`` ``(n, k)`` is stratified by its rows' label combinations.
    """
    rng = np.random.default_rng(random_state)
    y = np.asarray(y)
    strata = _strata(y)
    if groups is None:
        out = np.empty((n_resamples, len(strata)), dtype=np.int64)
        start = 0
        for c in np.unique(strata):
            rows = np.flatnonzero(strata == c)
            out[:, start:start + len(rows)] = rng.choice(rows, size=(n_resamples, len(rows)))
            start += len(rows)
        return out
    groups = np.asarray(groups)
    if len(groups) != len(strata):
        raise ValueError(f"groups has {len(groups)} entries for {len(strata)} rows; pass one "
                         "group (patient) id per row.")
    codes, group_of_row = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_of_row == g) for g in range(len(codes))]
    group_stratum = np.array([_mode(strata[m]) for m in members])
    by_stratum = [np.flatnonzero(group_stratum == c) for c in np.unique(group_stratum)]
    resamples = []
    for _ in range(n_resamples):
        drawn = np.concatenate([rng.choice(g, size=len(g)) for g in by_stratum])
        resamples.append(np.concatenate([members[g] for g in drawn]))
    return resamples


def _strata(y: np.ndarray) -> np.ndarray:
    if y.ndim == 2:
        return np.unique(y.astype(np.int64), axis=0, return_inverse=True)[1].ravel()
    return np.unique(y, return_inverse=True)[1].ravel()


def _mode(values: np.ndarray):
    vals, counts = np.unique(values, return_counts=True)
    return vals[counts.argmax()]


def _evaluate(fn, y, score, pred, resamples) -> np.ndarray:
    """``fn`` on every resample: vectorised when they have one length, else one by one."""
    if isinstance(resamples, np.ndarray):
        return fn(y[resamples], score[resamples], None if pred is None else pred[resamples])
    return np.array([fn(y[r][None], score[r][None], None if pred is None else pred[r][None])[0]
                     for r in resamples])


def _binary(y, classes=None) -> tuple[np.ndarray, object]:
    y = np.asarray(y)
    classes = np.unique(y) if classes is None else np.asarray(classes)
    if len(classes) != 2 or not np.isin(y, classes).all():
        raise ValueError(
            f"y has the classes {np.unique(y).tolist()!r}; these metrics are for a binary "
            "target (pass classes=[negative, positive] to say which is positive).")
    return (y == classes[1]).astype(np.int64), classes[1]


def bootstrap_metrics(y_true, y_score, y_pred=None, *, metrics=DEFAULT_METRICS, groups=None,
                      classes=None, n_resamples: int = 1000, confidence: float = 0.95,
                      random_state=0) -> pd.DataFrame:
    """Point estimates and bootstrap confidence intervals of binary metrics.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels (two classes; the second of ``classes``, or of the sorted labels, is the
        positive one).
    y_score : array-like of shape (n,) or (n, 2)
        Scores or probabilities of the positive class (a ``predict_proba`` output's second
        column is taken).
    y_pred : array-like of shape (n,), optional
        Decisions (the estimator's ``predict``, i.e. its own threshold). Needed for the
        decision metrics; without it only ``roc_auc`` and ``pr_auc`` are computed.
    metrics : sequence of str
        Names in :data:`METRICS`.
    groups : array-like of shape (n,), optional
        Patient ids: resample whole patients.
    n_resamples : int, default=1000
    confidence : float, default=0.95
        Two-sided percentile interval.
    random_state : int, default=0
        Seeds the resampling (an interval is reproducible).

    Returns
    -------
    pandas.DataFrame
        Indexed by metric: ``estimate`` (on the data as given), ``ci_low``, ``ci_high``,
        ``n`` (rows), ``n_groups``.
    """
    return _bootstrap(y_true, y_score, y_pred, metrics=metrics, groups=groups, classes=classes,
                      n_resamples=n_resamples, confidence=confidence,
                      random_state=random_state)[0]


def _bootstrap(y_true, y_score, y_pred, *, metrics, groups, classes, n_resamples, confidence,
               random_state):
    """:func:`bootstrap_metrics` and the resamples it drew (for intervals of differences)."""
    y, positive = _binary(y_true, classes)
    score = np.asarray(y_score, dtype=np.float64)
    if score.ndim == 2:
        score = score[:, -1]
    if len(score) != len(y):
        raise ValueError(f"y_score has {len(score)} rows for {len(y)} labels.")
    pred = None
    if y_pred is not None:
        pred = (np.asarray(y_pred) == positive).astype(np.int64)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}.")
    needs = [m for m in metrics if METRICS[m][1]]
    if needs and pred is None:
        raise ValueError(f"{needs} need decisions: pass y_pred (the estimator's predict).")
    resamples = bootstrap_indices(y, groups=groups, n_resamples=n_resamples,
                                  random_state=random_state)
    alpha = (1 - confidence) / 2
    rows = {}
    for name in metrics:
        fn = METRICS[name][0]
        estimate = float(fn(y[None], score[None], None if pred is None else pred[None])[0])
        values = _evaluate(fn, y, score, pred, resamples)
        values = values[np.isfinite(values)]
        lo, hi = (np.quantile(values, [alpha, 1 - alpha]) if len(values) else (np.nan,) * 2)
        rows[name] = {"estimate": estimate, "ci_low": float(lo), "ci_high": float(hi)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["n"] = len(y)
    table["n_groups"] = len(np.unique(groups)) if groups is not None else len(y)
    return table, resamples


# --------------------------------------------------------------------- external validation

@dataclass
class ExternalValidation:
    """What :func:`external_validation` measured.

    Attributes
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

    Returns
    -------
    ExternalValidation
    """
    from sklearn.base import clone
    from sklearn.model_selection import check_cv
    from sklearn.utils import indexable

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
    for k, (train, test) in enumerate(splitter.split(X, y, groups)):
        params = {key: _rows(v, train) for key, v in fit_params.items()}
        model = clone(estimator).fit(_take(X, train), y[train], **params)
        Xt = _take(X, test)
        score[test] = _positive_score(model, Xt)
        pred[test] = model.predict(Xt)
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


def _offset(random_state):
    return None if random_state is None else int(random_state) + 1


def _resampled(fn, y, score, pred, classes, resamples):
    yb = (np.asarray(y) == classes[1]).astype(np.int64)
    pb = (np.asarray(pred) == classes[1]).astype(np.int64)
    return _evaluate(fn, yb, np.asarray(score, dtype=np.float64), pb, resamples)


def _take(X, rows):
    from sklearn.utils import _safe_indexing

    return _safe_indexing(X, rows)


def _rows(value, rows):
    if value is None or np.isscalar(value):
        return value
    return _take(value, rows)

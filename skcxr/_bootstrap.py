"""The machinery behind every interval of :mod:`skcxr.evaluation`.

Metrics vectorised over bootstrap resamples (each takes ``(y, score, pred)`` as ``(B, n)``
arrays, one row per resample, and returns ``(B,)``), so 2,000 resamples cost milliseconds,
and the stratified (optionally patient-grouped) resampling itself. The public names
(:func:`~skcxr.evaluation.bootstrap_indices`, :data:`~skcxr.evaluation.METRICS`) are
documented and imported from :mod:`skcxr.evaluation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

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


ECE_BINS = 10


def _ece(y, score, pred, n_bins: int = ECE_BINS):
    """Expected calibration error of positive-class probabilities, per row: the count-weighted
    mean gap between the observed rate and the mean probability in equal-width bins (as
    :func:`skcxr.calibration.expected_calibration_error`); NaN for scores outside [0, 1]."""
    if np.nanmin(score) < 0 or np.nanmax(score) > 1:
        return np.full(len(y), np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1], right=True), 0, n_bins - 1)
    flat = (np.arange(len(y))[:, None] * n_bins + which).ravel()
    size = len(y) * n_bins
    gap = (np.bincount(flat, weights=y.ravel().astype(np.float64), minlength=size)
           - np.bincount(flat, weights=score.ravel(), minlength=size))
    return np.abs(gap.reshape(len(y), n_bins)).sum(1) / y.shape[1]


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
    "ece": (_ece, False),
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
    Multi-label ``y`` ``(n, k)`` is not stratified (its label combinations are mostly
    unique, and a stratum of one row would be drawn as itself in every resample): rows (or
    groups) are drawn from all of them; :func:`evaluate_predictions` stratifies each label's
    intervals by that label instead.

    Parameters
    ----------
    y : array-like of shape (n,) or (n, k)
        Labels (the strata), or a multi-label matrix.
    groups : array-like of shape (n,), default=None
        Patient ids: whole patients are drawn.
    n_resamples : int, default=1000
        How many resamples.
    random_state : int, default=0
        Seeds the draws.

    Returns
    -------
    ndarray of shape (n_resamples, n) or list of ndarray
        Row indices of each resample (a list with ``groups``).
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
        return np.zeros(len(y), dtype=np.int64)
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


def _offset(random_state):
    return None if random_state is None else int(random_state) + 1


def _resampled(fn, y, score, pred, classes, resamples):
    yb = (np.asarray(y) == classes[1]).astype(np.int64)
    pb = (np.asarray(pred) == classes[1]).astype(np.int64)
    return _evaluate(fn, yb, np.asarray(score, dtype=np.float64), pb, resamples)

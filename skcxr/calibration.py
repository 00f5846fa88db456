"""Calibration and decision thresholds, fitted after training on rows the network did not
train on, without refitting the network.

:class:`skcxr.PretrainedCNNClassifier` fits them on its inner validation rows
(``calibration=``, ``threshold=``); the functions here are public so that the same can be
done on any held-out predictions (out-of-fold ones, say).

* **Temperature scaling** (Guo et al., 2017): one scalar ``T`` divides the logits, chosen to
  minimise the negative log-likelihood of the held-out rows. It changes probabilities, not
  the ranking (ROC AUC is unchanged) nor, for single-label targets, the argmax.
* **Decision thresholds** per class (binary: on the positive class) or per label
  (multi-label), chosen for an objective: ``"balanced_accuracy"``, ``"f1"``, ``"youden"``
  (same optimum as balanced accuracy), or ``("sensitivity", 0.9)``: the highest threshold
  that keeps at least that sensitivity, i.e. the best specificity at that sensitivity.
* :func:`expected_calibration_error` and :func:`skcxr.plotting.plot_reliability` report
  calibration.

Examples
--------
>>> import numpy as np
>>> from skcxr.calibration import expected_calibration_error, fit_thresholds
>>> y = np.array([0, 0, 0, 1, 1, 1])
>>> p = np.array([0.1, 0.3, 0.6, 0.55, 0.8, 0.9])
>>> fit_thresholds(p, y, "binary", "balanced_accuracy").round(3).tolist()
[0.425]
>>> round(expected_calibration_error(y, p, n_bins=5), 3)
0.142
"""

from __future__ import annotations

import numpy as np

from ._validation import INVALID, NONE, VALID, Check, Options

__all__ = [
    "OBJECTIVES",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "fit_thresholds",
    "probabilities",
]

#: Threshold objectives by name; ``("sensitivity", s)`` with ``0 < s < 1`` is the other form.
OBJECTIVES = ("balanced_accuracy", "f1", "youden")


def _objective(value):
    if isinstance(value, str):
        return VALID if value in OBJECTIVES else INVALID
    ok = (isinstance(value, tuple) and len(value) == 2 and value[0] == "sensitivity"
          and isinstance(value[1], float) and 0 < value[1] < 1)
    return VALID if ok else INVALID


#: The allowed values of the classifier's ``calibration`` and ``threshold``.
CALIBRATION_CONSTRAINTS = {
    "calibration": [NONE, Options("temperature")],
    "threshold": [NONE, Check(_objective, f"one of {OBJECTIVES} or ('sensitivity', s) "
                                          "with 0 < s < 1")],
}


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax over classes, or a sigmoid per label for multi-label targets.

    Parameters
    ----------
    logits : ndarray of shape (n, k) or (views, n, k)
        Logits, or the logits of test-time augmentation views, whose probabilities are
        averaged (what ``predict_proba`` does with ``tta``).
    task : {"binary", "multiclass", "multilabel"}
        The target type (``FitRows.task``).

    Returns
    -------
    ndarray of shape (n, k), float64
        Probabilities.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if task == "multilabel":
        p = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    return p.mean(0) if p.ndim == 3 else p


def apply_temperature(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """Divide logits by a temperature (:func:`fit_temperature`).

    Parameters
    ----------
    logits : ndarray
        Logits of any shape.
    temperature : float or None
        The temperature; None leaves the logits as they are.

    Returns
    -------
    ndarray
        ``logits / temperature``, or ``logits`` itself.
    """
    return logits if temperature is None else logits / temperature


def _nll(logits, y, task) -> float:
    p = np.clip(probabilities(logits, task), 1e-12, 1 - 1e-12)
    if task == "multilabel":  # over the observed labels (NaN: missing)
        observed = ~np.isnan(y)
        y0 = np.where(observed, y, 0.0)
        return float(-(y0 * np.log(p) + (1 - y0) * np.log(1 - p))[observed].mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: str) -> float:
    """The temperature ``T`` in [0.05, 20] that minimises the held-out negative
    log-likelihood of ``logits / T`` (a bounded scalar search over ``log T``).

    Parameters
    ----------
    logits : ndarray of shape (n, k) or (views, n, k)
        Held-out logits; with views, the likelihood of the view-averaged probabilities.
    y : ndarray of shape (n,) or (n, k)
        Class codes ``0..k-1``, or the multi-label 0/1 matrix (NaN: a missing label, left
        out).
    task : {"binary", "multiclass", "multilabel"}
        The target type.

    Returns
    -------
    float
        The temperature.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    res = minimize_scalar(lambda t: _nll(logits / np.exp(t), y, task),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _best_threshold(score: np.ndarray, positive: np.ndarray, objective) -> float:
    """The threshold on ``score`` (predict positive when ``score >= t``) best for
    ``objective``; ties go to the middle of the best interval."""
    order = np.argsort(-score, kind="stable")
    s, pos = score[order], positive[order].astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5  # nothing to choose from: the default
    # thresholds at each distinct score: predict positive for every row with a score >= it
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(pos)[last], np.cumsum(~pos)[last]
    cand = s[last]
    sens, spec = tp / n_pos, 1 - fp / n_neg
    if isinstance(objective, tuple):  # ("sensitivity", target)
        ok = np.flatnonzero(sens >= objective[1] - 1e-12)
        i = ok[0]  # the highest threshold that reaches it: best specificity
        below = cand[i + 1] if i + 1 < len(cand) else 0.0
        return float((cand[i] + below) / 2) if below < cand[i] else float(cand[i])
    if objective == "f1":
        precision = tp / np.maximum(tp + fp, 1)
        value = 2 * precision * sens / np.maximum(precision + sens, 1e-12)
    else:  # balanced accuracy; Youden's J = sens + spec - 1 has the same optimum
        value = (sens + spec) / 2
    best = np.flatnonzero(value >= value.max() - 1e-12)
    i = best[len(best) // 2]
    below = cand[i + 1] if i + 1 < len(cand) else 0.0
    return float((cand[i] + below) / 2)


def fit_thresholds(proba: np.ndarray, y: np.ndarray, task: str, objective) -> np.ndarray:
    """Decision thresholds for ``objective``: ``[t]`` on the positive class's probability for
    binary targets, one per label for multi-label ones (on the rows where that label is
    observed: NaN is a missing label).

    Multiclass targets have no such thresholds (argmax decides): a ValueError says so.

    Parameters
    ----------
    proba : ndarray of shape (n, 2), (n,) or (n, L)
        Held-out probabilities (binary: both classes or the positive one).
    y : ndarray of shape (n,) or (n, L)
        Class codes 0/1, or the multi-label 0/1 matrix.
    task : {"binary", "multilabel"}
        The target type.
    objective : str or tuple
        One of :data:`OBJECTIVES`, or ``("sensitivity", s)``.

    Returns
    -------
    ndarray of shape (1,) or (L,)
        Predict positive where the probability is >= the threshold.
    """
    proba, y = np.asarray(proba), np.asarray(y)
    if task == "binary":
        score = proba[:, 1] if proba.ndim == 2 else proba
        return np.array([_best_threshold(score, y == 1, objective)])
    if task == "multilabel":  # each label on the rows where it is observed (not NaN)
        y = y.astype(np.float64)
        return np.array([_best_threshold(proba[~np.isnan(y[:, j]), j],
                                         y[~np.isnan(y[:, j]), j] > 0.5, objective)
                         for j in range(y.shape[1])])
    raise ValueError("threshold= applies to binary and multi-label targets; a multiclass "
                     "prediction is the most probable class. Use threshold=None.")


def expected_calibration_error(y_true, proba, n_bins: int = 15) -> float:
    """Expected calibration error: the absolute gap between accuracy and mean confidence in
    equal-width confidence bins, averaged with the bins' row counts as weights.

    ``proba``: ``(n,)`` positive-class probabilities with 0/1 ``y_true``, ``(n, k)`` class
    probabilities with labels ``0..k-1`` (confidence of the predicted class), or a
    multi-label ``(n, L)`` matrix with a 0/1 ``(n, L)`` ``y_true`` (every label's
    probability as a binary prediction, pooled; a missing label, NaN, left out).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, L)
        Labels (0/1, class codes, or the multi-label 0/1 matrix).
    proba : array-like of shape (n,), (n, k) or (n, L)
        Probabilities, as described above.
    n_bins : int, default=15
        Equal-width confidence bins.

    Returns
    -------
    float
        The expected calibration error, in [0, 1].
    """
    y, p = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    if p.ndim == 2 and y.ndim == 2:  # multi-label: pooled binary events, observed ones
        y, p = y.ravel().astype(np.float64), p.ravel()
        y, p = y[~np.isnan(y)], p[~np.isnan(y)]
    if p.ndim == 1:
        correct, conf = (y == 1).astype(float), p
    else:
        conf = p.max(1)
        correct = (p.argmax(1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)

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

import numpy as np
import pandas as pd

from ._bootstrap import (
    DEFAULT_METRICS,
    METRICS,
    _bootstrap,
    _ece,
    _evaluate,
    _roc_auc,
    _sensitivity,
    bootstrap_indices,
)
from ._external import ExternalValidation, external_validation

__all__ = [
    "METRICS",
    "TABLE_METRICS",
    "ExternalValidation",
    "bootstrap_indices",
    "bootstrap_metrics",
    "evaluate",
    "evaluate_predictions",
    "external_validation",
    "subgroup_metrics",
]


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
    classes : array-like of 2 labels, optional
        The two classes in order (the second is positive); default the sorted labels.
    n_resamples : int, default=1000
        Bootstrap resamples (0: point estimates only).
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


# --------------------------------------------------------------------- per class, label, subgroup

#: The metrics of :func:`evaluate_predictions`, per class (one-vs-rest) or label.
TABLE_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv",
                 "balanced_accuracy", "f1", "ece")
_COLUMNS = ["target", "metric", "estimate", "ci_low", "ci_high", "n", "n_positive",
            "n_groups"]


def _task_of(y: np.ndarray, proba: np.ndarray) -> str:
    if y.ndim == 2:
        if proba.shape != y.shape:
            raise ValueError(f"y_true is a multi-label {y.shape} matrix but y_proba has shape "
                             f"{proba.shape}; pass predict_proba's (n, n_labels) output.")
        return "multilabel"
    if proba.ndim == 1 or proba.shape[1] <= 2:
        return "binary"
    return "multiclass"


def _decisions(task, proba, y_pred, classes):
    """Decisions as class codes (multi-label: a 0/1 matrix), and how they were made."""
    if y_pred is not None:
        y_pred = np.asarray(y_pred)
        if task == "multilabel":
            return (y_pred > 0.5).astype(np.int64), "given"
        lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
        try:
            return np.array([lookup[v] for v in y_pred.tolist()]), "given"
        except KeyError as exc:
            raise ValueError(f"y_pred holds {exc.args[0]!r}, which is not one of the classes "
                             f"{list(lookup)}.") from None
    if task == "multilabel":
        return (proba >= 0.5).astype(np.int64), "probability >= 0.5"
    if proba.ndim == 1:
        return (proba >= 0.5).astype(np.int64), "probability >= 0.5"
    return proba.argmax(1), "most probable class"


def _one_target(y01, score, pred01, metrics, groups, n_resamples, alpha, rng_seed, name):
    """Rows of the table for one binary event (a class one-vs-rest, or a label)."""
    resamples = bootstrap_indices(y01, groups=groups, n_resamples=n_resamples,
                                  random_state=rng_seed) if n_resamples else None
    rows = []
    for metric in metrics:
        fn = METRICS[metric][0]
        estimate = float(fn(y01[None], score[None], pred01[None])[0])
        lo = hi = np.nan
        if resamples is not None and 0 < y01.sum() < len(y01):
            values = _evaluate(fn, y01, score, pred01, resamples)
            values = values[np.isfinite(values)]
            if len(values):
                lo, hi = np.quantile(values, [alpha, 1 - alpha])
        rows.append({"target": name, "metric": metric, "estimate": estimate,
                     "ci_low": float(lo), "ci_high": float(hi), "n": len(y01),
                     "n_positive": int(y01.sum()),
                     "n_groups": len(np.unique(groups)) if groups is not None else len(y01)})
    return rows, resamples


def evaluate_predictions(y_true, y_proba, y_pred=None, *, classes=None, labels=None,
                         groups=None, metrics=TABLE_METRICS, n_resamples: int = 1000,
                         confidence: float = 0.95, random_state=0) -> pd.DataFrame:
    """Compute metrics with bootstrap CIs per class (binary, multiclass) or per label.

    From predictions alone: a fitted model's on held-out data, or out-of-fold ones
    (``cross_val_predict(..., method="predict_proba")``). :func:`evaluate` is the same from
    a fitted estimator and data.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_labels)
        Labels, or a multi-label 0/1 indicator matrix; a missing label (NaN) leaves its row
        out of that label's metrics (``n`` counts the rows where it is observed).
    y_proba : array-like of shape (n,), (n, n_classes) or (n, n_labels)
        ``predict_proba`` output (a binary ``(n,)`` is the positive class's).
    y_pred : array-like, optional
        Decisions: the estimator's ``predict`` (its ``thresholds_`` when it has them).
        Without it: the most probable class, or probability >= 0.5 (binary, each label);
        the table's ``attrs["decision"]`` says which.
    classes : array-like, optional
        Class labels in ``y_proba``'s column order (an estimator's ``classes_``); default
        the sorted labels of ``y_true``.
    labels : sequence of str, optional
        Names of the multi-label columns (default ``"label 0"``, ...).
    groups : array-like of shape (n,), optional
        Patient ids: whole patients are resampled.
    metrics : sequence of str, default=TABLE_METRICS
        Names in :data:`METRICS`, computed for each class one-vs-rest (binary: the positive
        class only) or each label. ``ece`` is the expected calibration error of that
        class's (label's) probability, ten equal-width bins.
    n_resamples : int, default=1000
        As :func:`bootstrap_metrics`; 0 gives point estimates only.
    confidence : float, default=0.95
        As :func:`bootstrap_metrics`.
    random_state : int, default=0
        As :func:`bootstrap_metrics`.

    Returns
    -------
    pandas.DataFrame
        One row per (``target``, ``metric``): ``estimate``, ``ci_low``, ``ci_high``,
        ``n``, ``n_positive``, ``n_groups``. For multiclass, ``target="overall"`` rows add
        ``accuracy``, ``balanced_accuracy`` (mean recall), macro ``roc_auc`` and top-label
        ``ece`` (each from the same resamples as the per-class rows); for binary,
        ``accuracy``. Each class's (label's) resamples are stratified by that class.
    """
    y = np.asarray(y_true)
    proba = np.asarray(y_proba, dtype=np.float64)
    if len(proba) != len(y):
        raise ValueError(f"y_proba has {len(proba)} rows for {len(y)} labels.")
    if groups is not None and len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} rows; pass one group "
                         "(patient) id per row.")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}.")
    task = _task_of(y, proba)
    groups = None if groups is None else np.asarray(groups)
    alpha = (1 - confidence) / 2
    seed = 0 if random_state is None else int(random_state)
    rows = []
    if task == "multilabel":
        names = list(labels) if labels is not None else [f"label {j}" for j in
                                                         range(y.shape[1])]
        if len(names) != y.shape[1]:
            raise ValueError(f"labels has {len(names)} names for {y.shape[1]} label columns.")
        pred, decision = _decisions(task, proba, y_pred, None)
        y = y.astype(np.float64)
        y01 = (y > 0.5).astype(np.int64)
        for j, name in enumerate(names):  # each label on its observed rows (NaN: missing)
            obs = ~np.isnan(y[:, j])
            rows += _one_target(y01[obs, j], proba[obs, j], pred[obs, j], metrics,
                                None if groups is None else groups[obs], n_resamples, alpha,
                                seed + j, str(name))[0]
    else:
        classes = np.unique(y) if classes is None else np.asarray(classes)
        if not np.isin(y, classes).all():
            raise ValueError(f"y_true has labels {sorted(set(np.unique(y)) - set(classes))} "
                             f"that are not among the classes {classes.tolist()}.")
        if proba.ndim == 2 and proba.shape[1] != len(classes):
            raise ValueError(f"y_proba has {proba.shape[1]} columns for {len(classes)} classes "
                             f"{classes.tolist()}; pass classes= (the estimator's classes_).")
        if proba.ndim == 1:
            proba = np.c_[1 - proba, proba]
        code = np.searchsorted(classes, y) if _sorted(classes) else np.array(
            [classes.tolist().index(v) for v in y.tolist()])
        pred, decision = _decisions(task, proba[:, 1] if task == "binary" and y_pred is None
                                    else proba, y_pred, classes)
        which = [1] if task == "binary" else range(len(classes))
        per_class = {}
        for k in which:
            y01, p01 = (code == k).astype(np.int64), (pred == k).astype(np.int64)
            got, resamples = _one_target(y01, proba[:, k], p01, metrics, groups, n_resamples,
                                         alpha, seed, str(classes[k]))
            rows += got
            per_class[k] = (y01, p01, resamples)
        rows += _overall(task, code, proba, pred, groups, n_resamples, alpha, seed)
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table.attrs["decision"] = decision
    table.attrs["task"] = task
    table.attrs["confidence"] = confidence
    return table


def _sorted(classes) -> bool:
    try:
        return bool(np.all(classes[:-1] < classes[1:]))
    except TypeError:
        return False


def _overall(task, code, proba, pred, groups, n_resamples, alpha, seed) -> list:
    """Whole-model rows: accuracy (binary); accuracy, balanced accuracy, macro AUC and
    top-label ECE (multiclass), all from one set of class-stratified resamples."""
    k = proba.shape[1]
    n = len(code)
    correct = (pred == code).astype(np.int64)
    conf = proba.max(1)
    onehot_y = np.eye(k, dtype=np.int64)[code]
    onehot_p = np.eye(k, dtype=np.int64)[pred]

    def accuracy(r):
        return correct[r].mean(-1)

    def balanced(r):
        recalls = [_sensitivity(onehot_y[r][..., j], None, onehot_p[r][..., j])
                   for j in range(k)]
        return np.nanmean(np.stack(recalls), axis=0)

    def macro_auc(r):
        return np.nanmean(np.stack([_roc_auc(onehot_y[r][..., j], proba[r][..., j], None)
                                    for j in range(k)]), axis=0)

    def top_ece(r):
        return _ece(correct[r], conf[r], None)

    funcs = {"accuracy": accuracy}
    if task == "multiclass":
        funcs.update(balanced_accuracy=balanced, roc_auc=macro_auc, ece=top_ece)
    resamples = bootstrap_indices(code, groups=groups, n_resamples=n_resamples,
                                  random_state=seed) if n_resamples else None
    rows = []
    for metric, fn in funcs.items():
        estimate = float(fn(np.arange(n)[None])[0])
        lo = hi = np.nan
        if resamples is not None:
            if isinstance(resamples, np.ndarray):
                values = fn(resamples)
            else:
                values = np.array([fn(r[None])[0] for r in resamples])
            values = values[np.isfinite(values)]
            if len(values):
                lo, hi = np.quantile(values, [alpha, 1 - alpha])
        rows.append({"target": "overall", "metric": metric, "estimate": estimate,
                     "ci_low": float(lo), "ci_high": float(hi), "n": n,
                     "n_positive": np.nan,
                     "n_groups": len(np.unique(groups)) if groups is not None else n})
    return rows


def _proba_and_pred(estimator, X):
    proba = np.asarray(estimator.predict_proba(X))
    return proba, np.asarray(estimator.predict(X))


def evaluate(estimator, X, y, *, groups=None, labels=None, metrics=TABLE_METRICS,
             n_resamples: int = 1000, confidence: float = 0.95, random_state=0
             ) -> pd.DataFrame:
    """:func:`evaluate_predictions` of a fitted estimator on ``X, y``.

    The decisions are the estimator's own ``predict`` (its decision rule, e.g. a
    classifier's ``thresholds_``, chosen inside its fit), the probabilities its
    ``predict_proba``, the classes its ``classes_``.

    Parameters
    ----------
    estimator : fitted estimator
        A classifier (or pipeline) with ``predict`` and ``predict_proba``.
    X : array-like
        The images (what ``estimator`` predicts on).
    y : array-like of shape (n,) or (n, n_labels)
        True labels, or the multi-label 0/1 matrix (NaN: a missing label).
    groups : array-like of shape (n,), default=None
        Patient ids: whole patients are resampled.
    labels : sequence of str, default=None
        Names of a multi-label target's columns.
    metrics : sequence of str, default=TABLE_METRICS
        As :func:`evaluate_predictions`.
    n_resamples : int, default=1000
        As :func:`evaluate_predictions`.
    confidence : float, default=0.95
        As :func:`evaluate_predictions`.
    random_state : int, default=0
        As :func:`evaluate_predictions`.

    Returns
    -------
    pandas.DataFrame
        :func:`evaluate_predictions`'s table.
    """
    proba, pred = _proba_and_pred(estimator, X)
    y = np.asarray(y)
    classes = None if y.ndim == 2 else getattr(estimator, "classes_", None)
    table = evaluate_predictions(y, proba, pred, classes=classes, labels=labels,
                                 groups=groups, metrics=metrics, n_resamples=n_resamples,
                                 confidence=confidence, random_state=random_state)
    table.attrs["decision"] = "the estimator's predict"
    return table


def subgroup_metrics(y_true, y_proba, y_pred=None, *, subgroups, classes=None, labels=None,
                     groups=None, metrics=("roc_auc", "sensitivity", "specificity"),
                     min_count: int = 30, min_class_count: int = 5, bins: dict | None = None,
                     n_resamples: int = 1000, confidence: float = 0.95, random_state=0
                     ) -> pd.DataFrame:
    """:func:`evaluate_predictions` within each subgroup of metadata columns.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_labels)
        As :func:`evaluate_predictions`.
    y_proba : array-like
        As :func:`evaluate_predictions`.
    y_pred : array-like, optional
        As :func:`evaluate_predictions`.
    subgroups : DataFrame or dict of array-like
        One row per image: e.g. ``sex``, ``age``, ``view``, ``site`` (the ``frame`` of
        :func:`~skcxr.load_nih_csv`, or columns of it). Missing values form the subgroup
        ``"missing"``.
    classes : array-like, optional
        As :func:`evaluate_predictions`.
    labels : sequence of str, optional
        As :func:`evaluate_predictions`.
    groups : array-like of shape (n,), optional
        Patient ids: resample patients in each subgroup.
    metrics : sequence of str, default=("roc_auc", "sensitivity", "specificity")
        As :func:`evaluate_predictions`.
    min_count : int, default=30
        A subgroup with fewer rows is too small to read: its estimate is given, its interval
        is not, and ``readable`` is False with the reason in ``note``.
    min_class_count : int, default=5
        Likewise, row by row, when a target (a class one-vs-rest, a label) has fewer
        positive or negative rows in the subgroup; an ``"overall"`` row when any class
        has fewer.
    bins : dict, optional
        Column -> bin edges for numeric columns (``{"age": [0, 40, 60, 120]}``: bands
        ``[0, 40)``, ...). A numeric column not named here with more than 10 distinct values
        is cut at its quartiles.
    n_resamples : int, default=1000
        As :func:`evaluate_predictions`.
    confidence : float, default=0.95
        As :func:`evaluate_predictions`.
    random_state : int, default=0
        As :func:`evaluate_predictions`.

    Returns
    -------
    pandas.DataFrame
        :func:`evaluate_predictions`'s columns with ``variable`` and ``subgroup`` in front
        and ``readable``, ``note`` after; subgroups in order of their values.
    """
    frame = pd.DataFrame(subgroups)
    y = np.asarray(y_true)
    if len(frame) != len(y):
        raise ValueError(f"subgroups has {len(frame)} rows for {len(y)} labels; pass one row "
                         "of metadata per image.")
    if min_count < 1 or min_class_count < 0:
        raise ValueError("min_count must be >= 1 and min_class_count >= 0.")
    proba = np.asarray(y_proba, dtype=np.float64)
    pred = None if y_pred is None else np.asarray(y_pred)
    if classes is None and y.ndim == 1:
        classes = np.unique(y)
    groups = None if groups is None else np.asarray(groups)
    out = []
    for column in frame.columns:
        bands = _bands(frame[column], (bins or {}).get(column))
        for value in _ordered(bands):
            rows = np.flatnonzero((bands == value).to_numpy())
            sub_y = y[rows]
            counts = _class_counts(sub_y, classes)
            small = len(rows) < min_count
            table = evaluate_predictions(
                sub_y, proba[rows], None if pred is None else pred[rows], classes=classes,
                labels=labels, groups=None if groups is None else groups[rows],
                metrics=metrics, n_resamples=0 if small else n_resamples,
                confidence=confidence, random_state=random_state)
            # each row's rarer side: a class (label) row's positives or the rest; an
            # "overall" row depends on every class
            n_pos = table["n_positive"].to_numpy(dtype=float)
            least = np.where(table["target"].to_numpy() == "overall",
                             counts.min() if len(counts) else 0,
                             np.minimum(n_pos, table["n"].to_numpy() - n_pos))
            rare = np.zeros(len(table), bool) if small else ~(least >= min_class_count)
            table.loc[rare, ["ci_low", "ci_high"]] = np.nan
            if small:
                notes = [f"n={len(rows)} < min_count={min_count}"] * len(table)
            else:
                notes = [f"a class has {int(k)} < min_class_count={min_class_count} rows"
                         if r else "" for k, r in zip(np.nan_to_num(least), rare)]
            table.insert(0, "subgroup", str(value))
            table.insert(0, "variable", str(column))
            table["readable"] = ~rare & (not small)  # bool per row
            table["note"] = notes
            out.append(table)
    return pd.concat(out, ignore_index=True)


def _class_counts(y, classes) -> np.ndarray:
    if y.ndim == 2:  # per label: the rarer of positives and negatives (observed ones)
        y = y.astype(np.float64)
        pos = (y > 0.5).sum(0)
        return np.minimum(pos, (~np.isnan(y)).sum(0) - pos)
    return np.array([(y == c).sum() for c in classes])


def _bands(column: pd.Series, edges) -> pd.Series:
    values = column.reset_index(drop=True)
    if edges is not None:
        return pd.cut(values, edges, right=False).astype(str).where(values.notna(), "missing")
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > 10:  # quartiles
        q = np.unique(np.nanquantile(values.to_numpy(dtype=float), [0, .25, .5, .75, 1]))
        edges = np.r_[q[:-1], np.nextafter(q[-1], np.inf)]
        names = [f"[{a:g}, {b:g})" for a, b in zip(q[:-2], q[1:-1])] + [
            f"[{q[-2]:g}, {q[-1]:g}]"]
        cut = pd.cut(values, edges, right=False, labels=names)
        return cut.astype(str).where(values.notna(), "missing")
    return values.astype(object).where(values.notna(), "missing").astype(str)


def _ordered(bands: pd.Series) -> list:
    def key(v):
        head = v.lstrip("[(").split(",")[0]
        try:
            return (0, float(head), v)
        except ValueError:
            return (1 if v != "missing" else 2, 0.0, v)
    return sorted(bands.unique(), key=key)

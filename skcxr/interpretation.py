"""Error analysis: which images a model gets most wrong, and which classes it confuses.

In the manner of fastai's ``ClassificationInterpretation``: from a fitted model and data
(:meth:`ErrorAnalysis.from_estimator`) or from predictions alone
(:meth:`ErrorAnalysis.from_predictions`, e.g. out-of-fold ones from ``cross_val_predict``),
with the file name and patient of every image, so a reader can open the file.
:class:`~skcxr.plotting.TopLossesDisplay` draws the top losses with their Grad-CAM
overlays.

Examples
--------
>>> import numpy as np
>>> from skcxr.interpretation import ErrorAnalysis
>>> errors = ErrorAnalysis.from_predictions(
...     np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]),
...     X=["a.png", "b.png", "c.png"])
>>> errors.top_losses(1)[["path", "true", "predicted"]].to_dict("records")
[{'path': 'c.png', 'true': 1, 'predicted': 0}]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "ErrorAnalysis",
]

_EPS = 1e-12


def _paths(X, n):
    if X is None:
        return np.arange(n).astype(object)
    if hasattr(X, "iloc"):
        X = X.iloc[:, 0] if getattr(X, "ndim", 1) == 2 else X
        X = X.to_numpy()
    X = np.asarray(X, dtype=object) if not isinstance(X, np.ndarray) else X
    if X.dtype.kind in "OUS":
        X = X.ravel() if X.ndim == 2 and X.shape[1] == 1 else X
        if X.ndim == 1:
            return X.astype(object)
    return np.arange(n).astype(object)  # an image array: rows are named by their index


class ErrorAnalysis:
    """Per-image losses of a classifier's predictions, for error analysis.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_labels)
        True labels: class labels, or a 0/1 matrix (multi-label; NaN: a missing label).
    y_proba : array-like of shape (n, n_classes) or (n, n_labels)
        ``predict_proba`` output (a binary ``(n,)`` is the positive class's).
    y_pred : array-like, optional
        Decisions (``predict``); default the most probable class, or probability >= 0.5 per
        label.
    classes : array-like, optional
        Classes in ``y_proba``'s column order (default: the sorted labels).
    labels : sequence of str, optional
        Multi-label column names.
    X : paths, optional
        The images (their paths name the rows of every table; an image array: indices).
    groups : array-like, optional
        Patient ids, shown beside each image.

    Attributes
    ----------
    losses_ : ndarray of shape (n,) or (n, n_labels)
        Cross-entropy of the true class (binary, multiclass) or binary cross-entropy of each
        label (multi-label), per image.
    task_ : {"binary", "multiclass", "multilabel"}
    """

    def __init__(self, y_true, y_proba, y_pred=None, *, classes=None, labels=None, X=None,
                 groups=None):
        y = np.asarray(y_true)
        proba = np.asarray(y_proba, dtype=np.float64)
        if len(proba) != len(y):
            raise ValueError(f"y_proba has {len(proba)} rows for {len(y)} labels.")
        self.X = X
        self.paths_ = _paths(X, len(y))
        if len(self.paths_) != len(y):
            raise ValueError(f"X has {len(self.paths_)} images for {len(y)} labels.")
        self.groups_ = (np.full(len(y), None, dtype=object) if groups is None
                        else np.asarray(groups, dtype=object))
        if len(self.groups_) != len(y):
            raise ValueError(f"groups has {len(self.groups_)} entries for {len(y)} labels.")
        self.y_true_ = y
        if y.ndim == 2:
            if proba.shape != y.shape:
                raise ValueError(f"y_proba has shape {proba.shape} for a {y.shape} label "
                                 "matrix.")
            self.task_ = "multilabel"
            self.labels_ = (np.asarray(labels, dtype=object) if labels is not None
                            else np.array([f"label {j}" for j in range(y.shape[1])],
                                          dtype=object))
            self.proba_ = proba
            self.y_pred_ = ((proba >= 0.5) if y_pred is None else (np.asarray(y_pred) > 0.5)
                            ).astype(np.int64)
            p = np.clip(proba, _EPS, 1 - _EPS)
            t = (y > 0.5)
            # a missing label (NaN) has no loss: NaN, never among the worst
            self.losses_ = np.where(np.isnan(y.astype(np.float64)), np.nan,
                                    -(t * np.log(p) + (~t) * np.log(1 - p)))
            return
        if proba.ndim == 1:
            proba = np.c_[1 - proba, proba]
        self.classes_ = np.unique(y) if classes is None else np.asarray(classes)
        if proba.shape[1] != len(self.classes_):
            raise ValueError(f"y_proba has {proba.shape[1]} columns for the classes "
                             f"{self.classes_.tolist()}; pass classes= (classes_).")
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = sorted({v for v in y.tolist() if v not in index}, key=str)
        if unknown:
            raise ValueError(f"y_true has labels {unknown} that are not among the classes "
                             f"{self.classes_.tolist()}.")
        self.task_ = "binary" if len(self.classes_) == 2 else "multiclass"
        self.proba_ = proba
        self.code_ = np.array([index[v] for v in y.tolist()], dtype=np.int64)
        self.y_pred_ = (self.classes_[proba.argmax(1)] if y_pred is None
                        else np.asarray(y_pred))
        self.losses_ = -np.log(np.clip(proba[np.arange(len(y)), self.code_], _EPS, 1))

    @classmethod
    def from_estimator(cls, estimator, X, y, *, groups=None, labels=None):
        """Analyse a fitted classifier's ``predict_proba`` and ``predict`` on ``X``.

        Parameters
        ----------
        estimator : classifier
            Fitted, with ``predict_proba`` and ``predict`` (its ``classes_`` give the
            columns' order).
        X : paths or array of images
            The images to analyse (held-out ones).
        y : array-like of shape (n,) or (n, n_labels)
            Their true labels.
        groups : array-like of shape (n,), optional
            Patient ids, shown beside each image.
        labels : sequence of str, optional
            Multi-label column names.

        Returns
        -------
        ErrorAnalysis
            With ``estimator`` set.
        """
        proba = np.asarray(estimator.predict_proba(X))
        pred = np.asarray(estimator.predict(X))
        y = np.asarray(y)
        classes = None if y.ndim == 2 else getattr(estimator, "classes_", None)
        out = cls(y, proba, pred, classes=classes, labels=labels, X=X, groups=groups)
        out.estimator = estimator
        return out

    @classmethod
    def from_predictions(cls, y_true, y_proba, y_pred=None, *, classes=None, labels=None,
                         X=None, groups=None):
        """Analyse predictions (e.g. ``cross_val_predict(..., method="predict_proba")``).

        Parameters
        ----------
        y_true : array-like of shape (n,) or (n, n_labels)
            True labels.
        y_proba : array-like of shape (n, n_classes) or (n, n_labels)
            Predicted probabilities.
        y_pred : array-like, optional
            Decisions; default the most probable class, or probability >= 0.5 per label.
        classes : array-like, optional
            Classes in ``y_proba``'s column order (default: the sorted labels).
        labels : sequence of str, optional
            Multi-label column names.
        X : paths, optional
            The images (their paths name the rows of every table).
        groups : array-like, optional
            Patient ids, shown beside each image.

        Returns
        -------
        ErrorAnalysis
            The same as the constructor's.
        """
        return cls(y_true, y_proba, y_pred, classes=classes, labels=labels, X=X,
                   groups=groups)

    estimator = None

    def top_losses(self, k: int = 9, *, wrong_only: bool = False) -> pd.DataFrame:
        """List the ``k`` images with the largest loss (binary, multiclass).

        Parameters
        ----------
        k : int, default=9
            How many.
        wrong_only : bool, default=False
            Only misclassified images.

        Returns
        -------
        DataFrame
            Columns ``row`` (index into ``X``), ``path``, ``patient``, ``true``,
            ``predicted``, ``p_true`` (probability given to the true class),
            ``p_predicted``, ``loss``; by decreasing loss.
        """
        if self.task_ == "multilabel":
            raise ValueError("top_losses ranks single-label predictions; for multi-label "
                             "targets use worst_per_label().")
        _check_k(k)
        rows = np.argsort(-self.losses_, kind="stable")
        if wrong_only:
            rows = rows[self.y_pred_[rows] != self.y_true_[rows]]
        rows = rows[:k]
        pred_code = np.array([list(self.classes_).index(v) for v in self.y_pred_[rows]],
                             dtype=np.int64)
        return pd.DataFrame({
            "row": rows, "path": self.paths_[rows], "patient": self.groups_[rows],
            "true": self.y_true_[rows], "predicted": self.y_pred_[rows],
            "p_true": self.proba_[rows, self.code_[rows]],
            "p_predicted": self.proba_[rows, pred_code], "loss": self.losses_[rows]})

    def most_confused(self, min_count: int = 1) -> pd.DataFrame:
        """Count the pairs (true, predicted) of different classes.

        Parameters
        ----------
        min_count : int, default=1
            Pairs seen fewer times are left out.

        Returns
        -------
        DataFrame
            Columns ``true``, ``predicted``, ``count``; by decreasing count.
        """
        if self.task_ == "multilabel":
            raise ValueError("most_confused counts single-label decisions; for multi-label "
                             "targets use worst_per_label().")
        wrong = self.y_true_ != self.y_pred_
        frame = pd.DataFrame({"true": self.y_true_[wrong], "predicted": self.y_pred_[wrong]})
        counts = frame.value_counts().rename("count").reset_index()
        counts = counts[counts["count"] >= min_count]
        return counts.sort_values(["count", "true"], ascending=[False, True],
                                  ignore_index=True)

    def worst_per_label(self, k: int = 3) -> pd.DataFrame:
        """List, for each label of a multi-label target, the ``k`` images with the largest loss.

        Parameters
        ----------
        k : int, default=3
            Images per label (missing labels are never among them).

        Returns
        -------
        DataFrame
            Columns ``label``, ``row``, ``path``, ``patient``, ``true`` (0/1),
            ``probability`` (of the label), ``loss``.
        """
        if self.task_ != "multilabel":
            raise ValueError("worst_per_label is for multi-label targets; use top_losses().")
        _check_k(k)
        parts = []
        for j, name in enumerate(self.labels_):
            rows = np.argsort(-self.losses_[:, j], kind="stable")  # NaN (missing) last
            rows = rows[~np.isnan(self.losses_[rows, j])][:k]
            parts.append(pd.DataFrame({
                "label": name, "row": rows, "path": self.paths_[rows],
                "patient": self.groups_[rows], "true": self.y_true_[rows, j],
                "probability": self.proba_[rows, j], "loss": self.losses_[rows, j]}))
        return pd.concat(parts, ignore_index=True)


def _check_k(k):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1; got {k!r}.")

"""Curves of a model's scores, as Display objects: ROC and precision-recall curves with
pointwise bootstrap bands, and reliability diagrams.

Public in :mod:`skcxr.plotting` (:class:`~skcxr.plotting.RocCurveCIDisplay`,
:class:`~skcxr.plotting.PrecisionRecallCIDisplay`, :class:`~skcxr.plotting.ReliabilityDisplay`,
:func:`~skcxr.plotting.plot_reliability`); the intervals are those of
:mod:`skcxr.evaluation` (the same stratified, optionally patient-grouped resamples).
"""

from __future__ import annotations

import numpy as np

from ._figures import pyplot


class _CurveCIDisplay:
    """A curve of one binary event with a pointwise bootstrap band (ROC or PR)."""

    _x_label = _y_label = _metric = ""

    def __init__(self, x, y, y_low, y_high, value, value_low, value_high, name=None,
                 confidence=0.95):
        self.x, self.y, self.y_low, self.y_high = x, y, y_low, y_high
        self.value, self.value_low, self.value_high = value, value_low, value_high
        self.name, self.confidence = name, confidence

    @classmethod
    def from_predictions(cls, y_true, y_score, *, pos_label=None, groups=None, name=None,
                         n_resamples: int = 200, confidence: float = 0.95, random_state=0):
        """Compute the curve and its band from labels and positive-class scores.

        Parameters
        ----------
        y_true : array-like of shape (n,)
            Labels of one binary event.
        y_score : array-like of shape (n,) or (n, 2)
            Scores of the positive class (``predict_proba(X)[:, 1]``), or both columns.
        pos_label : label, default=None
            The positive class; None: the larger label.
        groups : array-like of shape (n,), default=None
            Patient ids: resample patients, not images.
        name : str, default=None
            The curve's name in the legend.
        n_resamples : int, default=200
            Bootstrap resamples.
        confidence : float, default=0.95
            Level of the band and of the interval.
        random_state : int, RandomState instance or None, default=0
            Seeds the resamples.

        Returns
        -------
        display
            The display, not yet drawn (:meth:`plot`).
        """
        from .evaluation import bootstrap_indices, bootstrap_metrics

        y = np.asarray(y_true)
        score = np.asarray(y_score, dtype=np.float64)
        if score.ndim == 2:
            score = score[:, -1]
        classes = np.unique(y)
        if pos_label is None:
            pos_label = classes[-1]
        if len(classes) != 2 or pos_label not in classes:
            raise ValueError(f"y_true has the classes {classes.tolist()}; these curves are "
                             "for one binary event (pass pos_label= and one class's scores).")
        y01 = (y == pos_label).astype(np.int64)
        grid = np.linspace(0, 1, 101)
        curve = cls._curve(y01, score, grid)
        resamples = bootstrap_indices(y01, groups=groups, n_resamples=n_resamples,
                                      random_state=random_state)
        curves = np.array([cls._curve(y01[r], score[r], grid) for r in resamples])
        alpha = (1 - confidence) / 2
        low, high = np.nanquantile(curves, [alpha, 1 - alpha], axis=0)
        table = bootstrap_metrics(y01, score, metrics=(cls._metric,), groups=groups,
                                  classes=[0, 1], n_resamples=n_resamples,
                                  confidence=confidence, random_state=random_state)
        row = table.loc[cls._metric]
        return cls(grid, curve, low, high, row.estimate, row.ci_low, row.ci_high, name,
                   confidence)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, pos_label=None, groups=None, name=None,
                       **kwargs):
        """Compute the curve and its band from a fitted binary classifier on ``X``.

        Parameters
        ----------
        estimator : classifier
            Fitted, binary, with ``predict_proba``.
        X : paths or array of images
            Held-out images.
        y : array-like of shape (n,)
            Their labels.
        pos_label : label, default=None
            The positive class; None: ``classes_[1]``.
        groups : array-like of shape (n,), default=None
            Patient ids: resample patients, not images.
        name : str, default=None
            The curve's name in the legend (default: the estimator's class name).
        **kwargs : dict
            ``n_resamples``, ``confidence``, ``random_state`` of :meth:`from_predictions`.

        Returns
        -------
        display
            The display, not yet drawn (:meth:`plot`).
        """
        proba = np.asarray(estimator.predict_proba(X))
        classes = np.asarray(getattr(estimator, "classes_", [0, 1]))
        if proba.ndim != 2 or proba.shape[1] != 2:
            raise ValueError("from_estimator draws a binary classifier's curve; for "
                             "multiclass or multi-label models pass one class's (label's) "
                             "scores to from_predictions.")
        column = 1 if pos_label is None else list(classes).index(pos_label)
        return cls.from_predictions(np.asarray(y) == classes[column], proba[:, column],
                                    pos_label=True, groups=groups,
                                    name=name or type(estimator).__name__, **kwargs)

    def plot(self, *, ax=None, color=None):
        """Draw the curve, its band and the no-skill line (chance, or the prevalence).

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.
        color : color, default=None
            The curve's colour (the band takes it too).

        Returns
        -------
        self
            With ``line_``, ``band_``, ``ax_`` and ``figure_`` set.
        """
        plt = pyplot()
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4.5), layout="tight")
        pct = f"{self.confidence:.0%}"
        label = (f"{self.name or 'model'} ({self._metric.replace('_', ' ').upper()} "
                 f"{self.value:.3f} [{self.value_low:.3f}, {self.value_high:.3f}])")
        (self.line_,) = ax.plot(self.x, self.y, color=color, label=label)
        self.band_ = ax.fill_between(self.x, self.y_low, self.y_high, alpha=0.25,
                                     color=self.line_.get_color(),
                                     label=f"{pct} bootstrap band", linewidth=0)
        self._decorate(ax)
        ax.set_xlabel(self._x_label)
        ax.set_ylabel(self._y_label)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.legend(loc="lower right" if self._metric == "roc_auc" else "lower left",
                  fontsize=7)
        self.ax_, self.figure_ = ax, ax.figure
        return self


class RocCurveCIDisplay(_CurveCIDisplay):
    """ROC curve with a pointwise bootstrap confidence band and the AUC's interval.

    The band is the percentile interval of the true positive rate at each false positive
    rate over stratified (patient-grouped, with ``groups``) bootstrap resamples; the AUC's
    interval is :func:`skcxr.evaluation.bootstrap_metrics`'s. Made by
    :meth:`from_predictions` or :meth:`from_estimator`; :meth:`plot` sets ``line_``,
    ``band_``, ``ax_``, ``figure_``.

    Parameters
    ----------
    x : ndarray
        The false positive rate grid.
    y, y_low, y_high : ndarray
        The true positive rate at each ``x``, and its band.
    value, value_low, value_high : float
        The AUC and its interval.
    name : str, default=None
        The curve's name in the legend.
    confidence : float, default=0.95
        Level of the band and of the interval.
    """

    _x_label, _y_label, _metric = "false positive rate", "true positive rate", "roc_auc"

    @staticmethod
    def _curve(y01, score, grid):
        from sklearn.metrics import roc_curve

        if y01.min() == y01.max():
            return np.full(len(grid), np.nan)
        fpr, tpr, _ = roc_curve(y01, score)
        return np.interp(grid, fpr, tpr)

    def _decorate(self, ax):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")


class PrecisionRecallCIDisplay(_CurveCIDisplay):
    """Precision-recall curve with a pointwise bootstrap band and the PR AUC's interval.

    As :class:`RocCurveCIDisplay`, with precision (interpolated: the best precision at
    that recall or higher) on a recall grid; the prevalence is drawn as the no-skill line.

    Parameters
    ----------
    x : ndarray
        The recall grid.
    y, y_low, y_high : ndarray
        The interpolated precision at each ``x``, and its band.
    value, value_low, value_high : float
        The PR AUC and its interval.
    name : str, default=None
        The curve's name in the legend.
    confidence : float, default=0.95
        Level of the band and of the interval.
    """

    _x_label, _y_label, _metric = "recall (sensitivity)", "precision (PPV)", "pr_auc"

    @staticmethod
    def _curve(y01, score, grid):
        from sklearn.metrics import precision_recall_curve

        if y01.min() == y01.max():
            return np.full(len(grid), np.nan)
        precision, recall, _ = precision_recall_curve(y01, score)
        order = np.argsort(recall)
        recall, precision = recall[order], np.maximum.accumulate(precision[order][::-1])[::-1]
        return np.interp(grid, recall, precision)

    @classmethod
    def from_predictions(cls, y_true, y_score, *, pos_label=None, groups=None, name=None,
                         n_resamples: int = 200, confidence: float = 0.95, random_state=0):
        out = super().from_predictions(y_true, y_score, pos_label=pos_label, groups=groups,
                                       name=name, n_resamples=n_resamples,
                                       confidence=confidence, random_state=random_state)
        y = np.asarray(y_true)
        pos = np.unique(y)[-1] if pos_label is None else pos_label
        out.prevalence = float(np.mean(y == pos))
        return out

    from_predictions.__func__.__doc__ = _CurveCIDisplay.from_predictions.__doc__

    def _decorate(self, ax):
        prevalence = getattr(self, "prevalence", None)
        if prevalence is not None:
            ax.axhline(prevalence, ls="--", color="grey", lw=0.8,
                       label=f"no skill ({prevalence:.2f})")


def _draw_reliability(y_true, proba, *, n_bins=10, name=None, ax=None):
    """Draw :class:`ReliabilityDisplay`; returns the axes and the ECE."""
    from sklearn.calibration import CalibrationDisplay

    from .calibration import expected_calibration_error

    plt = pyplot()
    y, p = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2 and y.ndim == 1:
        p = p[:, 1]
    if p.ndim == 2 and y.ndim == 2:
        events, probs = y.ravel(), p.ravel()
    elif p.ndim == 2:
        events, probs = (p.argmax(1) == y).astype(int), p.max(1)
    else:
        events, probs = (y == 1).astype(int), p
    ece = expected_calibration_error(events, probs, n_bins=n_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5), layout="tight")
    label = f"{name or 'model'} (ECE {ece:.3f})"
    CalibrationDisplay.from_predictions(events, probs, n_bins=n_bins, name=label, ax=ax)
    return ax, ece


class ReliabilityDisplay:
    """Reliability diagram with the expected calibration error in the legend.

    scikit-learn's :class:`sklearn.calibration.CalibrationDisplay` draws it; this picks the
    events it plots: the positive class for binary ``proba`` (``(n,)`` or ``(n, 2)``), the
    predicted class's confidence against being right for multiclass ``(n, k)``, and every
    label's probability pooled for multi-label (``y_true`` a 0/1 ``(n, L)`` matrix).
    After :meth:`plot`: ``ax_``, ``figure_``, ``ece_``.

    Parameters
    ----------
    y_true : array-like
        Labels ``0..k-1`` (as ``proba``'s columns), or the multi-label 0/1 matrix.
    proba : array-like
        ``predict_proba`` output.
    name : str, default=None
        Legend label (the ECE is appended).
    """

    def __init__(self, y_true, proba, name=None):
        self.y_true, self.proba, self.name = y_true, proba, name

    @classmethod
    def from_estimator(cls, estimator, X, y, *, name=None):
        """Take a fitted classifier's ``predict_proba`` on ``X``.

        Parameters
        ----------
        estimator : fitted classifier
            With ``predict_proba`` (labels are coded as its ``classes_``).
        X : paths or array of images
            Held-out images.
        y : array-like
            Their labels, or the multi-label 0/1 matrix.
        name : str, default=None
            Legend label (default: the estimator's class name).

        Returns
        -------
        ReliabilityDisplay
            Not yet drawn (:meth:`plot`).
        """
        proba = np.asarray(estimator.predict_proba(X))
        y = np.asarray(y)
        if y.ndim == 1 and hasattr(estimator, "classes_"):
            y = np.searchsorted(np.asarray(estimator.classes_), y)
        return cls(y, proba, name or type(estimator).__name__)

    @classmethod
    def from_predictions(cls, y_true, proba, *, name=None):
        """Take labels ``0..k-1`` (or a 0/1 label matrix) and ``predict_proba`` output.

        Parameters
        ----------
        y_true : array-like
            Labels ``0..k-1``, or the multi-label 0/1 matrix.
        proba : array-like
            ``predict_proba`` output.
        name : str, default=None
            Legend label.

        Returns
        -------
        ReliabilityDisplay
            Not yet drawn (:meth:`plot`).
        """
        return cls(y_true, proba, name)

    def plot(self, *, n_bins=10, ax=None):
        """Draw the reliability diagram.

        Parameters
        ----------
        n_bins : int, default=10
            Bins of predicted probability.
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        self
            With ``ax_``, ``figure_`` and ``ece_`` set.
        """
        self.ax_, self.ece_ = _draw_reliability(self.y_true, self.proba, n_bins=n_bins,
                                                name=self.name, ax=ax)
        self.figure_ = self.ax_.figure
        return self


def plot_reliability(y_true, proba, *, n_bins=10, name=None, ax=None):
    """Reliability diagram with the expected calibration error in the legend.

    A shortcut for ``ReliabilityDisplay.from_predictions(y_true, proba).plot(...).ax_``.

    Parameters
    ----------
    y_true : array-like
        Labels ``0..k-1`` (as ``predict_proba``'s columns), or the multi-label 0/1 matrix.
    proba : array-like
        ``predict_proba`` output.
    n_bins : int, default=10
        Bins of predicted probability.
    name : str, optional
        Legend label (the ECE is appended).
    ax : matplotlib Axes, optional
        Where to draw; None makes a new figure.

    Returns
    -------
    ax : matplotlib Axes
        The diagram's axes.
    """
    return ReliabilityDisplay.from_predictions(y_true, proba, name=name).plot(
        n_bins=n_bins, ax=ax).ax_


# ------------------------------------------------------------------ curves with a CI band

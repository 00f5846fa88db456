"""Figures for skcxr results (matplotlib), as scikit-learn's Display objects.

Each figure is a Display: built by ``from_estimator`` (a fitted model and data) or
``from_predictions`` (or ``from_history``, ``from_cv_results``, ``from_heatmaps``), drawn by
``plot(ax=...)``, which keeps its artists (``ax_``, ``figure_``, ``line_`` ...) and returns
the display: ROC and precision-recall curves with bootstrap bands
(:class:`RocCurveCIDisplay`, :class:`PrecisionRecallCIDisplay`), reliability diagrams,
top losses with Grad-CAM, training history, the c x s grid heatmap and Grad-CAM grids.
The ``plot_*`` functions are shortcuts to the displays (no second drawing code).

Confusion matrices are scikit-learn's own :class:`sklearn.metrics.ConfusionMatrixDisplay`;
it works unchanged with skcxr estimators.
"""

from __future__ import annotations

import numpy as np

from ._curves import PrecisionRecallCIDisplay, RocCurveCIDisplay
from ._lr_find import LRFinderDisplay

__all__ = [
    "GradCAMDisplay",
    "GridHeatmapDisplay",
    "HistoryDisplay",
    "LRFinderDisplay",
    "PrecisionRecallCIDisplay",
    "ReliabilityDisplay",
    "RocCurveCIDisplay",
    "TopLossesDisplay",
    "plot_reliability",
    "plot_gradcam",
    "plot_grid_heatmap",
    "plot_history",
]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("skcxr.plotting needs matplotlib: pip install matplotlib") from exc
    return plt


class HistoryDisplay:
    """Training history: loss and metrics per epoch, the unfreeze point and best epoch marked.

    Build it with :meth:`from_estimator` (a fitted classifier) or :meth:`from_history`
    (its ``history_`` DataFrame), then :meth:`plot`. Attributes after ``plot``: ``ax_``
    (the loss axis; the metric axis is ``ax_.right_ax`` when drawn), ``figure_``.

    Parameters
    ----------
    history : DataFrame
        A classifier's ``history_`` (one row per epoch, with an ``epoch`` column).
    best_epoch : int, default=None
        The epoch whose weights were kept (``best_epoch_``), marked when given.
    """

    def __init__(self, history, best_epoch=None):
        import pandas as pd

        if not isinstance(history, pd.DataFrame) or "epoch" not in history:
            raise ValueError("history must be a fitted PretrainedCNNClassifier or its "
                             "history_ DataFrame (with an 'epoch' column).")
        self.history = history
        self.best_epoch = best_epoch

    @classmethod
    def from_estimator(cls, estimator):
        """Read a fitted :class:`~skcxr.PretrainedCNNClassifier`'s history.

        Parameters
        ----------
        estimator : PretrainedCNNClassifier
            Fitted (its ``history_`` and ``best_epoch_``).

        Returns
        -------
        HistoryDisplay
            Not yet drawn (:meth:`plot`).
        """
        if not hasattr(estimator, "history_"):
            raise ValueError("history must be a fitted PretrainedCNNClassifier or its "
                             "history_ DataFrame (with an 'epoch' column).")
        return cls(estimator.history_, getattr(estimator, "best_epoch_", None))

    @classmethod
    def from_history(cls, history, *, best_epoch=None):
        """Read a ``history_`` DataFrame.

        Parameters
        ----------
        history : DataFrame
            A classifier's ``history_``.
        best_epoch : int, default=None
            The epoch to mark as kept.

        Returns
        -------
        HistoryDisplay
            Not yet drawn (:meth:`plot`).
        """
        return cls(history, best_epoch)

    def plot(self, *, metrics=("valid_auc", "valid_acc"), ax=None):
        """Draw the history; see :func:`plot_history` for the layout.

        Parameters
        ----------
        metrics : sequence of str, default=("valid_auc", "valid_acc")
            History columns drawn on a second y axis (those present).
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        self
            With ``ax_`` and ``figure_`` set.
        """
        self.ax_ = _draw_history(self.history, self.best_epoch, metrics, ax)
        self.figure_ = self.ax_.figure
        return self


def plot_history(history, *, metrics=("valid_auc", "valid_acc"), ax=None):
    """Loss and metrics per epoch of a fitted classifier, the unfreeze point and best epoch marked.

    A shortcut for ``HistoryDisplay.from_estimator(clf).plot(...).ax_`` (or
    ``from_history``).

    Parameters
    ----------
    history : DataFrame or fitted PretrainedCNNClassifier
        ``clf.history_`` (or the classifier itself).
    metrics : sequence of str, default=("valid_auc", "valid_acc")
        History columns drawn on a second y axis (those present).
    ax : matplotlib Axes, optional
        Where to draw; None makes a new figure.

    Returns
    -------
    ax : matplotlib Axes
        The loss axis; the metric axis is ``ax.right_ax`` when drawn.

    Notes
    -----
    The x axis ticks whole epochs; the legend sits below the axes, under the x axis label,
    so that it never covers a curve (``fig.tight_layout()`` or ``layout="tight"`` keeps it
    inside the saved figure; a figure made here has a tight layout already).
    """
    display = (HistoryDisplay.from_estimator(history) if hasattr(history, "history_")
               else HistoryDisplay.from_history(history))
    return display.plot(metrics=metrics, ax=ax).ax_


def _draw_history(history, best, metrics, ax):
    plt = _plt()
    if ax is None:  # a tight layout keeps the legend below the axes inside the figure
        _, ax = plt.subplots(figsize=(6, 4), layout="tight")
    epochs = history["epoch"].to_numpy()
    for col, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        if col in history and history[col].notna().any():
            ax.plot(epochs, history[col], style, ms=3, label=col.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    drawn = [m for m in metrics if m in history and history[m].notna().any()]
    if drawn:
        right = ax.twinx()
        for m, c in zip(drawn, ("tab:green", "tab:red", "tab:purple", "tab:brown")):
            right.plot(epochs, history[m], "--", color=c, label=m.replace("_", " "))
        right.set_ylabel(", ".join(m.replace("_", " ") for m in drawn))
        ax.right_ax = right
    if "n_trainable_layers" in history:
        n = history["n_trainable_layers"].to_numpy()
        changes = np.flatnonzero(np.diff(n) != 0)
        for k, i in enumerate(changes):  # the backbone unfroze between epoch i and i + 1
            ax.axvline(epochs[i] + 0.5, color="grey", ls=":",
                       label="unfreeze" if k == 0 else "_nolegend_")
    if best is not None:
        ax.axvline(best, color="black", lw=0.8, label=f"best epoch ({best})")
    # whole epochs only, and half an epoch of room at both ends so that a marker on the
    # first or last epoch is not hidden by the spine
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    handles, labels = ax.get_legend_handles_labels()
    if drawn:
        h2, l2 = ax.right_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the x axis label, where it cannot cover a curve: anchored a fixed number of
    # points under the axes (tick labels and axis label have fixed sizes in points)
    from matplotlib.transforms import offset_copy

    below = offset_copy(ax.transAxes, fig=ax.figure, y=-_xaxis_depth_points(), units="points")
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  bbox_transform=below, ncol=min(3, len(handles)), frameon=False,
                  handlelength=1.8, columnspacing=1.2)
    return ax


def _xaxis_depth_points() -> float:
    """How far (points) the x tick labels and the x axis label reach below the axes."""
    import matplotlib
    from matplotlib.font_manager import FontProperties

    rc = matplotlib.rcParams

    def size(key):
        return FontProperties(size=rc[key]).get_size_in_points()

    tick = rc["xtick.major.size"] if rc["xtick.direction"] != "in" else 0.0
    # a line of text is about 1.2 font sizes high (descenders included)
    return (tick + rc["xtick.major.pad"] + 1.2 * size("xtick.labelsize")
            + rc["axes.labelpad"] + 1.2 * size("axes.labelsize") + 2.0)


class GridHeatmapDisplay:
    """A rows x cols heatmap of a grid search's scores, relative to a baseline.

    :meth:`from_estimator` (a fitted ``GridSearchCV``) or :meth:`from_cv_results`, then
    :meth:`plot`; the parameters are :func:`plot_grid_heatmap`'s. After ``plot``:
    ``ax_``, ``figure_``, ``image_``.

    Parameters
    ----------
    table : DataFrame
        The values drawn, rows x cols.
    label : str
        The colour bar's label.
    baseline : None, float or array-like, default=None
        What the scores are relative to (None: the scores themselves).
    relative : {"difference", "ratio"}, default="difference"
        How the scores relate to ``baseline``.
    """

    def __init__(self, table, label, *, baseline=None, relative="difference"):
        self.table, self.label = table, label
        self.baseline, self.relative = baseline, relative

    @classmethod
    def from_cv_results(cls, cv_results, *, rows="n_trainable_layers", cols="train_size",
                        score="mean_test_score", baseline=None, relative="difference"):
        """Tabulate a grid search's ``cv_results_``.

        Parameters
        ----------
        cv_results : dict or DataFrame
            ``GridSearchCV.cv_results_``.
        rows, cols : str, default="n_trainable_layers" and "train_size"
            Parameter names for the heatmap's rows and columns.
        score : str, default="mean_test_score"
            The cv_results key to draw.
        baseline : None, float or array-like, default=None
            Subtracted from or divided into the scores.
        relative : {"difference", "ratio"}, default="difference"
            Which of the two.

        Returns
        -------
        GridHeatmapDisplay
            Not yet drawn (:meth:`plot`).
        """
        table, label = _grid_table(cv_results, rows, cols, score, baseline, relative)
        return cls(table, label, baseline=baseline, relative=relative)

    @classmethod
    def from_estimator(cls, search, **kwargs):
        """Tabulate a fitted search's ``cv_results_``.

        Parameters
        ----------
        search : GridSearchCV
            Fitted.
        **kwargs : dict
            As :meth:`from_cv_results`'s keywords.

        Returns
        -------
        GridHeatmapDisplay
            Not yet drawn (:meth:`plot`).
        """
        if not hasattr(search, "cv_results_"):
            raise ValueError("from_estimator needs a fitted GridSearchCV (with cv_results_).")
        return cls.from_cv_results(search.cv_results_, **kwargs)

    def plot(self, *, ax=None, cmap="RdBu", fmt=None):
        """Draw the heatmap with its values and colour bar.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.
        cmap : str, default="RdBu"
            Colour map (relative to a baseline; "viridis" without one).
        fmt : str, default=None
            Format of the values in the cells (see :func:`plot_grid_heatmap`).

        Returns
        -------
        self
            With ``ax_``, ``figure_`` and ``image_`` set.
        """
        self.ax_ = _draw_grid(self.table, self.label, self.baseline, self.relative, ax,
                              cmap, fmt)
        self.figure_ = self.ax_.figure
        self.image_ = self.ax_.images[0]
        return self


def plot_grid_heatmap(cv_results, *, rows="n_trainable_layers", cols="train_size",
                      score="mean_test_score", baseline=None, relative="difference",
                      ax=None, cmap="RdBu", fmt=None):
    """A rows x cols heatmap of a grid search's scores, relative to a baseline.

    As study 004's Figure 5: validation accuracy of each (c, s) candidate minus (or divided
    by) the accuracy of a majority-class classifier, so a model that learned nothing shows 0.

    Parameters
    ----------
    cv_results : dict or DataFrame
        ``GridSearchCV.cv_results_``.
    rows, cols : str
        Parameter names (without the ``param_`` prefix, e.g. ``"n_trainable_layers"`` or
        ``"pipeline__n_trainable_layers"``) for the heatmap's rows and columns.
    score : str, default="mean_test_score"
        The cv_results key to draw (e.g. ``"mean_test_accuracy"`` with multi-metric
        scoring).
    baseline : None, float or array-like, default=None
        Subtracted from (``relative="difference"``) or divided into (``"ratio"``) the
        scores; an array must match the rows of ``cv_results`` (e.g. the majority
        classifier's score for each candidate's training-set size).
    relative : {"difference", "ratio"}, default="difference"
        How the scores relate to ``baseline``.
    ax : matplotlib Axes, optional
        Where to draw; None makes a new figure.
    cmap : str, default="RdBu"
        Colour map of a heatmap relative to a baseline (centred on "no change"); without a
        baseline the scores are drawn with "viridis".
    fmt : str, optional
        Format of the values written in the cells; default ``"{:+.3f}"`` for differences
        from a baseline, ``"{:.3f}"`` otherwise.

    Returns
    -------
    ax : matplotlib Axes
        The heatmap's axes.
    table : DataFrame
        The values drawn (rows x cols).
    """
    display = GridHeatmapDisplay.from_cv_results(
        cv_results, rows=rows, cols=cols, score=score, baseline=baseline, relative=relative)
    display.plot(ax=ax, cmap=cmap, fmt=fmt)
    return display.ax_, display.table


def _grid_table(cv_results, rows, cols, score, baseline, relative):
    import pandas as pd

    df = pd.DataFrame(cv_results)
    missing = [k for k in (f"param_{rows}", f"param_{cols}", score) if k not in df]
    if missing:
        raise ValueError(f"cv_results has no {missing}; its keys include "
                         f"{[k for k in df.columns if k.startswith(('param_', 'mean_'))]}.")
    if relative not in ("difference", "ratio"):
        raise ValueError(f"relative must be 'difference' or 'ratio'; got {relative!r}.")
    values = df[score].to_numpy(dtype=float)
    label = score
    if baseline is not None:
        base = np.broadcast_to(np.asarray(baseline, dtype=float), values.shape)
        values = values - base if relative == "difference" else values / base
        label = f"{score} {'-' if relative == 'difference' else '/'} baseline"
    table = (pd.DataFrame({rows: df[f"param_{rows}"].astype(str),
                           cols: df[f"param_{cols}"], "value": values})
             .groupby([rows, cols], sort=False)["value"].mean().unstack(cols))
    table = table.reindex(sorted(table.index, key=_sort_key), axis=0)
    table = table.reindex(sorted(table.columns, key=_sort_key), axis=1)
    return table, label


def _draw_grid(table, label, baseline, relative, ax, cmap, fmt):
    plt = _plt()
    rows, cols = table.index.name, table.columns.name
    if ax is None:  # room for the axis labels and the colour bar's label
        _, ax = plt.subplots(figsize=(2.6 + 0.9 * table.shape[1], 1.4 + 0.5 * table.shape[0]),
                             layout="tight")
    data = table.to_numpy(dtype=float)
    center = 0.0 if (baseline is not None and relative == "difference") else (
        1.0 if baseline is not None else None)
    if center is not None:
        span = np.nanmax(np.abs(data - center)) or 1.0
        im = ax.imshow(data, cmap=cmap, vmin=center - span, vmax=center + span, aspect="auto")
    else:
        im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    if fmt is None:  # a sign only where the value is a difference
        fmt = "{:+.3f}" if (baseline is not None and relative == "difference") else "{:.3f}"
    # black on a light box: readable on the darkest cells, whatever colour limits the caller
    # sets afterwards (``ax.images[0].set_clim``)
    box = dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.8)
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, bbox=box)
    ax.figure.colorbar(im, ax=ax, label=label)
    return ax




def _sort_key(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _draw_gradcam(images, heatmaps, *, titles=None, alpha=0.45, cmap="jet", axes=None):
    """Draw :class:`GradCAMDisplay` (parameters: :func:`plot_gradcam`)."""
    from .images import read_image

    plt = _plt()
    if isinstance(images, np.ndarray) and images.dtype != object:
        imgs = list(images)
    else:
        imgs = [read_image(p) if isinstance(p, (str, bytes)) or hasattr(p, "__fspath__")
                else np.asarray(p) for p in images]
    maps = list(heatmaps)
    if len(imgs) != len(maps):
        raise ValueError(f"{len(imgs)} images but {len(maps)} heatmaps.")
    n = len(imgs)
    if axes is None:
        _, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.9 if titles is not None else 4.5),
                               squeeze=False, layout="tight")
    axes = np.asarray(axes).reshape(2, n)
    for j, (img, m) in enumerate(zip(imgs, maps)):
        img = np.asarray(img)
        if img.dtype.kind in "ui":  # scaled by the type's maximum, as skcxr reads pixels
            img = img / float(np.iinfo(img.dtype).max)
        img = np.asarray(img, dtype=np.float32)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.shape[:2] != m.shape:
            raise ValueError(f"image {j} is {img.shape[:2]} but its heatmap is {m.shape}: "
                             "compute heatmaps with aligned='image'.")
        axes[0, j].imshow(m, cmap=cmap, vmin=0, vmax=1)
        # pixels in [0, 1] as they are (0 black, 1 white), not contrast-stretched per image
        unit = bool(np.nanmin(img) >= 0 and np.nanmax(img) <= 1)
        axes[1, j].imshow(img, cmap="gray" if img.ndim == 2 else None,
                          vmin=0 if unit else None, vmax=1 if unit else None)
        axes[1, j].imshow(m, cmap=cmap, vmin=0, vmax=1, alpha=alpha)
        if titles is not None:
            axes[0, j].set_title(str(titles[j]), fontsize=8)
        for a in axes[:, j]:
            a.set_axis_off()
    return axes


def _draw_reliability(y_true, proba, *, n_bins=10, name=None, ax=None):
    """Draw :class:`ReliabilityDisplay`; returns the axes and the ECE."""
    from sklearn.calibration import CalibrationDisplay

    from .calibration import expected_calibration_error

    plt = _plt()
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


class GradCAMDisplay:
    """Grad-CAM grid: for each image, the heatmap (top row) and its overlay (bottom row).

    :meth:`from_estimator` computes the heatmaps (:func:`skcxr.explain.gradcam`);
    :meth:`from_heatmaps` draws given ones. After :meth:`plot`: ``axes_`` (2 x n),
    ``figure_``.

    Parameters
    ----------
    images : array (n, H, W) or (n, H, W, 3), list of such arrays, or paths
        The images.
    heatmaps : ndarray or list of arrays
        One heatmap per image, aligned with it (``gradcam(..., aligned="image")``).
    titles : list of str, default=None
        One title per image.
    """

    def __init__(self, images, heatmaps, titles=None):
        self.images, self.heatmaps, self.titles = images, heatmaps, titles

    @classmethod
    def from_estimator(cls, estimator, X, *, target=None, titles=None, **gradcam_kwargs):
        """Compute the heatmaps of a fitted model on images ``X``.

        Parameters
        ----------
        estimator : fitted classifier
            A model :func:`skcxr.explain.gradcam` explains.
        X : paths or array of images
            The images.
        target : None, class label, or array-like of labels, default=None
            The class explained (None: each image's predicted class).
        titles : list of str, default=None
            One title per image.
        **gradcam_kwargs : dict
            Passed to :func:`skcxr.explain.gradcam` (``layer``, ``method``,
            ``batch_size``).

        Returns
        -------
        GradCAMDisplay
            Not yet drawn (:meth:`plot`).
        """
        from .explain import gradcam

        maps = gradcam(estimator, X, target=target, aligned="image", **gradcam_kwargs)
        return cls(X, list(maps), titles)

    @classmethod
    def from_heatmaps(cls, images, heatmaps, *, titles=None):
        """Take images and :func:`~skcxr.explain.gradcam`'s ``aligned="image"`` output.

        Parameters
        ----------
        images : array (n, H, W) or (n, H, W, 3), list of such arrays, or paths
            The images.
        heatmaps : ndarray or list of arrays
            One heatmap per image.
        titles : list of str, default=None
            One title per image.

        Returns
        -------
        GradCAMDisplay
            Not yet drawn (:meth:`plot`).
        """
        return cls(images, heatmaps, titles)

    def plot(self, *, alpha=0.45, cmap="jet", axes=None):
        """Draw the heatmaps (top row) and overlays (bottom row).

        Parameters
        ----------
        alpha : float, default=0.45
            Opacity of the heatmap in the overlay.
        cmap : str, default="jet"
            Colour map of the heatmaps.
        axes : array of 2 x n matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        self
            With ``axes_`` and ``figure_`` set.
        """
        self.axes_ = _draw_gradcam(self.images, self.heatmaps, titles=self.titles,
                                   alpha=alpha, cmap=cmap, axes=axes)
        self.figure_ = self.axes_.flat[0].figure
        return self


def plot_gradcam(images, heatmaps, *, titles=None, alpha=0.45, cmap="jet", axes=None):
    """Grad-CAM grid: for each image, the heatmap (top row) and its overlay (bottom row).

    A shortcut for ``GradCAMDisplay.from_heatmaps(images, heatmaps).plot(...).axes_``.

    Parameters
    ----------
    images : array (n, H, W) or (n, H, W, 3), or list of such arrays, or paths
        The images as given to :func:`skcxr.explain.gradcam` (paths are read with
        :func:`skcxr.images.read_image`).
    heatmaps : ndarray or list of arrays
        The output of :func:`skcxr.explain.gradcam` with ``aligned="image"``.
    titles : list of str, optional
        One title per image.
    alpha : float, default=0.45
        Opacity of the heatmap in the overlay.
    cmap : str, default="jet"
        Colour map of the heatmaps.
    axes : array of 2 x n matplotlib Axes, optional
        Where to draw; None makes a new figure.

    Returns
    -------
    axes : ndarray of matplotlib Axes, shape (2, n)
        The heatmaps' axes (top row) and the overlays' (bottom row).
    """
    return GradCAMDisplay.from_heatmaps(images, heatmaps, titles=titles).plot(
        alpha=alpha, cmap=cmap, axes=axes).axes_


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

class TopLossesDisplay:
    """The images a model gets most wrong, with file name, labels, probability and Grad-CAM.

    :meth:`from_estimator` (computes the Grad-CAM overlays when ``gradcam=True`` and the
    model is one :func:`skcxr.explain.gradcam` explains) or :meth:`from_predictions`
    (images only). Built on :class:`skcxr.interpretation.ErrorAnalysis`. After
    :meth:`plot`: ``axes_``, ``figure_``.

    Parameters
    ----------
    table : DataFrame
        :meth:`ErrorAnalysis.top_losses <skcxr.interpretation.ErrorAnalysis.top_losses>`'s
        table.
    images : list of arrays
        The images of its rows.
    heatmaps : list of arrays, default=None
        Their Grad-CAM heatmaps (None: images only).
    """

    def __init__(self, table, images, heatmaps=None):
        self.table, self.images, self.heatmaps = table, images, heatmaps

    @classmethod
    def from_predictions(cls, y_true, y_proba, X, *, k: int = 9, classes=None, groups=None,
                         y_pred=None):
        """Rank predictions, and read the images they were made on.

        Parameters
        ----------
        y_true : array-like of shape (n,)
            True labels.
        y_proba : array-like of shape (n, n_classes)
            Predicted probabilities.
        X : paths or array of images
            The images the predictions were made on.
        k : int, default=9
            Images shown.
        classes : array-like, default=None
            Classes in ``y_proba``'s column order (default: the sorted labels).
        groups : array-like of shape (n,), default=None
            Patient ids, shown beside each image.
        y_pred : array-like of shape (n,), default=None
            Decisions (default: the most probable class).

        Returns
        -------
        TopLossesDisplay
            Not yet drawn (:meth:`plot`).
        """
        from .interpretation import ErrorAnalysis

        errors = ErrorAnalysis.from_predictions(y_true, y_proba, y_pred, classes=classes,
                                                X=X, groups=groups)
        return cls._from_errors(errors, X, k, None)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, k: int = 9, groups=None, gradcam=True):
        """Rank a fitted classifier's predictions on ``X, y``.

        Parameters
        ----------
        estimator : fitted classifier
            With ``predict_proba`` and ``predict``.
        X : paths or array of images
            Held-out images.
        y : array-like of shape (n,)
            Their labels.
        k : int, default=9
            Images shown.
        groups : array-like of shape (n,), default=None
            Patient ids, shown beside each image.
        gradcam : bool, default=True
            Compute the Grad-CAM overlays of the true class.

        Returns
        -------
        TopLossesDisplay
            Not yet drawn (:meth:`plot`).
        """
        from .interpretation import ErrorAnalysis

        errors = ErrorAnalysis.from_estimator(estimator, X, y, groups=groups)
        return cls._from_errors(errors, X, k, estimator if gradcam else None)

    @classmethod
    def _from_errors(cls, errors, X, k, estimator):
        from sklearn.utils import _safe_indexing

        from .images import check_images

        table = errors.top_losses(k)
        source = check_images(_safe_indexing(X, table["row"].to_numpy()))
        images = [source.read(i) for i in range(len(source))]
        heatmaps = None
        if estimator is not None:
            from .explain import gradcam

            heatmaps = gradcam(estimator, source.data, target=list(table["true"]),
                               aligned="image")
            heatmaps = list(heatmaps)
        return cls(table, images, heatmaps)

    def plot(self, *, ncols: int = 3, alpha=0.4, cmap="jet", axes=None):
        """Draw a grid of the images, overlaid with Grad-CAM when there are heatmaps.

        Each is titled with its file name, true and predicted label, and probabilities.

        Parameters
        ----------
        ncols : int, default=3
            Images per row.
        alpha : float, default=0.4
            Opacity of the heatmap in the overlay.
        cmap : str, default="jet"
            Colour map of the heatmaps.
        axes : array of matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        self
            With ``axes_`` and ``figure_`` set.
        """
        import os

        plt = _plt()
        n = len(self.images)
        nrows = max(1, -(-n // ncols))
        if axes is None:
            _, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols, 2.9 * nrows),
                                   squeeze=False, layout="constrained")
        axes = np.asarray(axes).reshape(-1)
        for a in axes:
            a.set_axis_off()
        for j, (img, row) in enumerate(zip(self.images, self.table.itertuples())):
            img = np.asarray(img)
            if img.dtype.kind in "ui":
                img = img / float(np.iinfo(img.dtype).max)
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            axes[j].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if self.heatmaps is not None:
                axes[j].imshow(self.heatmaps[j], cmap=cmap, vmin=0, vmax=1, alpha=alpha)
            name = os.path.basename(str(row.path))
            patient = "" if row.patient is None else f" ({row.patient})"
            axes[j].set_title(f"{name}{patient}\ntrue {row.true}, predicted {row.predicted}\n"
                              f"p(true) {row.p_true:.2f}, loss {row.loss:.2f}", fontsize=7)
        self.axes_, self.figure_ = axes, axes[0].figure
        return self

"""Figures for skcxr results (matplotlib): training history, c x s grids, Grad-CAM overlays,
reliability diagrams.

Confusion matrices and ROC curves are scikit-learn's own displays
(:class:`sklearn.metrics.ConfusionMatrixDisplay`, :class:`sklearn.metrics.RocCurveDisplay`);
they work unchanged with skcxr estimators.

Every function draws into ``ax`` (or a new figure) and returns what it drew on, so figures
compose and save the usual way (``ax.figure.savefig(...)``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
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


def plot_history(history, *, metrics=("valid_auc", "valid_acc"), ax=None):
    """Loss and metrics per epoch of a fitted classifier, the unfreeze point and best epoch marked.

    Parameters
    ----------
    history : DataFrame or fitted PretrainedCNNClassifier
        ``clf.history_`` (or the classifier itself).
    metrics : sequence of str, default=("valid_auc", "valid_acc")
        History columns drawn on a second y axis (those present).
    ax : matplotlib Axes, optional

    Returns
    -------
    ax : matplotlib Axes (the loss axis; the metric axis is ``ax.right_ax`` when drawn)

    Notes
    -----
    The x axis ticks whole epochs; the legend sits below the axes, under the x axis label,
    so that it never covers a curve (``fig.tight_layout()`` or ``layout="tight"`` keeps it
    inside the saved figure; a figure made here has a tight layout already).
    """
    import pandas as pd

    plt = _plt()
    best = None
    if hasattr(history, "history_"):
        best = getattr(history, "best_epoch_", None)
        history = history.history_
    if not isinstance(history, pd.DataFrame) or "epoch" not in history:
        raise ValueError("history must be a fitted PretrainedCNNClassifier or its history_ "
                         "DataFrame (with an 'epoch' column).")
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
        cv_results key to draw (e.g. ``"mean_test_accuracy"`` with multi-metric scoring).
    baseline : None, float or array-like, default=None
        Subtracted from (``relative="difference"``) or divided into (``"ratio"``) the
        scores; an array must match the rows of ``cv_results`` (e.g. the majority
        classifier's score for each candidate's training-set size).
    relative : {"difference", "ratio"}
    ax : matplotlib Axes, optional
    cmap : str, default="RdBu"
        Colour map of a heatmap relative to a baseline (centred on "no change"); without a
        baseline the scores are drawn with "viridis".
    fmt : str, optional
        Format of the values written in the cells; default ``"{:+.3f}"`` for differences
        from a baseline, ``"{:.3f}"`` otherwise.

    Returns
    -------
    ax : matplotlib Axes
    table : DataFrame of the values drawn (rows x cols)
    """
    import pandas as pd

    plt = _plt()
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
    return ax, table


def _sort_key(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def plot_gradcam(images, heatmaps, *, titles=None, alpha=0.45, cmap="jet", axes=None):
    """Grad-CAM grid: for each image, the heatmap (top row) and its overlay (bottom row).

    Parameters
    ----------
    images : array (n, H, W) or (n, H, W, 3), or list of such arrays, or paths
        The images as given to :func:`skcxr.explain.gradcam` (paths are read with
        :func:`skcxr.images.read_image`).
    heatmaps : output of :func:`skcxr.explain.gradcam` with ``aligned="image"``
    titles : list of str, optional
    alpha : float, default=0.45
        Opacity of the heatmap in the overlay.
    axes : array of 2 x n matplotlib Axes, optional

    Returns
    -------
    axes : ndarray of matplotlib Axes, shape (2, n)
    """
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


def plot_reliability(y_true, proba, *, n_bins=10, name=None, ax=None):
    """Reliability diagram with the expected calibration error in the legend.

    scikit-learn's :class:`sklearn.calibration.CalibrationDisplay` draws it; this picks the
    events it plots: the positive class for binary ``proba`` (``(n,)`` or ``(n, 2)``), the
    predicted class's confidence against being right for multiclass ``(n, k)``, and every
    label's probability pooled for multi-label (``y_true`` a 0/1 ``(n, L)`` matrix).

    Parameters
    ----------
    y_true : array-like
        Labels ``0..k-1`` (as ``predict_proba``'s columns), or the multi-label 0/1 matrix.
    proba : array-like
        ``predict_proba`` output.
    n_bins : int, default=10
    name : str, optional
        Legend label (the ECE is appended).
    ax : matplotlib Axes, optional

    Returns
    -------
    ax : matplotlib Axes
    """
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
    return ax

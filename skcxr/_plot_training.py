"""Figures of training, public in :mod:`skcxr.plotting`: a fit's history per epoch
(:class:`HistoryDisplay`, :func:`plot_history`) and a grid search's scores over two
parameters, by default the c x s grid (:class:`GridHeatmapDisplay`,
:func:`plot_grid_heatmap`)."""

from __future__ import annotations

import numpy as np

from ._figures import pyplot


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
    plt = pyplot()
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
    plt = pyplot()
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

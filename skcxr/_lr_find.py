"""The learning-rate finder's curve and its suggestions (the sweep itself is
:func:`skcxr._training.lr_sweep`, run by :meth:`PretrainedCNNClassifier.lr_find`), and
:class:`LRFinderDisplay`, public in :mod:`skcxr.plotting`.

As fastai's ``lr_find`` and MONAI's ``LearningRateFinder`` (Smith, 2017): one training step
per rate on a geometric grid from ``start_lr`` to ``end_lr``, the loss smoothed by an
exponential moving average with bias correction, the sweep stopped once the smoothed loss
exceeds four times its minimum. Suggestions: ``"valley"`` (fastai's default since 2.5:
two thirds down the longest stretch over which the loss keeps falling), ``"minimum"`` (the
rate of the lowest loss divided by 10) and ``"steep"`` (the steepest descent).
"""

from __future__ import annotations

import numpy as np

from ._figures import pyplot

#: the suggestion ``LRFinderDisplay.suggestion`` holds
DEFAULT_SUGGESTION = "valley"


def lr_grid(start_lr: float, end_lr: float, num_it: int) -> np.ndarray:
    """``num_it`` rates from ``start_lr`` to ``end_lr``, evenly spaced in log scale."""
    return np.geomspace(float(start_lr), float(end_lr), int(num_it))


def smooth_losses(losses, beta: float = 0.98) -> np.ndarray:
    """Exponential moving average with bias correction (fastai's ``SmoothenValue``)."""
    out, avg = [], 0.0
    for i, loss in enumerate(np.asarray(losses, dtype=np.float64), 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return np.array(out)


def suggestions(lrs, losses) -> dict:
    """``{"valley", "minimum", "steep"}`` rates from a sweep's (smoothed) losses."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    n = len(losses)
    if n < 3:
        raise ValueError(f"The sweep ran {n} steps before the loss diverged: too few to "
                         "suggest a rate. Lower start_lr (or end_lr), or use more images.")
    # the longest decreasing subsequence: where the loss keeps falling
    run = np.ones(n, dtype=int)
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
    best_start = best_end - run[best_end] + 1
    third = (best_end - best_start) / 3
    valley = int(best_start + int(third) + int(third / 2))
    slope = np.gradient(losses, np.log(lrs))
    return {"valley": float(lrs[min(valley, n - 1)]),
            "minimum": float(lrs[int(np.argmin(losses))] / 10),
            "steep": float(lrs[int(np.argmin(slope))])}


class LRFinderDisplay:
    """A learning-rate sweep: the smoothed training loss against the rate, and the
    suggested rates (from :meth:`skcxr.PretrainedCNNClassifier.lr_find`).

    Parameters
    ----------
    lrs : ndarray
        The rates of the sweep's steps (until it stopped).
    losses : ndarray
        The smoothed training loss after each step.
    suggestions : dict
        ``{"valley", "minimum", "steep"}`` rates (see :mod:`skcxr._lr_find`).
    raw_losses : ndarray, optional
        The loss of each step before smoothing.

    Attributes
    ----------
    suggestion : float
        The ``"valley"`` rate: what to pass as ``lr``.
    ax_, figure_, line_ : matplotlib objects
        Set by :meth:`plot`.
    """

    def __init__(self, lrs, losses, suggestions: dict, raw_losses=None):
        self.lrs = np.asarray(lrs, dtype=np.float64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.suggestions = dict(suggestions)
        self.suggestion = self.suggestions[DEFAULT_SUGGESTION]
        self.raw_losses = None if raw_losses is None else np.asarray(raw_losses)

    @classmethod
    def from_sweep(cls, lrs, raw_losses) -> LRFinderDisplay:
        """The display of a sweep's rates and raw losses (smoothed here).

        Parameters
        ----------
        lrs : array-like
            The rates of the sweep's grid (cut to the steps taken).
        raw_losses : array-like
            The loss of each step taken.

        Returns
        -------
        LRFinderDisplay
            Not plotted yet.
        """
        lrs = np.asarray(lrs)[:len(raw_losses)]
        smoothed = smooth_losses(raw_losses)
        return cls(lrs, smoothed, suggestions(lrs, smoothed), raw_losses=raw_losses)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, ax=None, **kwargs) -> LRFinderDisplay:
        """Run ``estimator.lr_find(X, y, **kwargs)`` and plot it.

        Parameters
        ----------
        estimator : PretrainedCNNClassifier
            Unfitted or fitted: it is not changed.
        X, y : array-like
            As :meth:`skcxr.PretrainedCNNClassifier.lr_find`.
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.
        **kwargs
            ``sample_weight``, ``groups``, ``start_lr``, ``end_lr``, ``num_it`` of
            ``lr_find``.

        Returns
        -------
        LRFinderDisplay
            Plotted.
        """
        return estimator.lr_find(X, y, **kwargs).plot(ax=ax)

    def plot(self, ax=None) -> LRFinderDisplay:
        """The loss against the rate (log scale), each suggestion marked, the
        ``"valley"`` one as a line.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.

        Returns
        -------
        LRFinderDisplay
            ``self``, with ``ax_``, ``figure_``, ``line_`` set.
        """
        if ax is None:
            _, ax = pyplot().subplots(figsize=(5.5, 3.6))
        (self.line_,) = ax.plot(self.lrs, self.losses, color="C0", lw=1.6)
        for (name, lr), marker in zip(self.suggestions.items(), "ovs"):
            i = int(np.argmin(np.abs(np.log(self.lrs) - np.log(lr))))
            ax.plot(self.lrs[i], self.losses[i], marker, color="C3" if
                    name == DEFAULT_SUGGESTION else "0.4", ms=7, ls="none",
                    label=f"{name}: {lr:.1e}")
        ax.axvline(self.suggestion, color="C3", lw=0.8, ls="--")
        # the divergence at the end would flatten the descent: clip above the loss before it
        lowest = int(np.argmin(self.losses))
        top, bottom = self.losses[:lowest + 1].max(), self.losses.min()
        ax.set_ylim(bottom - 0.1 * (top - bottom), top + 0.25 * (top - bottom) + 1e-9)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        ax.set_title("Learning-rate finder")
        ax.legend(frameon=False, fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self

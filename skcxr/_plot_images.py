"""Figures of images, public in :mod:`skcxr.plotting`: Grad-CAM grids
(:class:`GradCAMDisplay`, :func:`plot_gradcam`) and the images a model gets most wrong,
with their Grad-CAM (:class:`TopLossesDisplay`)."""

from __future__ import annotations

import numpy as np

from ._figures import pyplot


def _draw_gradcam(images, heatmaps, *, titles=None, alpha=0.45, cmap="jet", axes=None):
    """Draw :class:`GradCAMDisplay` (parameters: :func:`plot_gradcam`)."""
    from .images import read_image

    plt = pyplot()
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

        plt = pyplot()
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

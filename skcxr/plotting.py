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

from ._curves import (
    PrecisionRecallCIDisplay,
    ReliabilityDisplay,
    RocCurveCIDisplay,
    plot_reliability,
)
from ._lr_find import LRFinderDisplay
from ._plot_images import GradCAMDisplay, TopLossesDisplay, plot_gradcam
from ._plot_training import (
    GridHeatmapDisplay,
    HistoryDisplay,
    plot_grid_heatmap,
    plot_history,
)

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

"""Figures (skcxr.plotting) drawn from classifiers fitted on real sample images."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402

from skcxr import PretrainedCNNClassifier  # noqa: E402
from skcxr.plotting import plot_gradcam, plot_grid_heatmap, plot_history  # noqa: E402


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    """Three epochs: one head-only, then two with 2 backbone layers trainable."""
    X, y = data
    return PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 3}, n_trainable_layers=2,
                                   freeze_epochs=1).fit(X, y)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _overlap(a, b) -> bool:
    """Whether two display-space Bboxes share any area (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _check_history_axes(ax, clf):
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # whole epochs on the x axis (no 1.5, 2.5 ...), and every epoch inside the limits
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    epochs = clf.history_["epoch"].to_numpy()
    assert lo < epochs.min() and epochs.max() < hi
    # the unfreeze point (between the head-only epoch and the next) and the best epoch
    verticals = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1]
    dotted = [line for line in verticals if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in dotted] == [clf.freeze_epochs + 0.5]
    best = [line for line in verticals if line.get_label().startswith("best epoch")]
    assert len(best) == 1 and best[0].get_xdata()[0] == clf.best_epoch_
    # one legend for both y axes, naming every curve and marker
    legend = ax.get_legend()
    texts = {t.get_text() for t in legend.get_texts()}
    assert {"train loss", "valid loss", "unfreeze", f"best epoch ({clf.best_epoch_})",
            "valid auc", "valid acc"} <= texts
    assert ax.right_ax.get_legend() is None
    # the legend lies outside the axes (below the axis label), so it covers no data ...
    box = legend.get_window_extent(renderer)
    assert not _overlap(box, ax.get_window_extent(renderer))
    assert not _overlap(box, ax.right_ax.get_window_extent(renderer))
    for line in ax.get_lines() + ax.right_ax.get_lines():
        assert not _overlap(box, line.get_window_extent(renderer))
    # ... nor the tick labels and the axis label, and stays inside the figure
    assert not _overlap(box, ax.xaxis.get_tightbbox(renderer))
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0
    return box


def test_plot_history_own_figure(fitted, tmp_path):
    ax = plot_history(fitted)
    assert len(fitted.history_) == 3
    _check_history_axes(ax, fitted)
    assert ax.right_ax.get_ylabel() == "valid auc, valid acc"
    ax.figure.savefig(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 5000


def test_plot_history_in_a_grid_of_axes(fitted):
    # as the examples draw it: several panels in one figure, then tight_layout
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2))
    for ax in axes:
        plot_history(fitted, metrics=("valid_auc", "valid_acc"), ax=ax)
        ax.set_title("a title above the axes")
    fig.tight_layout()
    boxes = [_check_history_axes(ax, fitted) for ax in axes]
    assert not _overlap(*boxes)
    assert not _overlap(boxes[0], axes[1].get_window_extent())


def test_plot_history_from_a_dataframe(fitted):
    history = fitted.history_.assign(n_trainable_layers=[0, 2, 5])  # two changes
    ax = plot_history(history, metrics=("valid_auc", "no_such_column"))
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts.count("unfreeze") == 1  # two dotted markers, one legend entry
    assert sum(line.get_linestyle() == ":" for line in ax.get_lines()) == 2
    assert not any(t.startswith("best epoch") for t in texts)  # a DataFrame has none
    assert "no such column" not in texts
    with pytest.raises(ValueError, match="history"):
        plot_history(fitted.history_.drop(columns="epoch"))


def test_plot_grid_heatmap(data, tiny_clf):
    X, y = data
    grid = GridSearchCV(PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 1}),
                        {"n_trainable_layers": [0, 2], "train_size": [10, 20]},
                        cv=StratifiedKFold(2)).fit(X, y)
    ax, table = plot_grid_heatmap(grid.cv_results_, baseline=0.5)
    assert table.shape == (2, 2) and list(table.columns) == [10, 20]
    np.testing.assert_allclose(
        table.loc["2", 20], grid.cv_results_["mean_test_score"][3] - 0.5)
    texts = [t for t in ax.texts]
    assert len(texts) == 4 and all(t.get_text().startswith(("+", "-")) for t in texts)
    assert all(t.get_bbox_patch() is not None for t in texts)  # readable on dark cells
    assert ax.images[0].norm.vmin == -ax.images[0].norm.vmax  # centred on the baseline
    ax, _ = plot_grid_heatmap(grid.cv_results_)  # raw scores: no sign
    assert not any(t.get_text().startswith("+") for t in ax.texts)
    with pytest.raises(ValueError, match="param_nope"):
        plot_grid_heatmap(grid.cv_results_, rows="nope")


def test_plot_gradcam(fitted, data, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from skcxr.explain import gradcam

    X, _ = data
    maps = gradcam(fitted, X[:2])
    axes = plot_gradcam(X[:2], maps, titles=["a", "b"])
    assert axes.shape == (2, 2)
    assert [a.get_title() for a in axes[0]] == ["a", "b"]
    photo = axes[1, 0].images[0]
    assert photo.norm.vmin == 0 and photo.norm.vmax == 1  # pixels as they are, not stretched
    axes[0, 0].figure.savefig(tmp_path / "cam.png")
    assert (tmp_path / "cam.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="aligned='image'"):
        plot_gradcam(X[:2], gradcam(fitted, X[:2], aligned="input"))

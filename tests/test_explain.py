"""Grad-CAM (skcxr.explain) and figures (skcxr.plotting) on real sample images."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier  # noqa: E402
from skcxr.explain import gradcam  # noqa: E402
from skcxr.images import read_image  # noqa: E402
from skcxr.plotting import plot_gradcam, plot_grid_heatmap, plot_history  # noqa: E402

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    X, y = data
    return PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 2, "freeze_epochs": 1,
                                      "max_epochs": 3}).fit(X, y)


def test_gradcam_heatmaps_are_aligned_to_the_images(fitted, data):
    X, _ = data
    maps = gradcam(fitted, X[:4])
    assert maps.shape == (4, 160, 160) and maps.dtype == np.float32  # the sample is 160 px
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() > 0.9 for m in maps)  # normalised per image, not all-zero
    small = gradcam(fitted, X[:4], aligned="input")
    assert small.shape == (4, 48, 48)
    # "image" is the input-size map stretched back: same picture, other resolution
    coarse = maps[:, ::10, ::10].reshape(4, -1)
    again = np.stack([np.asarray(Image.fromarray(m).resize((16, 16), Image.BILINEAR))
                      for m in small]).reshape(4, -1)
    assert min(np.corrcoef(a, b)[0, 1] for a, b in zip(coarse, again)) > 0.8


def test_gradcam_targets_and_layers(fitted, data):
    X, _ = data
    normal = gradcam(fitted, X[:3], target=0)
    pneumonia = gradcam(fitted, X[:3], target=1)
    assert not np.allclose(normal, pneumonia)  # the two classes' evidence differs
    assert gradcam(fitted, X[:1], layer="conv_head").shape == (1, 160, 160)
    with pytest.raises(ValueError, match="not one of the classes"):
        gradcam(fitted, X[:1], target="COVID")
    with pytest.raises(ValueError, match="not a module of the backbone"):
        gradcam(fitted, X[:1], layer="no.such.layer")
    with pytest.raises(ValueError, match="method"):
        gradcam(fitted, X[:1], method="magic")
    with pytest.raises(TypeError, match="PretrainedCNNClassifier"):
        gradcam(LogisticRegression(), X[:1])


def test_gradcam_through_an_imblearn_pipeline(data, tiny_clf):
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import make_pipeline as make_imb_pipeline

    X, y = data
    pipe = make_imb_pipeline(RandomOverSampler(random_state=0),
                             PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 1}))
    pipe.fit(X.reshape(-1, 1), y)
    np.testing.assert_allclose(gradcam(pipe, X[:2]), gradcam(pipe[-1], X[:2]))


def test_gradcam_padding_is_undone(data, tmp_path, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "resize": "pad", "max_epochs": 1}).fit(X, y)
    wide = tmp_path / "wide.png"
    Image.fromarray(read_image(X[0])).resize((200, 100)).save(wide)
    (m,) = gradcam(clf, [str(wide)])
    assert m.shape == (100, 200)  # the original image's shape, padding removed


def test_gradcam_for_a_feature_pipeline(data):
    X, y = data
    pipe = make_pipeline(FeatureExtractorTransformer(backbone="test_efficientnet", weights=None,
                                                     image_size=48, random_state=0),
                         StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    maps = gradcam(pipe, X[:3])
    assert maps.shape == (3, 160, 160) and maps.max() > 0.9


def test_plots(fitted, data, tmp_path, tiny_clf):
    X, y = data
    ax = plot_history(fitted)
    assert {"train loss", "valid loss"} <= {t.get_text() for t in ax.get_legend().get_texts()}
    assert any(line.get_linestyle() == ":" for line in ax.get_lines())  # the unfreeze point
    ax.figure.savefig(tmp_path / "history.png")

    grid = GridSearchCV(PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 1}),
                        {"n_trainable_layers": [0, 2], "train_size": [10, 20]},
                        cv=StratifiedKFold(2)).fit(X, y)
    ax, table = plot_grid_heatmap(grid.cv_results_, baseline=0.5)
    assert table.shape == (2, 2) and list(table.columns) == [10, 20]
    np.testing.assert_allclose(
        table.loc["2", 20], grid.cv_results_["mean_test_score"][3] - 0.5)
    with pytest.raises(ValueError, match="param_nope"):
        plot_grid_heatmap(grid.cv_results_, rows="nope")

    maps = gradcam(fitted, X[:2])
    axes = plot_gradcam(X[:2], maps, titles=["a", "b"])
    assert axes.shape == (2, 2)
    axes[0, 0].figure.savefig(tmp_path / "cam.png")
    assert (tmp_path / "cam.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="aligned='image'"):
        plot_gradcam(X[:2], gradcam(fitted, X[:2], aligned="input"))

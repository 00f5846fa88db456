"""Grad-CAM (skcxr.explain) on real sample images (figures: test_plotting.py)."""

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
from skcxr.explain import gradcam
from skcxr.images import read_image

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


def test_gradcam_of_a_soft_voting_ensemble_is_the_mean_of_its_members(data, tiny_clf):
    """Members on their own input sizes, fitted on the ensemble's encoded labels: the
    ensemble's heatmap of a class is the weighted mean of the members' heatmaps of it."""
    from sklearn.ensemble import VotingClassifier

    X, y = data
    names = np.array(["NORMAL", "PNEUMONIA"])[y]
    params = {**tiny_clf, "n_trainable_layers": 2, "freeze_epochs": 1, "max_epochs": 3}
    a = PretrainedCNNClassifier(**params)
    b = PretrainedCNNClassifier(**{**params, "image_size": 64})
    ensemble = VotingClassifier([("a", a), ("b", b)], voting="soft",
                                weights=[1, 3]).fit(X, names)
    maps = gradcam(ensemble, X[:3], target="PNEUMONIA")
    ma, mb = (gradcam(m, X[:3], target=1) for m in ensemble.estimators_)
    assert maps.shape == (3, 160, 160)
    np.testing.assert_allclose(maps, (ma + 3 * mb) / 4, atol=1e-6)
    assert ma.max() > 0.9 and mb.max() > 0.9  # neither member's map is empty
    assert not np.allclose(ma, mb)  # the members differ: the mean is not one of them
    # no target: each image's ensemble prediction
    predicted = ensemble.predict(X[:3])
    np.testing.assert_allclose(gradcam(ensemble, X[:3]),
                               gradcam(ensemble, X[:3], target=predicted), atol=1e-6)
    with pytest.raises(ValueError, match="not one of the classes"):
        gradcam(ensemble, X[:1], target="COVID")
    with pytest.raises(ValueError, match="aligned='image'"):
        gradcam(ensemble, X[:1], aligned="input")
    with pytest.raises(TypeError, match="voting='soft'"):
        gradcam(VotingClassifier([("a", a)], voting="hard").fit(X, names), X[:1])

"""One "fitted estimator as a network": export and explain accept the same estimators and
pipelines (one list), and what they build computes what the estimator computes."""

import numpy as np
import pytest
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import make_pipeline as imb_pipeline
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    Normalizer,
    StandardScaler,
)
from sklearn.svm import LinearSVC

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
from skcxr._fitted import ACCEPTED, as_network
from skcxr.export import to_onnx
from skcxr.images import check_images

pytest.importorskip("onnxruntime")
pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def parts(data, tiny_fe, tiny_clf):
    X, y = data
    y3 = np.r_[[0] * 20, [1] * 20, [2] * 20]
    fe = FeatureExtractorTransformer(**tiny_fe).fit(X)
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, tta="flip").fit(X, y)
    return X, y, y3, fe, clf


def _feature_pipe(fe, *steps):
    return make_pipeline(FeatureExtractorTransformer(**fe.get_params()), *steps)


#: (name, build(parts) -> unfitted or fitted estimator, y key, output or None if refused)
CASES = [
    ("classifier", lambda p: p[4], None, "probabilities"),
    ("samplers then the classifier",
     lambda p: imb_pipeline(RandomOverSampler(random_state=0),
                            PretrainedCNNClassifier(**p[4].get_params())), "y", "probabilities"),
    ("features", lambda p: p[3], None, "features"),
    ("features + StandardScaler", lambda p: _feature_pipe(p[3], StandardScaler()), "y",
     "features"),
    ("features + LogisticRegression", lambda p: _feature_pipe(p[3], LogisticRegression()), "y",
     "probabilities"),
    ("features + StandardScaler + LogisticRegression (3 classes)",
     lambda p: _feature_pipe(p[3], StandardScaler(), LogisticRegression()), "y3",
     "probabilities"),
    ("features + MinMaxScaler + LogisticRegression",
     lambda p: _feature_pipe(p[3], MinMaxScaler(), LogisticRegression()), "y", "probabilities"),
    ("features + MaxAbsScaler + LinearSVC",
     lambda p: _feature_pipe(p[3], MaxAbsScaler(), LinearSVC()), "y", "scores"),
    ("features + sampler + RidgeClassifier (3 classes)",
     lambda p: imb_pipeline(FeatureExtractorTransformer(**p[3].get_params()),
                            RandomOverSampler(random_state=0), RidgeClassifier()), "y3",
     "scores"),
    ("features + FunctionTransformer + LogisticRegression",
     lambda p: _feature_pipe(p[3], FunctionTransformer(np.abs), LogisticRegression()), "y",
     None),
    ("features + PCA + LogisticRegression",
     lambda p: _feature_pipe(p[3], PCA(4), LogisticRegression()), "y", None),
    ("features + MinMaxScaler(clip=True)",
     lambda p: _feature_pipe(p[3], MinMaxScaler(clip=True)), "y", None),
    ("features + Normalizer (per row, not affine) + LogisticRegression",
     lambda p: _feature_pipe(p[3], Normalizer(), LogisticRegression()), "y", None),
    ("a plain LogisticRegression",
     lambda p: LogisticRegression().fit(np.eye(4), [0, 1, 0, 1]), None, None),
]


@pytest.mark.parametrize("name, build, target, output", CASES, ids=[c[0] for c in CASES])
def test_export_and_explain_accept_the_same_list(parts, name, build, target, output,
                                                 tmp_path):
    import onnxruntime as ort

    from skcxr.explain import gradcam

    X, y, y3, *_ = parts
    X = X.reshape(-1, 1)  # the (n, 1) column imbalanced-learn's samplers take
    est = build(parts)
    if target is not None:
        est = est.fit(X, y if target == "y" else y3)
    if output is None:  # refused by the builder, so by both, with the list of what is taken
        with pytest.raises(TypeError) as exported:
            to_onnx(est, tmp_path / "m.onnx")
        with pytest.raises(TypeError) as explained:
            gradcam(est, X[:2])
        assert ACCEPTED in str(exported.value) and ACCEPTED in str(explained.value)
        assert not (tmp_path / "m.onnx").exists()
        return
    assert as_network(est).output == output
    card = to_onnx(est, tmp_path / "m.onnx")
    assert card["output"]["name"] == output
    source = check_images(X[:6])  # the images to_onnx's input is: resized, uint8, NHWC
    prep = as_network(est).preprocessing
    images = np.stack([prep.decode(source, i)[0].numpy() for i in range(len(source))])[..., None]
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": images})[0]
    if output == "probabilities":
        want = est.predict_proba(X[:6])
    elif output == "scores":
        want = est.decision_function(X[:6])
        want = want[:, None] if want.ndim == 1 else want
    else:
        want = est.transform(X[:6])
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))
    if output == "features":  # no class scores to explain
        with pytest.raises(TypeError, match="explains class scores"):
            gradcam(est, X[:2])
    else:
        maps = gradcam(est, X[:2])
        assert maps.shape[0] == 2 and np.isfinite(maps).all()
        assert 0 <= maps.min() and maps.max() <= 1


def test_the_engine_uses_the_fitted_network_itself(parts):
    """copy=False (the whole-network engine): the fitted module's own weights, unchanged."""
    *_, clf = parts
    net = as_network(clf, copy=False)
    fitted = dict(clf.module_.named_parameters())
    body = dict(net.body.named_parameters())
    assert all(any(p is q for q in fitted.values()) for p in body.values())
    copied = as_network(clf)
    assert not any(p is q for p in copied.body.parameters() for q in fitted.values())

"""ONNX export: the file's outputs equal the estimator's (ONNX Runtime), and its model card."""

import json
import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
from skcxr.export import OPSET, TOLERANCE, to_onnx
from skcxr.images import check_images

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def resized(est, X) -> np.ndarray:
    """The images as the exported file takes them: uint8, at the fitted size, (n, H, W)."""
    prep = est.preprocessing_
    source = check_images(X)
    return np.stack([prep.decode(source, i)[0].numpy() for i in range(len(source))])


def run(path, images) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    X, y = data
    return PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, tta="flip+shift",
                                   calibration="temperature",
                                   threshold="balanced_accuracy",
                                   validation_fraction=0.3).fit(X, y)


def test_classifier_round_trip_with_tta_and_calibration(fitted, data, tmp_path):
    X, y = data
    card = to_onnx(fitted, tmp_path / "model.onnx")
    images = resized(fitted, X)
    expected = fitted.predict_proba(images)  # the same pixels through skcxr
    got = run(tmp_path / "model.onnx", images[..., None])
    assert got.shape == expected.shape == (len(X), 2) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= TOLERANCE
    # the temperature and the tta views are in the graph: a sharper temperature, then no
    # tta, each round-trips and changes the file's output (the tiny network's probabilities
    # sit near 0.5, so sharpen them first)
    def variant(**changes):
        est = PretrainedCNNClassifier(**fitted.get_params())
        est.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
        for k, v in changes.items():
            setattr(est, k, v)
        path = tmp_path / f"variant{len(changes)}.onnx"
        to_onnx(est, path)
        out = run(path, images[..., None])
        assert np.abs(out - est.predict_proba(images)).max() <= TOLERANCE
        return out

    sharp = variant(temperature_=0.02)
    assert np.abs(sharp - got).max() > 10 * TOLERANCE
    assert np.abs(variant(temperature_=0.02, tta=None) - sharp).max() \
        > 10 * TOLERANCE
    # the card: what a deployment needs besides the file
    written = json.loads((tmp_path / "model.json").read_text())
    assert written == card
    assert card["opset"] == OPSET and onnx.load(tmp_path / "model.onnx").opset_import[0] \
        .version == OPSET
    import hashlib
    assert card["sha256"] == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert card["input"]["shape"] == ["batch", 48, 48, 1] and card["input"]["dtype"] == "uint8"
    assert card["output"]["classes"] == fitted.classes_.tolist()
    assert card["thresholds"] == pytest.approx(fitted.thresholds_.tolist())
    assert card["calibration"]["temperature"] == pytest.approx(fitted.temperature_)
    assert card["tta_views"] == list(("none", "hflip", "shift_left", "shift_right",
                                      "shift_up", "shift_down"))
    assert card["data_fingerprint"] == fitted.data_fingerprint_
    assert card["weights"]["state_sha256"] == fitted.provenance_["state_sha256"]
    assert card["training"]["n_train_samples"] == fitted.n_train_samples_
    assert card["versions"]["torch"] and card["params"]["n_trainable_layers"] == 2
    # the thresholds in the card reproduce predict
    pred = fitted.classes_[(got[:, 1] >= card["thresholds"][0]).astype(int)]
    assert (pred == fitted.predict(images)).mean() >= 0.98


def test_rgb_input_and_a_dynamic_batch(fitted, data, tmp_path):
    X, _ = data
    to_onnx(fitted, tmp_path / "rgb.onnx", channels=3)
    grey = resized(fitted, X[:7])
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 9, 0, 255)  # not quite grey
    got = run(tmp_path / "rgb.onnx", rgb)  # a batch of 7: the batch axis is dynamic
    np.testing.assert_allclose(got, fitted.predict_proba(rgb), atol=TOLERANCE)
    got1 = run(tmp_path / "rgb.onnx", rgb[:1])
    np.testing.assert_allclose(got1, got[:1], atol=1e-5)


def test_multilabel_classifier_exports_sigmoids(data, tiny_clf, tmp_path):
    X, y = data
    Y = np.c_[y, (np.arange(len(y)) % 3 == 0).astype(int)]
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2).fit(X, Y)
    to_onnx(clf, tmp_path / "ml.onnx")
    images = resized(clf, X)
    got = run(tmp_path / "ml.onnx", images[..., None])
    assert got.shape == (len(X), 2)
    np.testing.assert_allclose(got, clf.predict_proba(images), atol=TOLERANCE)


def test_feature_extractor_and_linear_pipeline(data, tiny_fe, tmp_path):
    X, y = data
    fe = FeatureExtractorTransformer(**tiny_fe).fit(X)
    card = to_onnx(fe, tmp_path / "fe.onnx")
    images = resized(fe, X)
    got, expected = run(tmp_path / "fe.onnx", images[..., None]), fe.transform(images)
    assert card["output"]["name"] == "features" and got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()

    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe), StandardScaler(),
                         LogisticRegression(C=0.1)).fit(X, y)
    card = to_onnx(pipe, tmp_path / "pipe.onnx")
    got = run(tmp_path / "pipe.onnx", images[..., None])
    np.testing.assert_allclose(got, pipe.predict_proba(images), atol=TOLERANCE)
    assert card["output"]["classes"] == [0, 1] and card["estimator"] == "Pipeline"


def test_errors_before_any_export(data, tiny_fe, tiny_clf, fitted, tmp_path):
    from sklearn.exceptions import NotFittedError

    X, y = data
    with pytest.raises(NotFittedError):
        to_onnx(PretrainedCNNClassifier(**tiny_clf), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="channels must be 1"):
        to_onnx(fitted, tmp_path / "a.onnx", channels=2)
    with pytest.raises(ValueError, match=r"\.onnx"):
        to_onnx(fitted, tmp_path / "a.txt")
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe), FunctionTransformer(np.abs),
                         LogisticRegression()).fit(X, y)
    with pytest.raises(TypeError, match="FunctionTransformer.*skl2onnx"):
        to_onnx(pipe, tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="LogisticRegression"):
        to_onnx(LogisticRegression().fit(np.eye(2), [0, 1]), tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())  # nothing written


def test_data_fingerprint_is_the_content_not_the_order_or_paths(data, tiny_clf, tmp_path):
    X, y = data
    params = {**tiny_clf, "max_epochs": 1}
    a = PretrainedCNNClassifier(**params).fit(X, y).data_fingerprint_
    order = np.random.default_rng(0).permutation(len(X))
    b = PretrainedCNNClassifier(**params).fit(X[order], y[order]).data_fingerprint_
    copies = []
    for i, p in enumerate(X):  # the same files under other names
        copies.append(str(tmp_path / f"copy{i}.jpeg"))
        shutil.copyfile(p, copies[-1])
    c = PretrainedCNNClassifier(**params).fit(np.array(copies), y).data_fingerprint_
    flipped = y.copy()
    flipped[0] = 1 - flipped[0]
    d = PretrainedCNNClassifier(**params).fit(X, flipped).data_fingerprint_
    assert a == b == c and d != a and len(a) == 64


@pytest.fixture(scope="module")
def earlier_export(fitted, tmp_path_factory):
    """An export already at the path (one, for every interruption below)."""
    path = tmp_path_factory.mktemp("earlier") / "model.onnx"
    card = to_onnx(fitted, path)
    return path.read_bytes(), path.with_suffix(".json").read_text(), card


@pytest.mark.parametrize("where", ["while exporting the graph", "while writing the card"])
def test_an_interrupted_export_leaves_the_previous_pair_intact(earlier_export, data, tiny_fe,
                                                                tmp_path, monkeypatch, where):
    """A Ctrl-C during an export over an earlier one at the same path: the .onnx and its card
    stay the earlier pair (the card's sha256 is the file's), with no temporary files left."""
    import hashlib

    import torch

    X, _ = data
    path = tmp_path / "model.onnx"
    path.write_bytes(earlier_export[0])
    path.with_suffix(".json").write_text(earlier_export[1])
    fe = FeatureExtractorTransformer(**tiny_fe).fit(X[:2])  # another model
    if where == "while exporting the graph":
        real = torch.onnx.export

        def interrupted(*args, **kwargs):
            real(*args, **kwargs)  # the new file is written (under a temporary name)
            raise KeyboardInterrupt

        monkeypatch.setattr(torch.onnx, "export", interrupted)
    else:  # the new graph is written, its card is being written
        monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(
            KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        to_onnx(fe, path)
    monkeypatch.undo()
    assert (path.read_bytes(), path.with_suffix(".json").read_text()) == earlier_export[:2]
    assert json.loads(earlier_export[1])["sha256"] == \
        hashlib.sha256(earlier_export[0]).hexdigest() == earlier_export[2]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.onnx"]
    if where == "while writing the card":  # an export that is not interrupted replaces both
        card = to_onnx(fe, path)
        assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert json.loads(path.with_suffix(".json").read_text())["estimator"] == \
            "FeatureExtractorTransformer"

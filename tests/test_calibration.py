"""Calibration and decision thresholds fitted on the inner validation rows (issue 12, item 4)."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from skcxr import PretrainedCNNClassifier
from skcxr.calibration import (
    expected_calibration_error,
    fit_temperature,
    fit_thresholds,
    probabilities,
)

# --------------------------------------------------------------------------- the functions


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.c_[np.zeros(4000), 3 * z]  # the true logit, times 3
    t = fit_temperature(logits, y, "binary")
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(y, probabilities(logits, "binary"))
    after = expected_calibration_error(y, probabilities(logits / t, "binary"))
    assert after < before / 2


@pytest.mark.parametrize("objective, expect", [
    ("balanced_accuracy", 0.425), ("youden", 0.425), ("f1", 0.425),
    (("sensitivity", 0.6), 0.7), (("sensitivity", 0.99), 0.425)])
def test_thresholds(objective, expect):
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.55, 0.8, 0.9])
    (t,) = fit_thresholds(p, y, "binary", objective)
    assert t == pytest.approx(expect)
    if isinstance(objective, tuple):
        assert np.mean(p[y == 1] >= t) >= objective[1]


def test_per_label_thresholds_and_multiclass_refused():
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 1]])
    P = np.array([[0.9, 0.1], [0.6, 0.2], [0.2, 0.3], [0.1, 0.4], [0.3, 0.25], [0.7, 0.35]])
    t = fit_thresholds(P, Y, "multilabel", "balanced_accuracy")
    assert ((P >= t) == Y).all()  # separable per label: every row right
    with pytest.raises(ValueError, match="multiclass"):
        fit_thresholds(np.eye(3), np.arange(3), "multiclass", "f1")


def test_ece_of_a_perfectly_calibrated_and_a_wrong_model():
    rng = np.random.default_rng(1)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, np.where(p > 0.5, 1.0, 0.0)) > 0.2


def test_reliability_plot():
    pytest.importorskip("matplotlib")
    from skcxr.plotting import plot_reliability

    rng = np.random.default_rng(2)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    ax = plot_reliability(y, np.c_[1 - p, p], name="test")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("test (ECE 0.") for label in labels)
    assert plot_reliability(np.eye(3)[[0, 1, 2, 1]], np.full((4, 3), 0.4)) is not None


# --------------------------------------------------------------------------- in the classifier


@pytest.fixture(scope="module")
def fits(data, tiny_clf):
    X, y = data
    params = {**tiny_clf, "n_trainable_layers": 2, "validation_fraction": 0.3, "max_epochs": 3}
    return {name: PretrainedCNNClassifier(**params, **extra).fit(X, y) for name, extra in [
        ("plain", {}), ("temperature", {"calibration": "temperature"}),
        ("balanced", {"calibration": "temperature", "threshold": "balanced_accuracy"}),
        ("sensitive", {"threshold": ("sensitivity", 0.95)})]}


def test_temperature_changes_probabilities_not_ranking(fits, data):
    X, y = data
    plain, cal = fits["plain"], fits["temperature"]
    assert cal.temperature_ > 0 and plain.temperature_ is None
    np.testing.assert_allclose(cal.decision_function(X), plain.decision_function(X))  # same net
    p0, p1 = plain.predict_proba(X), cal.predict_proba(X)
    np.testing.assert_allclose(p1[:, 1], probabilities(
        np.c_[np.zeros(len(X)), cal.decision_function(X)] / cal.temperature_, "binary")[:, 1],
        atol=1e-5)
    # the ranking is the logits'; float32 probabilities of this tiny net sit within 1e-3 of
    # 0.5, where rounding ties a few pairs
    assert roc_auc_score(y, p1[:, 1]) == pytest.approx(roc_auc_score(y, p0[:, 1]), abs=5e-3)
    np.testing.assert_array_equal(cal.predict(X), plain.predict(X))
    # fitted on the validation rows: their log-loss is no worse
    v = cal.fit_rows_.valid
    assert log_loss(y[v], p1[v], labels=[0, 1]) <= log_loss(y[v], p0[v], labels=[0, 1]) + 1e-6


def test_thresholds_decide_predict(fits, data):
    X, y = data
    bal = fits["balanced"]
    (t,) = bal.thresholds_
    p = bal.predict_proba(X)[:, 1]
    np.testing.assert_array_equal(bal.predict(X), bal.classes_[(p >= t).astype(int)])
    sens = fits["sensitive"]
    v = sens.fit_rows_.valid
    pred = sens.predict(X[v])
    assert np.mean(pred[y[v] == 1] == 1) >= 0.95  # the sensitivity asked for, where chosen


@pytest.mark.filterwarnings("ignore:Multi-label y")
def test_multilabel_thresholds_per_label(sample, tiny_clf):
    X = sample.data[::3]
    Y = np.c_[sample.target[::3], 1 - sample.target[::3], np.arange(len(X)) % 2]
    clf = PretrainedCNNClassifier(**tiny_clf, threshold="f1", validation_fraction=0.3)
    clf.fit(X, Y)
    assert clf.thresholds_.shape == (3,)
    P = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict(X), (P >= clf.thresholds_).astype(int))


@pytest.mark.parametrize("params, y_kind, match", [
    ({"calibration": "temperature", "validation_fraction": 0}, "binary", "validation_fraction"),
    ({"threshold": "f1", "validation_fraction": 0.0}, "binary", "validation_fraction"),
    ({"threshold": "f1"}, "multiclass", "multiclass|3 classes"),
])
def test_calibration_errors_come_before_training(sample_paths, tiny_clf, params, y_kind, match):
    X, y = sample_paths
    if y_kind == "multiclass":
        y = np.arange(len(X)) % 3
    clf = PretrainedCNNClassifier(**tiny_clf, **params)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


# --------------------------------------------------------------------------- test-time augmentation


def test_views_are_exact_pixel_operations():
    import torch

    from skcxr.images import apply_view

    t = torch.arange(3 * 50 * 50, dtype=torch.float32).reshape(3, 50, 50)
    assert torch.equal(apply_view(t, "hflip"), t.flip(-1))
    right = apply_view(t, "shift_right")  # 4% of 50 = 2 pixels
    assert torch.equal(right[..., 2:], t[..., :-2]) and (right[..., :2] == 0).all()
    down = apply_view(t, "shift_down")
    assert torch.equal(down[:, 2:], t[:, :-2]) and (down[:, :2] == 0).all()


def test_tta_averages_the_probabilities_of_each_view(data, tiny_clf):
    from skcxr.cache import cache_info, clear_cache
    from skcxr.images import read_image

    X, y = data
    params = {**tiny_clf, "n_trainable_layers": 2}
    clf = PretrainedCNNClassifier(**params, tta="flip").fit(X, y)
    plain = PretrainedCNNClassifier(**params).fit(X, y)  # the same network (same seed)
    np.testing.assert_allclose(plain.predict_proba(X), clf.set_params(tta=None)
                               .predict_proba(X))
    clf.set_params(tta="flip")
    # the flipped view, by hand: flip the pixels, no tta
    flipped = np.ascontiguousarray(np.stack([read_image(p)[:, ::-1] for p in X[:6]]))
    by_hand = (plain.predict_proba(X[:6]) + plain.predict_proba(flipped)) / 2
    np.testing.assert_allclose(clf.predict_proba(X[:6]), by_hand, atol=2e-3)
    # exact and cached: each view's prefix outputs computed once
    clear_cache()
    clf.predict_proba(X)
    computed = cache_info()["features"]["computed"]
    assert computed == 2 * len(X)
    clf.predict_proba(X)
    assert cache_info()["features"]["computed"] == computed
    assert clf.predict(X).shape == (len(X),)


def test_tta_with_calibration_fits_on_the_averaged_predictions(data, tiny_clf):
    """Temperature and threshold are fitted on the validation rows' view-averaged
    probabilities: refitting them from predict_proba's own output gives the same values."""
    X, y = data
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, tta="flip",
                                  calibration="temperature", threshold="balanced_accuracy",
                                  validation_fraction=0.3).fit(X, y)
    v = clf.fit_rows_.valid
    views = []
    for view in ("none", "hflip"):
        single = PretrainedCNNClassifier(**clf.get_params())
        single.__dict__.update({k: val for k, val in clf.__dict__.items() if k.endswith("_")})
        single.set_params(tta=(view,))
        single.temperature_, single.thresholds_ = None, None
        logits = single.decision_function(X[v])
        views.append(np.c_[np.zeros(len(v)), logits])
    assert clf.temperature_ == pytest.approx(fit_temperature(np.stack(views), y[v], "binary"),
                                             rel=1e-3)
    proba = probabilities(np.stack(views) / clf.temperature_, "binary")
    np.testing.assert_allclose(proba, clf.predict_proba(X[v]), atol=1e-5)
    (t,) = fit_thresholds(proba, y[v], "binary", "balanced_accuracy")
    assert clf.thresholds_[0] == pytest.approx(t, abs=1e-4)

"""scikit-learn's full estimator check suite, on array inputs.

sklearn's checks generate ``(n, d)`` tables of numbers, and only run on estimators whose
tags say they take them (``two_d_array``); skcxr's estimators take images (paths or
``(n, H, W[, C])`` pixel arrays) and reject such tables. So each estimator is checked
through a thin subclass that presents every row of a numeric table as one grey image of
2 x d pixels (values squashed into [0, 1] by the logistic function, elementwise: the map
is fixed and row-local, so it cannot hide a dependence between rows; NaN and inf are kept
for the estimator's own checks). Anything that is not a real-valued 2-D table (1-D arrays,
object, complex or sparse data, ``_NotAnArray``) reaches the estimator as it is, so the
checks see the estimator's own validation.

Every check that fails is listed below with why, and the test asserts that it fails in the
way listed: a listed check that starts passing, or fails otherwise, fails the test.
"""

from functools import partial

import numpy as np
import pytest
from scipy.special import expit
from sklearn.utils.estimator_checks import (
    check_classifiers_train,
    check_transformer_general,
    parametrize_with_checks,
)

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier

# the tiny random-weight backbone of the other tests; 32 px, a short training that learns
# sklearn's blobs (lr 1e-2, 5 epochs: enough for check_class_weight_classifiers)
_TINY = dict(backbone="test_efficientnet", weights=None, random_state=0, precision="fp32",
             engine="torch", image_size=32, batch_size=16)


def _as_images(X):
    """A real-valued ``(n, d)`` table as ``n`` grey images of ``2 x max(d, 2)`` pixels,
    ``(n, 2, w, 1)`` (4-D: an unambiguous batch); anything else unchanged."""
    if not isinstance(X, (np.ndarray, list, tuple)) and not hasattr(X, "iloc"):
        return X
    table = np.asarray(X)
    if table.ndim != 2 or table.dtype.kind not in "biuf":
        return X
    table = table.astype(np.float64)
    pixels = np.where(np.isfinite(table), expit(table), table)  # NaN and inf stay
    images = np.repeat(pixels[:, None, :, None], 2, axis=1)
    if images.shape[2] == 1:
        images = np.repeat(images, 2, axis=2)
    return images


class _RowsAsImages:
    """Tags of the adapter: it takes sklearn's (n, d) tables, of any real values."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = False
        tags.input_tags.string = False
        tags.input_tags.positive_only = False  # the logistic map takes any real number
        return tags


class RowImagesTransformer(_RowsAsImages, FeatureExtractorTransformer):
    def fit(self, X, y=None):
        return super().fit(_as_images(X), y)

    def transform(self, X):
        return super().transform(_as_images(X))


class RowImagesClassifier(_RowsAsImages, PretrainedCNNClassifier):
    def fit(self, X, y, sample_weight=None, groups=None):
        return super().fit(_as_images(X), y, sample_weight=sample_weight, groups=groups)

    def decision_function(self, X):
        return super().decision_function(_as_images(X))

    def predict_proba(self, X):
        return super().predict_proba(_as_images(X))

    def predict(self, X):
        return super().predict(_as_images(X))


ESTIMATORS = [RowImagesTransformer(**_TINY),
              RowImagesClassifier(**_TINY, max_epochs=5, lr=1e-2)]

# ---------------------------------------------------------------- expected failures, and why
# check name -> (why it fails, the exception it fails with, a regex of that exception's
# message, None for any): the test asserts that each one fails, and fails in that way.

_WIDTH = ("images are resized to image_size, so {} accepts rows of another width instead of "
          "raising; the rest of the check passes ({} below)")
_NOT_AN_ARRAY = (
    "skcxr reads an object that only implements __array__ as that array, but this test's "
    "wrapper turns numpy tables into images and passes _NotAnArray through, so the raw "
    "(n, d) table reaches skcxr and is refused as not images")
BOTH = {
    "check_n_features_in_after_fitting": (
        "no n_features_in_: an image's pixel count is not a feature count, and images of any "
        "size are resized to image_size",
        AssertionError, r"does not set the `n_features_in_` attribute"),
    "check_n_features_in": (
        "no n_features_in_ (see check_n_features_in_after_fitting)", AssertionError, None),
    "check_complex_data": (
        "raises ValueError 'Image arrays must be numeric; got dtype complex128', not "
        "sklearn's 'Complex data not supported'",
        AssertionError, r"Image arrays must be numeric; got dtype complex128"),
    "check_dtype_object": (
        "an object array is read as file paths (X is paths or pixel arrays): an object table "
        "of numbers is rejected as paths of the wrong shape",
        ValueError, r"Paths must be given as a 1-D sequence or a \(n, 1\) column"),
    "check_estimators_empty_data_messages": (
        "(n, 0) rows are images with no pixels: ValueError 'X has n images with no pixels', "
        "not sklearn's '0 feature(s)' message",
        AssertionError, r"images with no pixels"),
    "check_fit2d_predict1d": (
        "a 1-D numeric array is rejected with skcxr's ValueError ('Image arrays must have "
        "shape (n, H, W) or (n, H, W, C) ... For a single image use X[None]'), not sklearn's "
        "'Reshape your data'",
        AssertionError, r"Image arrays must have shape \(n, H, W\) or \(n, H, W, C\)"),
}
EXPECTED_FAILED_CHECKS = {
    RowImagesTransformer: {
        **BOTH,
        "check_transformer_data_not_an_array": (
            _NOT_AN_ARRAY, ValueError, r"Image arrays must have shape"),
        "check_transformer_general": (
            _WIDTH.format("transform", "test_transformer_general_with_a_fixed_width"),
            AssertionError, r"does not raise an error when the number of features in "
                            r"transform is different"),
    },
    RowImagesClassifier: {
        **BOTH,
        "check_classifier_data_not_an_array": (
            _NOT_AN_ARRAY, ValueError, r"Image arrays must have shape"),
        "check_sample_weights_not_an_array": (
            "X comes as _NotAnArray too: " + _NOT_AN_ARRAY,
            ValueError, r"Image arrays must have shape"),
        "check_all_zero_sample_weights_error": (
            "raises ValueError 'sample_weight sums to 0: no row would count in the loss', "
            "which does not match sklearn's 'weight.*zero' pattern",
            AssertionError, r"sample_weight sums to 0"),
        "check_sample_weight_equivalence_on_dense_data": (
            "minibatch SGD with a seeded stratified inner validation split and shuffling: "
            "repeating a row changes the split, the batches and the draws, so weight 2 is "
            "not the same fit as a repeated row (as for sklearn's SGD-trained estimators)",
            AssertionError, r"fitting with `sample_weight` is not equivalent"),
        "check_classifiers_train": (
            _WIDTH.format("predict", "test_classifiers_train_with_a_fixed_width"),
            AssertionError, r"does not raise an error when the number of features in "
                            r"predict is different"),
        "check_supervised_y_2d": (
            "an (n, 1) column y is read as n labels without a DataConversionWarning; the "
            "predictions are those of 1-D y (test_a_column_y_is_read_as_labels below)",
            AssertionError, r"expected 1 DataConversionWarning"),
        "check_fit2d_1sample": (
            "one row is one class: ValueError 'y has a single class ...; a classifier needs "
            "at least 2', not one of sklearn's '1 sample' messages",
            AssertionError, r"y has a single class"),
        "check_requires_y_none": (
            "raises ValueError 'y is required: PretrainedCNNClassifier is supervised.', not "
            "one of sklearn's literal messages",
            ValueError, r"y is required: PretrainedCNNClassifier is supervised"),
    },
}


def _check_name(check):
    """The name of a check as parametrize_with_checks hands it over (sklearn's rule)."""
    if hasattr(check, "__wrapped__"):
        return _check_name(check.__wrapped__)
    return check.func.__name__ if isinstance(check, partial) else check.__name__


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check):
    expected = EXPECTED_FAILED_CHECKS[type(estimator)].get(_check_name(check))
    if expected is None:
        check(estimator)
        return
    why, exception, match = expected
    # fails, and in the way listed (an expected failure that starts passing fails here)
    with pytest.raises(exception, match=match):
        check(estimator)
    pytest.xfail(why)


def test_every_expected_failure_names_a_check_that_runs():
    from sklearn.utils.estimator_checks import estimator_checks_generator

    for estimator in ESTIMATORS:
        names = {_check_name(c) for _, c in estimator_checks_generator(estimator, mark=None)}
        assert set(EXPECTED_FAILED_CHECKS[type(estimator)]) <= names


# ------------------------------------------- the parts that the expected failures skip


class _FixedWidth:
    """Rejects rows of another width than fit's, as a model of fixed-size images would:
    so the checks that stop at the width test run to their end."""

    def fit(self, X, *args, **kwargs):
        self._width = np.shape(X)[1]
        return super().fit(X, *args, **kwargs)

    def _same_width(self, X):
        if np.ndim(X) == 2 and np.shape(X)[1] != self._width:  # a table, not yet images
            raise ValueError(f"X has {np.shape(X)[1]} columns; fit had {self._width}.")
        return X


class FixedWidthTransformer(_FixedWidth, RowImagesTransformer):
    def transform(self, X):
        return super().transform(self._same_width(X))


class FixedWidthClassifier(_FixedWidth, RowImagesClassifier):
    def decision_function(self, X):
        return super().decision_function(self._same_width(X))

    def predict_proba(self, X):
        return super().predict_proba(self._same_width(X))

    def predict(self, X):
        return super().predict(self._same_width(X))


@pytest.mark.parametrize("kwargs", [{}, {"readonly_memmap": True}])
def test_transformer_general_with_a_fixed_width(kwargs):
    check_transformer_general("FixedWidthTransformer", FixedWidthTransformer(**_TINY),
                              **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"readonly_memmap": True},
                                    {"readonly_memmap": True, "X_dtype": "float32"}])
def test_classifiers_train_with_a_fixed_width(kwargs):
    """Training accuracy > 0.83 on blobs, with lists too; decision_function agrees with
    predict, predict_proba sums to 1 and agrees with both (binary and 3 classes)."""
    clf = FixedWidthClassifier(**_TINY, max_epochs=5, lr=1e-2)
    check_classifiers_train("FixedWidthClassifier", clf, **kwargs)


def test_a_column_y_is_read_as_labels():
    """The end of check_supervised_y_2d: y as an (n, 1) column predicts what 1-D y does."""
    rng = np.random.RandomState(0)
    X, y = rng.uniform(size=(30, 3)), np.arange(30) % 3
    clf = RowImagesClassifier(**_TINY, max_epochs=2)
    flat = clf.fit(X, y).predict(X)
    column = clf.fit(X, y[:, None]).predict(X)
    assert column.shape == (30,)
    np.testing.assert_array_equal(column, flat)

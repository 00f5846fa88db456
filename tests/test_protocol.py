"""skcxr.protocol.fit_rows: the careful protocol of a fit, inspected without fitting."""

import numpy as np
import pytest

from skcxr.protocol import fit_rows


def test_rows_and_weights_come_from_the_rows_given():
    y = np.array([0] * 30 + [1] * 90)
    rows = fit_rows(y, train_size=80, validation_fraction=0.25, class_weight="balanced", seed=3)
    assert rows.task == "binary" and rows.classes.tolist() == [0, 1] and rows.n_outputs == 2
    assert len(rows.train) == 60 and len(rows.valid) == 20
    assert not set(rows.train) & set(rows.valid)
    # stratified: both draws keep the 1:3 ratio
    assert np.bincount(y[rows.valid]).tolist() == [5, 15]
    assert np.bincount(y[rows.train]).tolist() == [15, 45]
    # class weights from the training rows only, in the row weights
    assert rows.class_weight.tolist() == pytest.approx([2.0, 2 / 3])
    np.testing.assert_allclose(rows.weights, rows.class_weight[y])
    again = fit_rows(y, train_size=80, validation_fraction=0.25, class_weight="balanced", seed=3)
    np.testing.assert_array_equal(again.valid, rows.valid)  # seeded
    assert not np.array_equal(fit_rows(y, seed=4).valid, fit_rows(y, seed=3).valid)


def test_multilabel_rows_weigh_positives_not_rows():
    rng = np.random.RandomState(0)
    Y = (rng.rand(50, 3) < [0.5, 0.2, 0.1]).astype(int)
    rows = fit_rows(Y, class_weight="balanced", sample_weight=np.full(50, 2.0))
    assert rows.task == "multilabel" and rows.n_outputs == 3
    pos = Y[rows.train].sum(0)
    np.testing.assert_allclose(rows.pos_weight, (len(rows.train) - pos) / pos)
    np.testing.assert_array_equal(rows.weights, 2.0)  # pos_weight is not a row weight


@pytest.mark.parametrize("kwargs, match", [
    ({"y": None}, "y is required"),
    ({"y": [0, 1] * 5, "train_size": "half"}, "'train_size' parameter of fit_rows"),
    ({"y": [0, 1] * 5, "validation_fraction": None}, "'validation_fraction' parameter"),
    ({"y": [0, 1] * 5, "class_weight": {0: -1}}, "'class_weight' parameter"),
    ({"y": [0, 1] * 5, "class_weight": {2: 1.0}}, "unknown classes"),
    ({"y": [0, 1] * 5, "n": 9}, "different lengths"),
    ({"y": [0, 1] * 5, "train_size": 20}, "fit received only 10"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_rows(**kwargs)

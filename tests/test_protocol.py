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


@pytest.mark.filterwarnings("ignore:Multi-label y")
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


# --------------------------------------------------------------------------- patient groups


def _groups(n, size=5):
    return np.repeat(np.arange(n // size + 1), size)[:n].astype(str)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_keep_each_patient_on_one_side(seed):
    y = np.array([0] * 100 + [1] * 200)
    g = _groups(300)
    rows = fit_rows(y, groups=g, train_size=150, validation_fraction=0.2, seed=seed)
    assert not set(g[rows.train]) & set(g[rows.valid])
    used = np.r_[rows.train, rows.valid]
    assert abs(len(used) - 150) <= 5  # whole groups of 5
    assert abs(len(rows.valid) - 30) <= 5
    # stratified: a third of each side is class 0 (groups here are single-class)
    for side in (rows.train, rows.valid):
        assert abs(np.mean(y[side] == 0) - 1 / 3) < 0.1
    # a patient outside the subsample is wholly outside it
    assert not set(g[used]) & set(g[np.setdiff1d(np.arange(300), used)])


def test_groups_split_is_seeded():
    y, g = np.array([0, 1] * 150), _groups(300, 3)
    a, b = (fit_rows(y, groups=g, seed=s).valid for s in (0, 1))
    np.testing.assert_array_equal(a, fit_rows(y, groups=g, seed=0).valid)
    assert not np.array_equal(a, b)


def test_one_group_cannot_be_split():
    with pytest.raises(ValueError, match="all belong to one group.*validation_fraction=0"):
        fit_rows(np.array([0, 1] * 10), groups=np.zeros(20), seed=0)
    rows = fit_rows(np.array([0, 1] * 10), groups=np.zeros(20), validation_fraction=0, seed=0)
    assert len(rows.train) == 20


@pytest.mark.parametrize("bad, match", [(np.zeros(7), "1-D array of 20"),
                                         (np.array([1.0] * 19 + [np.nan]), "missing id")])
def test_bad_groups(bad, match):
    with pytest.raises(ValueError, match=match):
        fit_rows(np.array([0, 1] * 10), groups=bad)


def test_multilabel_split_is_stratified_per_label():
    Y = (np.random.default_rng(0).random((400, 4)) < [0.5, 0.2, 0.05, 0.3]).astype(int)
    from skcxr.cache import clear_cache

    clear_cache()  # the warning is given once per process, until clear_cache
    with pytest.warns(UserWarning, match=r"fewer than 5 positive rows"):
        rows = fit_rows(Y, validation_fraction=0.25, seed=0)
    assert rows.rare_labels == {"training": [], "validation": [2]}
    share = Y[rows.valid].sum(0) / Y.sum(0)
    np.testing.assert_allclose(share, 0.25, atol=0.05)  # every label, the rare one too


# --------------------------------------------------------------------------- samplers


def test_sampler_resamples_training_rows_only():
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    y = np.array([0] * 30 + [1] * 90)
    over = fit_rows(y, sampler=RandomOverSampler(), validation_fraction=0.2, seed=0)
    assert np.bincount(y[over.train]).tolist() == [72, 72]
    assert len(np.unique(over.train)) == 96 and not set(over.train) & set(over.valid)
    under = fit_rows(y, sampler=RandomUnderSampler(), validation_fraction=0.2, seed=0)
    assert np.bincount(y[under.train]).tolist() == [24, 24]
    # seeded by fit's seed when the sampler's random_state is None
    np.testing.assert_array_equal(
        under.train, fit_rows(y, sampler=RandomUnderSampler(), validation_fraction=0.2,
                              seed=0).train)


def test_synthetic_samplers_and_multilabel_are_refused():
    from imblearn.over_sampling import SMOTE

    with pytest.raises(ValueError, match="SMOTE made new samples"):
        fit_rows(np.array([0] * 30 + [1] * 90), sampler=SMOTE(k_neighbors=2), seed=0)
    with pytest.raises(ValueError, match="sampler"):
        fit_rows(np.array([0, 1] * 10), sampler="oversample")


# --------------------------------------------------------------------------- inside fit


@pytest.fixture
def kermany(data):
    """60 sample images with patient groups of 3 (the sample has one image per patient)."""
    X, y = data
    return X, y, _groups(len(X), 3)


def test_fit_with_groups_splits_by_patient(kermany, tiny_clf):
    from skcxr import PretrainedCNNClassifier

    X, y, g = kermany
    clf = PretrainedCNNClassifier(**tiny_clf, validation_fraction=0.2).fit(X, y, groups=g)
    rows = clf.fit_rows_
    assert not set(g[rows.train]) & set(g[rows.valid])
    assert clf.n_valid_samples_ == len(rows.valid) == 12


def test_groups_reach_fit_through_metadata_routing(kermany, tiny_clf):
    """cross_validate with routed groups: the outer folds and every inner split are grouped."""
    import sklearn
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, cross_validate

    from skcxr import PretrainedCNNClassifier

    X, y, g = kermany
    with sklearn.config_context(enable_metadata_routing=True):
        clf = PretrainedCNNClassifier(**tiny_clf, validation_fraction=0.2)
        clf.set_fit_request(groups=True, sample_weight=False)
        out = cross_validate(clf, X, y, cv=StratifiedGroupKFold(3), params={"groups": g},
                             return_estimator=True, return_indices=True)
        for est, train in zip(out["estimator"], out["indices"]["train"]):
            gf = g[train]  # the fold's groups, as its fit saw them
            assert not set(gf[est.fit_rows_.train]) & set(gf[est.fit_rows_.valid])
            assert not set(gf) & set(g[np.setdiff1d(np.arange(len(X)), train)])
        search = GridSearchCV(clf, {"n_trainable_layers": [0, 1]}, cv=StratifiedGroupKFold(3))
        search.fit(X, y, groups=g)
        rows = search.best_estimator_.fit_rows_
        assert not set(g[rows.train]) & set(g[rows.valid])


def test_sampler_inside_fit_never_leaks_into_early_stopping(data, tiny_clf):
    """Instrumented: how many validation images also trained. A sampler in front of the
    classifier (imbalanced-learn pipeline) duplicates rows before fit splits them; sampler=
    resamples after the split."""
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import make_pipeline

    from skcxr import PretrainedCNNClassifier

    X, y = data
    X, y = X[10:], y[10:]  # 20 normal, 30 pneumonia: imbalanced
    params = {**tiny_clf, "validation_fraction": 0.3}

    def leaked(clf, X_seen):
        rows = clf.fit_rows_
        return len(set(X_seen[rows.valid]) & set(X_seen[rows.train]))

    inside = PretrainedCNNClassifier(**params, sampler=RandomOverSampler(random_state=0))
    inside.fit(X, y)
    assert leaked(inside, X) == 0
    assert np.bincount(y[inside.fit_rows_.train]).tolist() == [21, 21]
    seen = {}
    pipe = make_pipeline(RandomOverSampler(random_state=0), PretrainedCNNClassifier(**params))
    pipe.fit(X.reshape(-1, 1), y)
    seen["X"], _ = RandomOverSampler(random_state=0).fit_resample(X.reshape(-1, 1), y)
    assert leaked(pipe[-1], seen["X"].ravel()) > 0  # the leak that sampler= removes

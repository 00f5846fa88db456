"""scikit-learn API conformance with image inputs (STYLE.md rule 7)."""

import numpy as np
import pytest
from conftest import TINY
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks as ec

from skcxr import FeatureExtractorTransformer

ESTIMATORS = [FeatureExtractorTransformer(**TINY)]

# parametrize_with_checks runs nothing for image input (two_d_array=False), so the
# data-free checks are called here and the data-dependent ones are written below.
DATA_FREE_CHECKS = [
    ec.check_no_attributes_set_in_init,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_estimator_cloneable,
    ec.check_estimator_repr,
    ec.check_do_not_raise_errors_in_init_or_set_params,
    ec.check_mixin_order,
    ec.check_estimators_unfitted,
    ec.check_valid_tag_types,
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("check", DATA_FREE_CHECKS, ids=lambda c: c.__name__)
def test_data_free_api_checks(estimator, check):
    name = type(estimator).__name__
    check(name, clone(estimator))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_fit_returns_self_clone_then_fit_and_idempotent_fit(estimator, sample_paths):
    X, y = sample_paths
    est = clone(estimator)
    assert est.fit(X, y) is est
    first = est.transform(X)
    np.testing.assert_array_equal(est.fit(X, y).transform(X), first)  # idempotent
    np.testing.assert_array_equal(clone(est).fit(X, y).transform(X), first)  # clone-then-fit
    assert est.get_params() == clone(est).get_params()


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_unfitted_transform_raises(estimator, sample_paths):
    X, _ = sample_paths
    with pytest.raises(NotFittedError):
        clone(estimator).transform(X)


def test_works_in_cross_val_score_and_grid_search(sample, tmp_path):
    X, y = sample.data[::5], sample.target[::5]  # 60 images
    pipe = make_pipeline(FeatureExtractorTransformer(**TINY, memory=tmp_path),
                         LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, X, y, cv=StratifiedKFold(3), scoring="accuracy")
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    grid = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=StratifiedKFold(3))
    grid.fit(X, y)
    assert grid.best_params_["logisticregression__C"] in (0.1, 1.0)
    assert grid.predict(X[:5]).shape == (5,)


def test_imbalanced_learn_pipeline_with_a_path_column(sample):
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import make_pipeline as make_imb_pipeline

    X, y = sample.data[::5].reshape(-1, 1), sample.target[::5]  # (60, 1) column of paths
    pipe = make_imb_pipeline(RandomOverSampler(random_state=0),
                             FeatureExtractorTransformer(**TINY),
                             LogisticRegression(max_iter=1000))
    pipe.fit(X, y)
    assert pipe.predict_proba(X).shape == (60, 2)
    X_res, y_res = RandomOverSampler(random_state=0).fit_resample(X, y)
    assert X_res.shape == (80, 1) and np.bincount(y_res).tolist() == [40, 40]


def test_column_transformer_with_a_path_column_and_tabular_columns(sample):
    import pandas as pd
    from sklearn.compose import ColumnTransformer

    df = pd.DataFrame({"path": sample.data[::10], "age": np.arange(30.0)})
    ct = ColumnTransformer([("img", FeatureExtractorTransformer(**TINY), ["path"]),
                            ("age", "passthrough", ["age"])])
    out = ct.fit_transform(df)
    assert out.shape == (30, 257)
    np.testing.assert_array_equal(out[:, -1], np.arange(30.0))
    assert ct.get_feature_names_out()[0] == "img__featureextractortransformer0"

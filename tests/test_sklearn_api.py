"""scikit-learn API conformance with image inputs (STYLE.md rule 7)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks as ec

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier

# the tiny presets of conftest's tiny_fe / tiny_clf fixtures (parametrize needs them at import)
_TINY = dict(backbone="test_efficientnet", weights=None, random_state=0, precision="fp32",
             engine="torch")
ESTIMATORS = [FeatureExtractorTransformer(**_TINY, image_size=64),
              PretrainedCNNClassifier(**_TINY, image_size=48, max_epochs=2, batch_size=16)]

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
    out = est.transform if hasattr(est, "transform") else est.predict_proba
    assert est.fit(X, y) is est
    first = out(X)
    est.fit(X, y)
    np.testing.assert_array_equal(out(X), first)  # idempotent
    again = clone(est).fit(X, y)  # clone-then-fit
    np.testing.assert_array_equal(getattr(again, out.__name__)(X), first)
    assert est.get_params() == clone(est).get_params()


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_unfitted_transform_raises(estimator, sample_paths):
    X, _ = sample_paths
    est = clone(estimator)
    with pytest.raises(NotFittedError):
        est.transform(X) if hasattr(est, "transform") else est.predict(X)


def test_works_in_cross_val_score_and_grid_search(sample, tmp_path, tiny_fe):
    X, y = sample.data[::5], sample.target[::5]  # 60 images
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe, memory=tmp_path),
                         LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, X, y, cv=StratifiedKFold(3), scoring="accuracy")
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    grid = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=StratifiedKFold(3))
    grid.fit(X, y)
    assert grid.best_params_["logisticregression__C"] in (0.1, 1.0)
    assert grid.predict(X[:5]).shape == (5,)


def test_imbalanced_learn_pipeline_with_a_path_column(sample, tiny_fe):
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import make_pipeline as make_imb_pipeline

    X, y = sample.data[::5].reshape(-1, 1), sample.target[::5]  # (60, 1) column of paths
    pipe = make_imb_pipeline(RandomOverSampler(random_state=0),
                             FeatureExtractorTransformer(**tiny_fe),
                             LogisticRegression(max_iter=1000))
    pipe.fit(X, y)
    assert pipe.predict_proba(X).shape == (60, 2)
    X_res, y_res = RandomOverSampler(random_state=0).fit_resample(X, y)
    assert X_res.shape == (80, 1) and np.bincount(y_res).tolist() == [40, 40]


def test_column_transformer_with_a_path_column_and_tabular_columns(sample, tiny_fe):
    import pandas as pd
    from sklearn.compose import ColumnTransformer

    df = pd.DataFrame({"path": sample.data[::10], "age": np.arange(30.0)})
    ct = ColumnTransformer([("img", FeatureExtractorTransformer(**tiny_fe), ["path"]),
                            ("age", "passthrough", ["age"])])
    out = ct.fit_transform(df)
    assert out.shape == (30, 257)
    np.testing.assert_array_equal(out[:, -1], np.arange(30.0))
    assert ct.get_feature_names_out()[0] == "img__featureextractortransformer0"


def test_classifier_in_cross_val_score_and_pipeline(data, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**tiny_clf)
    scores = cross_val_score(make_pipeline(clf), X, y, cv=StratifiedKFold(3), scoring="roc_auc")
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_grid_search_over_c_and_s(data, tiny_clf):
    X, y = data
    grid = GridSearchCV(PretrainedCNNClassifier(**tiny_clf),
                        {"n_trainable_layers": [0, 2, 8], "train_size": [12, 24]},
                        cv=StratifiedKFold(3), scoring="roc_auc")
    grid.fit(X, y)
    res = grid.cv_results_
    assert list(res["param_n_trainable_layers"]) == [0, 0, 2, 2, 8, 8]
    assert list(res["param_train_size"]) == [12, 24] * 3
    assert np.isfinite(res["mean_test_score"]).all()
    best = grid.best_estimator_
    assert best.n_trainable_layers == grid.best_params_["n_trainable_layers"]
    assert best.predict_proba(X[:4]).shape == (4, 2)
    assert best.n_train_samples_ + best.n_valid_samples_ == grid.best_params_["train_size"]


def test_threshold_tuning_and_calibration(data, tiny_clf):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import TunedThresholdClassifierCV

    X, y = data
    tuned = TunedThresholdClassifierCV(PretrainedCNNClassifier(**tiny_clf), cv=2,
                                       scoring="balanced_accuracy").fit(X, y)
    assert 0 <= tuned.best_threshold_ <= 1 and tuned.predict(X).shape == (60,)
    cal = CalibratedClassifierCV(PretrainedCNNClassifier(**tiny_clf), cv=2).fit(X, y)
    proba = cal.predict_proba(X)
    assert proba.shape == (60, 2) and np.allclose(proba.sum(1), 1)


def test_imbalanced_learn_oversampling_with_augmented_copies(sample, tiny_clf):
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import make_pipeline as make_imb_pipeline

    idx = np.r_[0:10, 100:140]  # 10 NORMAL vs 40 PNEUMONIA
    X, y = sample.data[idx].reshape(-1, 1), sample.target[idx]
    pipe = make_imb_pipeline(RandomOverSampler(random_state=0),
                             PretrainedCNNClassifier(**tiny_clf, augment="standard"))
    pipe.fit(X, y)
    clf = pipe[-1]
    assert clf.n_train_samples_ + clf.n_valid_samples_ == 80  # oversampled to 40 + 40
    assert pipe.predict(X).shape == (50,)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_the_shared_parameters_come_in_the_same_order_in_both_signatures(estimator):
    import inspect

    from skcxr._params import SHARED_CONSTRAINTS, SHARED_HEAD, SHARED_TAIL

    names = list(inspect.signature(type(estimator)).parameters)
    assert names[:len(SHARED_HEAD)] == list(SHARED_HEAD)
    assert names[-len(SHARED_TAIL):] == list(SHARED_TAIL)
    assert set(SHARED_HEAD) | set(SHARED_TAIL) == set(SHARED_CONSTRAINTS)
    documented = [line.split(" : ")[0].strip() for line in type(estimator).__doc__.splitlines()
                  if " : " in line and line.startswith("    ") and not line.startswith("     ")]
    params = [n for n in documented if n in names]
    assert params == names  # the docstring documents them in the signature's order


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_a_pickle_loads_in_the_same_minor_version_only(estimator, sample_paths):
    """The persistence policy: a fitted model records the skcxr version that pickled it and
    loads in that minor version; one written by another minor version stops with an error
    naming both."""
    import pickle

    import skcxr

    X, y = sample_paths
    fitted = clone(estimator).fit(X, y)
    np.testing.assert_array_equal(_output(pickle.loads(pickle.dumps(fitted)), X),
                                  _output(fitted, X))
    state = fitted.__getstate__()
    assert state["_skcxr_version"] == skcxr.__version__

    def load(version):
        obj = type(fitted).__new__(type(fitted))
        obj.__setstate__({**state, "_skcxr_version": version})
        return obj

    minor = ".".join(skcxr.__version__.split(".")[:2])
    np.testing.assert_array_equal(_output(load(minor + ".99"), X), _output(fitted, X))
    for other in ("0.0.9", "9.9.0", None):
        with pytest.raises(TypeError, match=rf"pickled by skcxr .*this is skcxr "
                                            rf"{skcxr.__version__}.*minor version that wrote "
                                            "it.*Refit"):
            load(other)


def _output(est, X):
    return est.transform(X) if hasattr(est, "transform") else est.predict_proba(X)

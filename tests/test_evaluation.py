"""Bootstrap intervals, external validation, leave-one-site-out."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skcxr import FeatureExtractorTransformer
from skcxr.adaptation import adapt_batchnorm
from skcxr.evaluation import bootstrap_indices, bootstrap_metrics, external_validation


def test_point_estimates_are_scikit_learns():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 2, 300)
    score = y + rng.normal(0, 1.2, 300)
    score[:20] = np.round(score[:20])  # ties
    pred = (score > 0.4).astype(int)
    t = bootstrap_metrics(y, score, pred, metrics=("roc_auc", "pr_auc", "sensitivity",
                                                   "specificity", "ppv", "balanced_accuracy",
                                                   "f1"), n_resamples=50)
    assert t.loc["roc_auc", "estimate"] == pytest.approx(roc_auc_score(y, score))
    assert t.loc["pr_auc", "estimate"] == pytest.approx(average_precision_score(y, score))
    assert t.loc["sensitivity", "estimate"] == pytest.approx(recall_score(y, pred))
    assert t.loc["specificity", "estimate"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert t.loc["ppv", "estimate"] == pytest.approx(precision_score(y, pred))
    assert t.loc["balanced_accuracy", "estimate"] == pytest.approx(
        balanced_accuracy_score(y, pred))
    assert t.loc["f1", "estimate"] == pytest.approx(f1_score(y, pred))
    # string labels, positive = the second class
    labels = np.array(["NORMAL", "PNEUMONIA"])
    t2 = bootstrap_metrics(labels[y], score, labels[pred], metrics=("sensitivity",),
                           n_resamples=10)
    assert t2.loc["sensitivity", "estimate"] == pytest.approx(recall_score(y, pred))


def test_intervals_cover_a_known_auc_at_about_their_nominal_rate():
    """Binormal scores with separation d have ROC AUC = Phi(d / sqrt(2)) exactly."""
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    rng = np.random.RandomState(0)
    covered = []
    for rep in range(200):
        y = np.r_[np.zeros(60), np.ones(60)].astype(int)
        score = rng.normal(0, 1, 120) + d * y
        t = bootstrap_metrics(y, score, metrics=("roc_auc",), n_resamples=300,
                              random_state=rep)
        covered.append(t.loc["roc_auc", "ci_low"] <= truth <= t.loc["roc_auc", "ci_high"])
    rate = np.mean(covered)
    assert 0.89 <= rate <= 0.99, rate  # nominal 0.95; 200 repetitions: +-0.03


def test_stratified_and_grouped_resamples():
    y = np.array([0] * 30 + [1] * 70)
    idx = bootstrap_indices(y, n_resamples=20, random_state=0)
    assert idx.shape == (20, 100)
    assert (y[idx].sum(1) == 70).all()  # class counts kept
    groups = np.repeat(np.arange(50), 2)  # patients of two images each
    res = bootstrap_indices(y, groups=groups, n_resamples=20, random_state=0)
    for r in res:
        drawn = groups[r]
        # whole patients: every patient drawn appears with both images, as often
        ids, counts = np.unique(drawn, return_counts=True)
        assert (counts % 2 == 0).all()
    # patients are wider than images when a patient's images agree
    rng = np.random.RandomState(0)
    patient_score = rng.normal(0, 1, 50) + np.repeat([0, 1], 25)[:50]
    score = np.repeat(patient_score, 2)
    yp = np.repeat(np.repeat([0, 1], 25), 2)
    a = bootstrap_metrics(yp, score, metrics=("roc_auc",), n_resamples=400)
    b = bootstrap_metrics(yp, score, metrics=("roc_auc",), groups=groups, n_resamples=400)
    width = lambda t: t.loc["roc_auc", "ci_high"] - t.loc["roc_auc", "ci_low"]  # noqa: E731
    assert width(b) > 1.2 * width(a)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="binary"):
        bootstrap_metrics([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="y_pred"):
        bootstrap_metrics([0, 1], [0.1, 0.2], metrics=("accuracy",))
    with pytest.raises(ValueError, match="unknown"):
        bootstrap_metrics([0, 1], [0.1, 0.2], metrics=("auc",))


def test_external_validation_of_a_feature_pipeline_with_an_adapted_setting(data, tiny_fe):
    X, y = data
    # internal: 40 images; external: 20 others, brighter (another site)
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    inside, outside = order[:40], order[40:]
    from skcxr.images import check_images

    src = check_images(X[outside])
    X_ext = np.stack([np.clip(src.read(i).astype(np.float32) * 0.7 + 60, 0, 255)
                      .astype(np.uint8) for i in range(len(src))])
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe), StandardScaler(),
                         LogisticRegression(max_iter=500))
    seen = []

    def spy(fitted, images):  # an adaptation sees the external images, never labels
        seen.append(len(images))
        return adapt_batchnorm(fitted, images, reference=X[inside])

    result = external_validation(pipe, X[inside], y[inside], X_ext, y[outside],
                                 cv=StratifiedKFold(4), adaptations={"AdaBN": spy},
                                 metrics=("roc_auc", "balanced_accuracy"), n_resamples=100)
    assert seen == [20]
    t = result.table.set_index(["setting", "metric"])
    assert set(t.index.get_level_values(0)) == {"internal CV", "external",
                                                "AdaBN (transductive)"}
    row = t.loc[("external", "roc_auc")]
    assert row.ci_low <= row.estimate <= row.ci_high
    assert row.gap == pytest.approx(row.estimate - t.loc[("internal CV", "roc_auc"),
                                                         "estimate"])
    assert row.gap_low <= row.gap <= row.gap_high
    assert np.isnan(t.loc[("internal CV", "roc_auc"), "gap"])
    # the internal part is out-of-fold: every row scored once, by a model that did not see it
    assert (result.internal["fold"] >= 0).all() and result.internal["fold"].nunique() == 4
    assert result.internal["score"].notna().all()
    assert t.loc[("internal CV", "roc_auc"), "estimate"] == pytest.approx(
        roc_auc_score(y[inside], result.internal["score"]))
    ext = result.external["external"]
    np.testing.assert_allclose(ext["score"], result.estimator.predict_proba(X_ext)[:, 1])
    assert t.loc[("external", "roc_auc"), "estimate"] == pytest.approx(
        roc_auc_score(y[outside], ext["score"]))


def test_leave_one_site_out_keeps_each_site_on_one_side(data, tiny_fe):
    X, y = data
    sites = np.array(["a", "b", "c"] * 20)
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe), LogisticRegression())
    out = cross_validate(pipe, X, y, groups=sites, cv=LeaveOneGroupOut(),
                         scoring="roc_auc", return_indices=True)
    for train, test in zip(out["indices"]["train"], out["indices"]["test"]):
        assert len(set(sites[test])) == 1
        assert set(sites[test]).isdisjoint(sites[train])
    assert len(out["test_score"]) == 3


def test_external_validation_folds_in_parallel_give_the_same_result():
    """n_jobs fits the folds in parallel (joblib); the out-of-fold scores, the table and
    each fold's rows of fit_params are those of the sequential run."""
    import pandas as pd
    from joblib import parallel_config
    from sklearn.base import BaseEstimator, ClassifierMixin

    class RowWeighted(ClassifierMixin, BaseEstimator):  # checks it gets its fold's weights
        def fit(self, X, y, sample_weight=None):
            assert sample_weight is not None and len(sample_weight) == len(X)
            assert np.array_equal(sample_weight, X[:, 3])
            self.model_ = LogisticRegression().fit(X[:, :3], y, sample_weight=sample_weight)
            self.classes_ = self.model_.classes_
            return self

        def predict_proba(self, X):
            return self.model_.predict_proba(X[:, :3])

        def predict(self, X):
            return self.model_.predict(X[:, :3])

    rng = np.random.RandomState(0)
    y = np.r_[np.zeros(40), np.ones(40)].astype(int)
    w = rng.uniform(0.5, 2.0, 80)
    X = np.c_[rng.normal(size=(80, 3)) + y[:, None], w]  # the last column: the row's weight
    X_ext = np.c_[rng.normal(size=(30, 3)) + np.r_[np.zeros(15), np.ones(15)][:, None] * 0.5,
                  np.ones(30)]
    y_ext = np.r_[np.zeros(15), np.ones(15)].astype(int)
    kw = dict(cv=StratifiedKFold(4), fit_params={"sample_weight": w}, n_resamples=50)
    one = external_validation(RowWeighted(), X, y, X_ext, y_ext, **kw)
    with parallel_config(backend="threading"):
        two = external_validation(RowWeighted(), X, y, X_ext, y_ext, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(one.internal, two.internal)
    pd.testing.assert_frame_equal(one.table, two.table)
    assert one.internal["fold"].nunique() == 4

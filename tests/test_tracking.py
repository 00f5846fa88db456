"""Experiment tracking: MLflow's autolog around a grid search of skcxr estimators, against a
local SQLite store (no server)."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from skcxr import PretrainedCNNClassifier

mlflow = pytest.importorskip("mlflow")


# not skcxr's: MLflow's SQLite store and its training metrics on scikit-learn 1.9
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`y_pred` was renamed:FutureWarning")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_autolog_logs_a_child_run_per_candidate(data, tiny_clf, tmp_path, monkeypatch):
    X, y = data
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.sklearn.autolog(log_models=False, log_datasets=False)
        with mlflow.start_run() as parent:
            search = GridSearchCV(PretrainedCNNClassifier(**tiny_clf),
                                  {"n_trainable_layers": [0, 2]}, cv=3,
                                  scoring="roc_auc").fit(X, y)
        runs = mlflow.search_runs([parent.info.experiment_id], output_format="list")
    finally:
        mlflow.sklearn.autolog(disable=True)
        mlflow.set_tracking_uri(None)
    children = {r.data.params["n_trainable_layers"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"0", "2"}
    for c, run in children.items():
        row = list(search.cv_results_["param_n_trainable_layers"]).index(int(c))
        assert run.data.metrics["mean_test_score"] == pytest.approx(
            search.cv_results_["mean_test_score"][row])
    top = next(r for r in runs if r.info.run_id == parent.info.run_id)
    assert top.data.params["best_n_trainable_layers"] == str(
        search.best_params_["n_trainable_layers"])
    assert np.isfinite(top.data.metrics["best_cv_score"])


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_per_epoch_metrics_reach_mlflow_through_skorchs_logger(data, tiny_clf, tmp_path,
                                                                monkeypatch):
    """callbacks=[MlflowLogger(...)]: every epoch's losses and validation AUC in the active
    run; the callback given is never changed, and clone (GridSearchCV) copies it."""
    from sklearn.base import clone
    from skorch.callbacks import MlflowLogger

    X, y = data
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logger = MlflowLogger(terminate_after_train=False, create_artifact=False)
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 3, "early_stopping": False},
                                  callbacks=[("mlflow", logger)])
    try:
        with mlflow.start_run() as run:
            clf.fit(X, y)
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "valid_auc")
    finally:
        mlflow.set_tracking_uri(None)
    assert [m.step for m in history] == [1, 2, 3]
    np.testing.assert_allclose([m.value for m in history], clf.history_["valid_auc"])
    assert not hasattr(logger, "run_")  # the fit ran a copy
    copied = clone(clf).get_params()["callbacks"][0][1]
    assert isinstance(copied, MlflowLogger) and copied is not logger


def test_callbacks_are_checked_before_any_work(data, tiny_clf):
    X, y = data
    with pytest.raises(ValueError, match="callbacks.*skorch callbacks"):
        PretrainedCNNClassifier(**tiny_clf, callbacks=[print]).fit(X, y)


def test_callback_names_are_checked_before_any_work(data, tiny_clf):
    """A name skcxr or skorch already uses, or a name given twice, is refused by the
    parameter check (skorch would refuse it only once the fit has begun)."""
    from skorch.callbacks import EarlyStopping, EpochScoring

    X, y = data
    for callbacks in ([("early_stopping", EarlyStopping())],
                      [("s", EpochScoring("f1")), ("s", EpochScoring("accuracy"))]):
        with pytest.raises(ValueError, match="unique names, none of 'epoch_timer'"):
            PretrainedCNNClassifier(**tiny_clf, callbacks=callbacks).fit(X, y)


def test_a_users_epoch_scoring_sees_probabilities_and_classes(data, tiny_clf):
    """The net predicts as a classifier does, so EpochScoring with a scikit-learn scorer
    name scores the epoch's validation predictions: "accuracy" equals skcxr's own valid_acc,
    and a callable gets probabilities that sum to one."""
    from skorch.callbacks import EpochScoring

    def proba_sum(net, X, y):
        return float(net.predict_proba(X).sum(axis=1).mean())

    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 3, "early_stopping": False},
                                  callbacks=[EpochScoring("accuracy", lower_is_better=False),
                                             ("psum", EpochScoring(proba_sum,
                                                                   name="proba_sum"))])
    history = clf.fit(X, y).history_
    np.testing.assert_allclose(history["accuracy"], history["valid_acc"])
    np.testing.assert_allclose(history["proba_sum"], 1.0, rtol=1e-5)

"""Saving fitted models: skops (no code execution at load), pickle and joblib, one state."""

import io
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
from skcxr._persistence import SavedStateError

sio = pytest.importorskip("skops.io")

CLASSIFIER = "skcxr._classifier.PretrainedCNNClassifier"
TRANSFORMER = "skcxr._features.FeatureExtractorTransformer"


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    X, y = data
    names = np.array(["NORMAL", "PNEUMONIA"])[y]
    return PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 4, "freeze_epochs": 1,
                                      "max_epochs": 3, "head_hidden_units": (8,),
                                      "dropout": 0.2, "threshold": "youden",
                                      "calibration": "temperature"}).fit(X, names)


def _same_fitted_state(a, b):
    for key in ("classes_", "class_weight_", "thresholds_"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.history_.equals(b.history_) and a.best_epoch_ == b.best_epoch_
    assert a.preprocessing_ == b.preprocessing_ and a.provenance_ == b.provenance_
    assert a.temperature_ == b.temperature_ and a.data_fingerprint_ == b.data_fingerprint_
    np.testing.assert_array_equal(a.fit_rows_.train, b.fit_rows_.train)
    assert a.trained_layers_ == b.trained_layers_
    sa, sb = a.module_.state_dict(), b.module_.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ([n for n, p in a.module_.named_parameters() if p.requires_grad]
            == [n for n, p in b.module_.named_parameters() if p.requires_grad])
    assert (a.module_.cut, a.module_.anchor, a.module_.batchnorm) == (
        b.module_.cut, b.module_.anchor, b.module_.batchnorm)
    assert not b.module_.training


def test_skops_round_trip_trusts_only_the_skcxr_type(fitted, data):
    X, _ = data
    blob = sio.dumps(fitted)
    assert sio.get_untrusted_types(data=blob) == [CLASSIFIER]
    with pytest.raises(Exception, match="[Uu]ntrusted"):
        sio.loads(blob)  # nothing loads without the user's say-so
    loaded = sio.loads(blob, trusted=[CLASSIFIER])
    _same_fitted_state(fitted, loaded)
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_pickle_and_joblib_save_the_same_arrays(fitted, data, dump, tmp_path):
    X, _ = data
    if dump == "pickle":
        loaded = pickle.loads(pickle.dumps(fitted))
    else:
        joblib.dump(fitted, tmp_path / "m.joblib")
        loaded = joblib.load(tmp_path / "m.joblib")
    _same_fitted_state(fitted, loaded)
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    # the state holds arrays and plain values: the pickle names no torch type
    named = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            named.append(module)
            return super().find_class(module, name)
    Recorder(io.BytesIO(pickle.dumps(fitted))).load()
    assert named and not [m for m in named if m.split(".")[0] == "torch"], set(named)


def test_a_feature_pipeline_through_skops(data, tiny_fe):
    X, y = data
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe), LogisticRegression())
    pipe.fit(X, y)
    blob = sio.dumps(pipe)
    assert sio.get_untrusted_types(data=blob) == [TRANSFORMER]  # sklearn's are trusted
    loaded = sio.loads(blob, trusted=[TRANSFORMER])
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))
    np.testing.assert_array_equal(loaded[0].transform(X[:5]), pipe[0].transform(X[:5]))


def test_saved_size_is_the_weights_size_and_imagenet_weights_are_not_needed(sample_paths,
                                                                           monkeypatch):
    """A lite0 transformer saves its 3.4 M weights as float32 and little else; loading
    rebuilds the architecture without the weights file (weights=None) and reads them."""
    X, _ = sample_paths
    fe = FeatureExtractorTransformer(image_size=128, engine="torch", precision="fp32").fit(X)
    weights = sum(t.numel() * t.element_size() for t in fe.module_.state_dict().values())
    blob = sio.dumps(fe)
    assert weights < len(blob) < 1.02 * weights + 100_000
    assert weights < len(pickle.dumps(fe)) < 1.02 * weights + 100_000

    import skcxr.backbones as backbones

    def no_weights_file(name):  # loading must not read ImageNet weights
        raise AssertionError(f"the weights file of {name} was read")
    monkeypatch.setattr(backbones, "offline_weights_file", no_weights_file)
    loaded = sio.loads(blob, trusted=[TRANSFORMER])
    np.testing.assert_array_equal(loaded.transform(X), fe.transform(X))
    assert loaded.provenance_["weights"] == fe.provenance_["weights"]


def test_an_adapted_model_keeps_its_statistics(fitted, data):
    from skcxr.adaptation import adapt_batchnorm

    X, _ = data
    adapted = adapt_batchnorm(fitted, X[:20], reference=X[20:])
    loaded = sio.loads(sio.dumps(adapted), trusted=[CLASSIFIER])
    np.testing.assert_array_equal(loaded.predict_proba(X), adapted.predict_proba(X))
    assert loaded.provenance_ == adapted.provenance_
    assert not np.array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


def test_a_users_module_backbone_pickles_but_skops_refuses(data, tiny_clf):
    """A backbone given as an nn.Module has no name to rebuild it from: its network stays a
    module, which pickle saves (it is code) and skops cannot."""
    import timm

    X, y = data
    module = timm.create_model("test_efficientnet", pretrained=False)
    clf = PretrainedCNNClassifier(**{**tiny_clf, "backbone": module}).fit(X, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X),
                                  clf.predict_proba(X))
    with pytest.raises(Exception):  # at dumps or at loads, by skops' own error
        blob = sio.dumps(clf)
        sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))


def test_a_tampered_state_is_refused(fitted):
    state = fitted.__getstate__()
    bad = {**state, "preprocessing_": {**state["preprocessing_"],
                                       "__skcxr_record__": "os.system"}}
    obj = PretrainedCNNClassifier.__new__(PretrainedCNNClassifier)
    with pytest.raises(SavedStateError, match="unknown record 'os.system'"):
        obj.__setstate__(bad)
    module = dict(state["module_"])
    module["state"] = {k: v for k, v in module["state"].items() if "head" not in k}
    with pytest.raises(SavedStateError, match="do not fit 'test_efficientnet'"):
        obj.__setstate__({**state, "module_": module})
    with pytest.raises(SavedStateError, match="format"):
        obj.__setstate__({**state, "module_": {**state["module_"], "format": 99}})


# MLflow's SQLite store uses a SQLAlchemy loader that SQLAlchemy 2.1 deprecates (not ours)
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_mlflow_sklearn_flavor_in_the_skops_format(fitted, data, tmp_path, monkeypatch):
    """MLflow's sklearn flavor with skops: log, load, and pyfunc predict on a DataFrame of
    image paths, against a local SQLite store (no server)."""
    mlflow = pytest.importorskip("mlflow")
    import pandas as pd

    X, _ = data
    # MLflow's own gate on loading: MLFLOW_ALLOW_MODEL_CODE_EXECUTION from MLflow 3.18 on
    # (setting the older name there is a FutureWarning), MLFLOW_ALLOW_PICKLE_DESERIALIZATION before
    import mlflow.environment_variables as mlflow_env
    gate = ("MLFLOW_ALLOW_MODEL_CODE_EXECUTION"
            if hasattr(mlflow_env, "MLFLOW_ALLOW_MODEL_CODE_EXECUTION")
            else "MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.setenv(gate, "true")
    monkeypatch.chdir(tmp_path)  # the artifact store (./mlruns) stays in the test folder
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(fitted, name="model", serialization_format="skops",
                                            skops_trusted_types=[CLASSIFIER])
        loaded = mlflow.sklearn.load_model(info.model_uri)
        np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
        served = mlflow.pyfunc.load_model(info.model_uri)
        np.testing.assert_array_equal(served.predict(pd.DataFrame({"path": X})),
                                      fitted.predict(X))
    finally:
        mlflow.set_tracking_uri(None)

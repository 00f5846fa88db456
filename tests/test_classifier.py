import joblib
import numpy as np
import pytest
import torch
from conftest import TINYC

from skcxr import PretrainedCNNClassifier
from skcxr import _classifier as classifier_module
from skcxr._training import WeightedNet


@pytest.fixture(scope="module")
def data(sample):
    idx = np.r_[0:30, 100:130]  # 60 images, 30 per class
    return sample.data[idx], sample.target[idx]


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return PretrainedCNNClassifier(**TINYC, n_trainable_layers=4).fit(X, y)


def test_fit_predict_and_fitted_attributes(fitted, data):
    X, y = data
    proba = fitted.predict_proba(X)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert set(fitted.predict(X)) <= {0, 1}
    dec = fitted.decision_function(X)
    assert dec.shape == (60,)
    np.testing.assert_array_equal(dec > 0, proba[:, 1] > 0.5)
    assert fitted.classes_.tolist() == [0, 1] and fitted.target_type_ == "binary"
    assert fitted.trainable_layers_ == ["blocks.4.0.conv_pwl", "blocks.4.0.bn3", "conv_head",
                                        "bn2"]
    head = sum(p.numel() for p in fitted.module_.head.parameters())
    trainable = sum(p.numel() for name in fitted.trainable_layers_
                    for p in fitted.module_.backbone.get_submodule(name).parameters())
    assert fitted.n_trainable_params_ == head + trainable
    assert fitted.n_train_samples_ == 54 and fitted.n_valid_samples_ == 6
    h = fitted.history_
    assert list(h["epoch"]) == [1, 2]
    for col in ("train_loss", "valid_loss", "valid_acc", "valid_auc", "lr", "n_trainable_layers"):
        assert col in h and h[col].notna().all(), col
    # the epoch whose weights were restored: the last to improve by more than min_delta
    best, kept = float("inf"), None
    for epoch, loss in zip(h["epoch"], h["valid_loss"]):
        if loss < best - fitted.min_delta:
            best, kept = loss, int(epoch)
    assert fitted.best_epoch_ == kept
    assert 0 <= fitted.score(X, y) <= 1
    assert not fitted.module_.training
    assert fitted.provenance_["backbone"] == "test_efficientnet"


def test_training_only_touches_the_chosen_layers(data):
    X, y = data
    from skcxr.backbones import load_backbone

    before = load_backbone("test_efficientnet", None, random_state=0).module.state_dict()
    clf = PretrainedCNNClassifier(**TINYC, n_trainable_layers=2, batchnorm="frozen").fit(X, y)
    after = clf.module_.backbone.state_dict()
    changed = {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv_head", "bn2"}  # frozen BN statistics did not move either
    # "train" lets BN statistics in frozen layers drift: the skorch Freezer behaviour
    drift = PretrainedCNNClassifier(**TINYC, n_trainable_layers=2, batchnorm="train").fit(X, y)
    moved = drift.module_.backbone.state_dict()
    assert not torch.equal(before["bn1.running_mean"], moved["bn1.running_mean"])
    # "eval" (study 000): even unfrozen BN layers keep statistics and affine parameters
    ev = PretrainedCNNClassifier(**TINYC, n_trainable_layers=2, batchnorm="eval").fit(X, y)
    ev_sd = ev.module_.backbone.state_dict()
    assert torch.equal(before["bn2.weight"], ev_sd["bn2.weight"])
    assert torch.equal(before["bn2.running_var"], ev_sd["bn2.running_var"])
    assert not torch.equal(before["conv_head.weight"], ev_sd["conv_head.weight"])


def test_head_only_and_all_layers(data):
    X, y = data
    head_only = PretrainedCNNClassifier(**TINYC, n_trainable_layers=0).fit(X, y)
    everything = PretrainedCNNClassifier(**TINYC, n_trainable_layers="all").fit(X, y)
    assert head_only.trainable_layers_ == [] and len(everything.trainable_layers_) == 30
    assert head_only.n_trainable_params_ == 257 * 2
    assert everything.n_trainable_params_ > 90_000
    by_name = PretrainedCNNClassifier(**TINYC, n_trainable_layers="blocks.4").fit(X, y)
    assert by_name.trainable_layers_[0] == "blocks.4.0.conv_pw"


def test_freeze_then_unfreeze_schedule(data):
    X, y = data
    clf = PretrainedCNNClassifier(**{**TINYC, "max_epochs": 3}, n_trainable_layers=2,
                                  freeze_epochs=2, lr=1e-3, finetune_lr=1e-5,
                                  early_stopping=False).fit(X, y)
    h = clf.history_
    assert h["n_trainable_layers"].tolist() == [0, 0, 2]
    assert h["lr"].tolist() == [1e-3] * 3 and h["backbone_lr"].tolist() == [1e-5] * 3
    # all epochs frozen: the backbone never changes
    from skcxr.backbones import load_backbone

    before = load_backbone("test_efficientnet", None, random_state=0).module.state_dict()
    frozen = PretrainedCNNClassifier(**TINYC, n_trainable_layers=2, freeze_epochs=5).fit(X, y)
    after = frozen.module_.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_early_stopping_restores_the_best_epoch(data):
    X, y = data
    clf = PretrainedCNNClassifier(**{**TINYC, "max_epochs": 12}, n_trainable_layers=-1,
                                  lr=0.05, patience=1, min_delta=0.0).fit(X, y)
    h = clf.history_
    assert len(h) < 12  # it stopped
    best = int(h["valid_loss"].idxmin())
    assert clf.best_epoch_ == best + 1 and len(h) == best + 2  # patience 1
    # the kept weights are those of the best epoch: recompute its validation loss
    idx = np.arange(len(y))
    _, valid = clf._split(y, "binary", 0)
    proba = clf.predict_proba(X[valid])
    loss = -np.log(proba[np.arange(len(valid)), y[valid]]).mean()
    assert loss == pytest.approx(h["valid_loss"].iloc[best], rel=1e-3)
    assert len(idx) == 60


def test_lr_schedulers_and_optimizers(data):
    X, y = data
    step = PretrainedCNNClassifier(**{**TINYC, "max_epochs": 3}, lr_scheduler="step",
                                   lr_scheduler_kwargs={"step_size": 1, "gamma": 0.5},
                                   optimizer="sgd",
                                   optimizer_kwargs={"nesterov": True},
                                   early_stopping=False).fit(X, y)
    assert step.history_["lr"].tolist() == pytest.approx([1e-3, 5e-4, 2.5e-4])
    cos = PretrainedCNNClassifier(**{**TINYC, "max_epochs": 2}, lr_scheduler="cosine",
                                  optimizer="adamw", early_stopping=False).fit(X, y)
    assert cos.history_["lr"].iloc[1] < 1e-3
    PretrainedCNNClassifier(**TINYC, lr_scheduler="plateau").fit(X, y)


def test_same_random_state_gives_identical_predictions(fitted, data):
    X, y = data
    again = PretrainedCNNClassifier(**TINYC, n_trainable_layers=4).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))
    other = PretrainedCNNClassifier(**{**TINYC, "random_state": 1}, n_trainable_layers=4)
    assert not np.array_equal(other.fit(X, y).predict_proba(X), fitted.predict_proba(X))


def test_string_and_multiclass_labels(sample):
    idx = np.r_[0:20, 100:140]
    X = sample.data[idx]
    kind = np.array(["normal" if "NORMAL" in p else ("virus" if "virus" in p else "bacteria")
                     for p in X])
    assert len(set(kind)) == 3
    clf = PretrainedCNNClassifier(**TINYC, class_weight="balanced").fit(X, kind)
    assert clf.classes_.tolist() == ["bacteria", "normal", "virus"]
    assert clf.target_type_ == "multiclass"
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert clf.predict_proba(X).shape == (60, 3) and clf.decision_function(X).shape == (60, 3)
    assert clf.class_weight_.shape == (3,)


def test_multilabel_indicator_targets(sample):
    X = sample.data[::5]
    rng = np.random.RandomState(0)
    Y = np.c_[sample.target[::5], rng.randint(0, 2, size=(60, 2))]
    clf = PretrainedCNNClassifier(**TINYC, class_weight="balanced").fit(X, Y)
    assert clf.target_type_ == "multilabel" and clf.classes_.tolist() == [0, 1, 2]
    assert clf.predict(X).shape == (60, 3) and set(np.unique(clf.predict(X))) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == (60, 3) and (proba >= 0).all() and (proba <= 1).all()
    assert clf.class_weight_.shape == (3,)  # per-label pos_weight


def test_sample_weight_reaches_the_loss(data):
    X, y = data
    kw = dict(**TINYC, early_stopping=False)
    plain = PretrainedCNNClassifier(**kw).fit(X, y)
    double = PretrainedCNNClassifier(**kw).fit(X, y, sample_weight=np.full(60, 2.0))
    ratio = double.history_["train_loss"].iloc[0] / plain.history_["train_loss"].iloc[0]
    assert ratio == pytest.approx(2.0, rel=0.02)  # Adam is scale-invariant: same trajectory


def test_train_size_subsamples_inside_fit(data):
    X, y = data
    clf = PretrainedCNNClassifier(**TINYC, train_size=20).fit(X, y)
    assert clf.n_train_samples_ + clf.n_valid_samples_ == 20
    frac = PretrainedCNNClassifier(**TINYC, train_size=0.5, validation_fraction=0).fit(X, y)
    assert frac.n_train_samples_ == 30 and frac.n_valid_samples_ == 0
    assert "valid_loss" not in frac.history_
    assert frac.best_epoch_ == 2


def test_pickle_round_trip_predicts_identically(fitted, data, tmp_path):
    X, _ = data
    joblib.dump(fitted, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize("augment", ["flip", "standard", "crop"])
def test_augmentation_presets_train(data, augment):
    X, y = data
    clf = PretrainedCNNClassifier(**TINYC, augment=augment).fit(X, y)
    assert clf.predict_proba(X).shape == (60, 2)


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if a bad-input case reaches training."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("training started although the input was bad")
    monkeypatch.setattr(WeightedNet, "fit", refuse)


@pytest.mark.parametrize(
    "params, y_kind, match",
    [
        ({}, "single", "single class"),
        ({}, "nan", "NaN"),
        ({}, "short", "different lengths"),
        ({"n_trainable_layers": 31}, "ok", "has 30 parameterised layers"),
        ({"n_trainable_layers": "features.denseblock4"}, "ok", "names no parameterised module"),
        ({"train_size": 61}, "ok", "fit received only 60"),
        ({"train_size": 1.5}, "ok", r"in \(0, 1\]"),
        ({"train_size": 3}, "ok", "too few"),
        ({"optimizer": "adamax"}, "ok", "optimizer must be one of"),
        ({"lr_scheduler": "cyclic"}, "ok", "lr_scheduler must be None or one of"),
        ({"augment": "mixup"}, "ok", "augment must be None"),
        ({"batchnorm": "none"}, "ok", "batchnorm must be one of"),
        ({"class_weight": "auto"}, "ok", "class_weight must be"),
        ({"class_weight": {5: 2.0}}, "ok", "unknown classes"),
        ({"max_epochs": 0}, "ok", "max_epochs must be a positive int"),
        ({}, "multilabel-empty", "no positive"),
        ({}, "continuous", "class labels"),
    ],
)
def test_bad_input_fails_before_training(data, no_training, params, y_kind, match):
    X, y = data
    y = {
        "ok": y,
        "single": np.zeros(60),
        "nan": np.where(np.arange(60) == 3, np.nan, y.astype(float)),
        "short": y[:-1],
        "multilabel-empty": np.c_[y, 1 - y, np.zeros(60, int)],
        "continuous": np.linspace(0, 1, 60),
    }[y_kind]
    with pytest.raises(ValueError, match=match):
        PretrainedCNNClassifier(**{**TINYC, **params}).fit(X, y)


@pytest.mark.parametrize("cache", [False, True])
def test_fold_safety_class_weights_and_validation_use_training_rows_only(sample, monkeypatch,
                                                                          cache):
    """Instrument fit: every row that trains, validates or weighs comes from the training fold."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X, y = sample.data[::5], sample.target[::5]
    seen = []
    cls = classifier_module.PretrainedCNNClassifier
    real_weights, real_prefix = cls._class_weights, cls._prefix_outputs
    real_dataset = classifier_module.TrainingDataset

    def spy_weights(self, y_train, task):
        seen.append(("weights", np.bincount(y_train, minlength=2)))
        return real_weights(self, y_train, task)

    def spy_dataset(source, *args, **kwargs):
        seen.append(("rows", set(source.data)))
        return real_dataset(source, *args, **kwargs)

    def spy_prefix(self, module, source, rows, *args):
        seen.append(("prefix rows", set(source.data[rows])))
        return real_prefix(self, module, source, rows, *args)

    monkeypatch.setattr(cls, "_class_weights", spy_weights)
    monkeypatch.setattr(cls, "_prefix_outputs", spy_prefix)
    monkeypatch.setattr(classifier_module, "TrainingDataset", spy_dataset)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    est = PretrainedCNNClassifier(**TINYC, n_trainable_layers=2, class_weight="balanced",
                                  cache=cache)
    cross_val_score(est, X, y, cv=cv)
    per_fit = 3  # class weights; train rows + validation rows, or fit rows + test rows
    assert len(seen) == 3 * per_fit
    for k, (train, test) in enumerate(cv.split(X, y)):
        (_, counts), (_, first), (_, second) = seen[k * per_fit:(k + 1) * per_fit]
        if cache:  # prefix outputs: the fit's rows, then (in predict) the test fold's
            fit_rows, test_rows = first, second
            assert test_rows == set(X[test])
        else:
            assert not first & second  # training and inner validation rows
            fit_rows = first | second
        assert fit_rows == set(X[train])  # the outer fold is never seen by fit
        # class weights come from the training rows only (not validation, not all of y)
        n_valid = max(2, round(0.1 * len(train)))
        assert counts.sum() == len(train) - n_valid


def test_fitted_estimator_keeps_no_optimizer_state_and_fits_do_not_leak(data):
    import gc
    import pickle

    X, y = data
    clf = PretrainedCNNClassifier(**TINYC, n_trainable_layers="all").fit(X, y)
    weights = sum(t.numel() * t.element_size() for t in clf.module_.state_dict().values())
    # Adam keeps two moments per trained parameter: a kept optimizer would double the size
    assert len(pickle.dumps(clf)) < 1.3 * weights + 200_000
    assert not any("optim" in type(v).__name__.lower() for v in vars(clf).values())

    from skcxr.cache import cache_info

    def live_tensors():  # not counting the (byte-bounded) shared activation cache
        gc.collect()
        kinds = (torch.Tensor, torch.nn.Parameter)
        return sum(1 for o in gc.get_objects() if type(o) in kinds) - cache_info()["entries"]

    PretrainedCNNClassifier(**TINYC).fit(X, y)  # warm caches
    before = live_tensors()
    for seed in range(3):
        PretrainedCNNClassifier(**{**TINYC, "random_state": seed}).fit(X, y)
    assert live_tensors() <= before + 5


def test_verbose_prints_the_epoch_table(data, capsys):
    X, y = data
    PretrainedCNNClassifier(**TINYC, verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out
    PretrainedCNNClassifier(**TINYC).fit(X, y)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("weights, match", [
    (np.ones(59), r"shape \(60,\)"),
    (np.r_[np.ones(59), -1.0], "non-negative"),
    (np.r_[np.ones(59), np.nan], "finite"),
    (np.zeros(60), "sums to 0"),
])
def test_bad_sample_weight(data, no_training, weights, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        PretrainedCNNClassifier(**TINYC).fit(X, y, sample_weight=weights)


def test_best_epoch_names_the_weights_kept(sample_paths):
    X, y = sample_paths
    clf = PretrainedCNNClassifier(**{**TINYC, "max_epochs": 6, "patience": 2, "min_delta": 0.05,
                                     "validation_fraction": 0.34}).fit(X, y)
    # a fit that simply stops at best_epoch_ (no restore) ends with the same weights
    same = PretrainedCNNClassifier(**{**TINYC, "max_epochs": clf.best_epoch_,
                                      "validation_fraction": 0.34,
                                      "early_stopping": False}).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), same.predict_proba(X), atol=1e-5)

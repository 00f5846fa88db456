"""PretrainedCNNClassifier on real sample images: layers, schedules, protocol, fitted state."""

import importlib.util
import itertools
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from skcxr import ImageReadError, PretrainedCNNClassifier
from skcxr.backbones import load_backbone
from skcxr.cache import clear_cache
from skcxr.protocol import fit_rows


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    X, y = data
    return PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=4).fit(X, y)


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
    assert fitted.trained_layers_ == ["blocks.4.0.conv_pwl", "blocks.4.0.bn3", "conv_head",
                                        "bn2"]
    head = sum(p.numel() for p in fitted.module_.head.parameters())
    trainable = sum(p.numel() for name in fitted.trained_layers_
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


def test_training_only_touches_the_chosen_layers(data, tiny_clf):
    X, y = data
    before = load_backbone("test_efficientnet", None, random_state=0).module.state_dict()
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, batchnorm="frozen").fit(X, y)
    after = clf.module_.backbone.state_dict()
    changed = {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv_head", "bn2"}  # frozen BN statistics did not move either
    # "train" lets BN statistics in frozen layers drift: the skorch Freezer behaviour
    drift = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, batchnorm="train").fit(X, y)
    moved = drift.module_.backbone.state_dict()
    assert not torch.equal(before["bn1.running_mean"], moved["bn1.running_mean"])
    # "eval" (study 000): even unfrozen BN layers keep statistics and affine parameters
    ev = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, batchnorm="eval").fit(X, y)
    ev_sd = ev.module_.backbone.state_dict()
    assert torch.equal(before["bn2.weight"], ev_sd["bn2.weight"])
    assert torch.equal(before["bn2.running_var"], ev_sd["bn2.running_var"])
    assert not torch.equal(before["conv_head.weight"], ev_sd["conv_head.weight"])


def test_head_only_and_all_layers(data, tiny_clf):
    X, y = data
    head_only = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=0).fit(X, y)
    everything = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers="all").fit(X, y)
    assert head_only.trained_layers_ == [] and len(everything.trained_layers_) == 30
    assert head_only.n_trainable_params_ == 257 * 2
    assert everything.n_trainable_params_ > 90_000
    by_name = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers="blocks.4").fit(X, y)
    assert by_name.trained_layers_[0] == "blocks.4.0.conv_pw"


def test_freeze_then_unfreeze_schedule(data, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 3}, n_trainable_layers=2,
                                  freeze_epochs=2, lr=1e-3, finetune_lr=1e-5,
                                  early_stopping=False).fit(X, y)
    h = clf.history_
    assert h["n_trainable_layers"].tolist() == [0, 0, 2]
    assert h["lr"].tolist() == [1e-3] * 3 and h["backbone_lr"].tolist() == [1e-5] * 3
    # all epochs frozen: the backbone never changes
    before = load_backbone("test_efficientnet", None, random_state=0).module.state_dict()
    frozen = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, freeze_epochs=5).fit(X, y)
    after = frozen.module_.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_early_stopping_restores_the_best_epoch(data, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 12}, n_trainable_layers=-1,
                                  lr=0.05, patience=1, min_delta=0.0).fit(X, y)
    h = clf.history_
    assert len(h) < 12  # it stopped
    best = int(h["valid_loss"].idxmin())
    assert clf.best_epoch_ == best + 1 and len(h) == best + 2  # patience 1
    # the kept weights are those of the best epoch: recompute its validation loss
    valid = fit_rows(y, seed=0).valid  # the protocol's inner split, as fit drew it
    proba = clf.predict_proba(X[valid])
    loss = -np.log(proba[np.arange(len(valid)), y[valid]]).mean()
    assert loss == pytest.approx(h["valid_loss"].iloc[best], rel=1e-3)


def test_lr_schedulers_and_optimizers(data, tiny_clf):
    X, y = data
    step = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 3}, lr_scheduler="step",
                                   lr_scheduler_kwargs={"step_size": 1, "gamma": 0.5},
                                   optimizer="sgd",
                                   optimizer_kwargs={"nesterov": True},
                                   early_stopping=False).fit(X, y)
    assert step.history_["lr"].tolist() == pytest.approx([1e-3, 5e-4, 2.5e-4])
    cos = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 2}, lr_scheduler="cosine",
                                  optimizer="adamw", early_stopping=False).fit(X, y)
    assert cos.history_["lr"].iloc[1] < 1e-3
    PretrainedCNNClassifier(**tiny_clf, lr_scheduler="plateau").fit(X, y)


def test_same_random_state_gives_identical_predictions(fitted, data, tiny_clf):
    X, y = data
    again = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=4).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))
    other = PretrainedCNNClassifier(**{**tiny_clf, "random_state": 1}, n_trainable_layers=4)
    assert not np.array_equal(other.fit(X, y).predict_proba(X), fitted.predict_proba(X))


def test_string_and_multiclass_labels(sample, tiny_clf):
    idx = np.r_[0:20, 100:140]
    X = sample.data[idx]
    kind = np.array(["normal" if "NORMAL" in p else ("virus" if "virus" in p else "bacteria")
                     for p in X])
    assert len(set(kind)) == 3
    clf = PretrainedCNNClassifier(**tiny_clf, class_weight="balanced").fit(X, kind)
    assert clf.classes_.tolist() == ["bacteria", "normal", "virus"]
    assert clf.target_type_ == "multiclass"
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert clf.predict_proba(X).shape == (60, 3) and clf.decision_function(X).shape == (60, 3)
    assert clf.class_weight_.shape == (3,)


@pytest.mark.filterwarnings("ignore:Multi-label y")
def test_multilabel_indicator_targets(sample, tiny_clf):
    X = sample.data[::5]
    rng = np.random.RandomState(0)
    Y = np.c_[sample.target[::5], rng.randint(0, 2, size=(60, 2))]
    clf = PretrainedCNNClassifier(**tiny_clf, class_weight="balanced").fit(X, Y)
    assert clf.target_type_ == "multilabel" and clf.classes_.tolist() == [0, 1, 2]
    assert clf.predict(X).shape == (60, 3) and set(np.unique(clf.predict(X))) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == (60, 3) and (proba >= 0).all() and (proba <= 1).all()
    assert clf.class_weight_.shape == (3,)  # per-label pos_weight


def test_sample_weight_reaches_the_loss(data, tiny_clf):
    X, y = data
    kw = dict(**tiny_clf, early_stopping=False)
    plain = PretrainedCNNClassifier(**kw).fit(X, y)
    double = PretrainedCNNClassifier(**kw).fit(X, y, sample_weight=np.full(60, 2.0))
    ratio = double.history_["train_loss"].iloc[0] / plain.history_["train_loss"].iloc[0]
    assert ratio == pytest.approx(2.0, rel=0.02)  # Adam is scale-invariant: same trajectory


def test_train_size_subsamples_inside_fit(data, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**tiny_clf, train_size=20).fit(X, y)
    assert clf.n_train_samples_ + clf.n_valid_samples_ == 20
    frac = PretrainedCNNClassifier(**tiny_clf, train_size=0.5, validation_fraction=0).fit(X, y)
    assert frac.n_train_samples_ == 30 and frac.n_valid_samples_ == 0
    assert "valid_loss" not in frac.history_
    assert frac.best_epoch_ == 2


def test_pickle_round_trip_predicts_identically(fitted, data, tmp_path):
    X, _ = data
    joblib.dump(fitted, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize("augment", ["flip", "standard", "crop"])
def test_augmentation_presets_train(data, augment, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**tiny_clf, augment=augment).fit(X, y)
    assert clf.predict_proba(X).shape == (60, 2)


def test_fitted_estimator_keeps_no_optimizer_state_and_fits_do_not_leak(data, tiny_clf):
    import gc
    import pickle

    X, y = data
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers="all").fit(X, y)
    weights = sum(t.numel() * t.element_size() for t in clf.module_.state_dict().values())
    # Adam keeps two moments per trained parameter: a kept optimizer would double the size
    assert len(pickle.dumps(clf)) < 1.3 * weights + 200_000
    assert not any("optim" in type(v).__name__.lower() for v in vars(clf).values())

    from skcxr.cache import cache_info

    def live_tensors():  # not counting the (byte-bounded) shared activation cache
        gc.collect()
        kinds = (torch.Tensor, torch.nn.Parameter)
        kept = cache_info()["features"]["entries"]
        return sum(1 for o in gc.get_objects() if type(o) in kinds) - kept

    for seed in range(3):  # warm the bounded stores (kept backbones, plans)
        PretrainedCNNClassifier(**{**tiny_clf, "random_state": seed}).fit(X, y)
    before = live_tensors()
    for seed in range(3):
        PretrainedCNNClassifier(**{**tiny_clf, "random_state": seed}).fit(X, y)
    assert live_tensors() <= before + 5


def test_verbose_prints_the_epoch_table(data, capsys, tiny_clf):
    X, y = data
    PretrainedCNNClassifier(**tiny_clf, verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out
    PretrainedCNNClassifier(**tiny_clf).fit(X, y)
    assert capsys.readouterr().out == ""


def test_best_epoch_names_the_weights_kept(sample_paths, tiny_clf):
    X, y = sample_paths
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 6, "patience": 2, "min_delta": 0.05,
                                     "validation_fraction": 0.34}).fit(X, y)
    # a fit that simply stops at best_epoch_ (no restore) ends with the same weights
    same = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": clf.best_epoch_,
                                      "validation_fraction": 0.34,
                                      "early_stopping": False}).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), same.predict_proba(X), atol=1e-5)


# --------------------------------------------------------------------------- layer semantics


class OutOfOrder(nn.Module):
    """Registers ``late`` before ``early`` but runs ``early`` first; the ReLU owns nothing."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(4, 6, 1)
        self.early = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.late(self.act(self.bn(self.early(x))))


@pytest.mark.parametrize("c, trained", [
    (0, []),
    (2, ["body.bn", "body.late"]),  # the last two in forward order, not registration order
    (3, ["body.early", "body.bn", "body.late"]),
    (-1, ["body.early", "body.bn", "body.late"]),
    ("all", ["body.early", "body.bn", "body.late"]),
    ("body.bn", ["body.bn", "body.late"]),  # a module name: from that module on
    ("body.bn.", ["body.bn", "body.late"]),
])
def test_c_counts_parameterised_layers_in_forward_order(sample_paths, c, trained):
    X, y = sample_paths
    clf = PretrainedCNNClassifier(OutOfOrder(), image_size=16, n_trainable_layers=c,
                                  max_epochs=1, random_state=0, engine="torch").fit(X, y)
    assert clf.trained_layers_ == trained


@pytest.mark.parametrize("c, match", [
    (4, "has 3 parameterised layers, so use 0..3"),
    ("body.nope", "names no parameterised module"),
])
def test_c_out_of_range_for_this_backbone(undecodable, c, match):
    X, y = undecodable  # checked against the loaded backbone, before any image is decoded
    with pytest.raises(ValueError, match=match) as info:
        PretrainedCNNClassifier(OutOfOrder(), image_size=16, n_trainable_layers=c).fit(X, y)
    assert not isinstance(info.value, ImageReadError)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params, y_kind, match",
    [
        ({}, "single", "single class"),
        ({}, "nan", "NaN"),
        ({}, "short", "different lengths"),
        ({"n_trainable_layers": 31}, "ok", "has 30 parameterised layers"),
        ({"n_trainable_layers": "features.denseblock4"}, "ok", "names no parameterised module"),
        ({"train_size": 61}, "ok", "fit received only 60"),
        ({"train_size": 3}, "ok", "too few"),
        ({"class_weight": {5: 2.0}}, "ok", "unknown classes"),
        ({}, "multilabel-empty", "no positive"),
        ({}, "continuous", "class labels"),
    ],
)
def test_bad_targets_and_protocol_fail_before_decoding(undecodable, tiny_clf, params, y_kind,
                                                       match):
    X, y = undecodable
    y = {
        "ok": y,
        "single": np.zeros(60),
        "nan": np.where(np.arange(60) == 3, np.nan, y.astype(float)),
        "short": y[:-1],
        "multilabel-empty": np.c_[y, 1 - y, np.zeros(60, int)],
        "continuous": np.linspace(0, 1, 60),
    }[y_kind]
    with pytest.raises(ValueError, match=match) as info:
        PretrainedCNNClassifier(**{**tiny_clf, **params}).fit(X, y)
    assert not isinstance(info.value, ImageReadError)


@pytest.mark.parametrize("weights, match", [
    (np.ones(59), r"shape \(60,\)"),
    (np.r_[np.ones(59), -1.0], "non-negative"),
    (np.r_[np.ones(59), np.nan], "finite"),
    (np.zeros(60), "sums to 0"),
])
def test_bad_sample_weight_fails_before_decoding(undecodable, tiny_clf, weights, match):
    X, y = undecodable
    with pytest.raises(ValueError, match=match) as info:
        PretrainedCNNClassifier(**tiny_clf).fit(X, y, sample_weight=weights)
    assert not isinstance(info.value, ImageReadError)


def test_undecodable_images_are_named_when_decoding_starts(undecodable, tiny_clf):
    X, y = undecodable  # the fixture's premise: these fail only once pixels are read
    with pytest.raises(ImageReadError, match="img"):
        PretrainedCNNClassifier(**tiny_clf).fit(X, y)


# --------------------------------------------------------------------------- fold safety

#: (image id, grad enabled) for every image the Recorder backbone saw
SEEN = []


class Recorder(nn.Module):
    """A backbone that records which images it sees: their id is written in pixel (0, 0), a
    marker 77 in pixel (0, 1) (so probe passes on random or zero images are not counted).
    Gradients are on in a training step, off in validation, the prefix cache and predict."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        pix = (x[:, 0, 0, :2] * 255).round().long()
        SEEN.extend((int(i), torch.is_grad_enabled()) for i, m in pix.tolist() if m == 77)
        return self.conv(x)


def _id_images(n):
    X = np.full((n, 16, 16), 128, np.uint8)
    X[:, 0, 0], X[:, 0, 1] = np.arange(n), 77
    return X


@pytest.mark.parametrize("cache", [False, True])
def test_fold_safety_every_row_that_trains_validates_or_weighs_is_from_the_training_fold(
        data, cache):
    _, y = data
    X = _id_images(len(y))
    est = PretrainedCNNClassifier(Recorder(), image_size=16, in_chans=1, normalize="unit",
                                  class_weight="balanced", max_epochs=2, batch_size=8,
                                  cache=cache, random_state=0, engine="torch", precision="fp32")
    for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
        clear_cache()  # else later folds find earlier folds' prefix outputs and compute less
        SEEN.clear()
        clf = clone(est).fit(X[train], y[train])
        seen_fit = list(SEEN)
        assert {i for i, _ in seen_fit} == set(train)  # the outer test fold is never seen
        if cache:  # the frozen prefix ran once per image, outside any training step
            assert len(seen_fit) == len(train) and not any(g for _, g in seen_fit)
            trained = train[fit_rows(y[train], seed=0).train]  # the protocol's own rows
        else:
            trained = np.array(sorted({i for i, g in seen_fit if g}))
            validated = {i for i, g in seen_fit if not g}
            assert not set(trained) & validated and len(validated) == clf.n_valid_samples_
        assert len(trained) == clf.n_train_samples_
        # class weights come from the training rows only: not validation, not all of y
        np.testing.assert_allclose(
            clf.class_weight_, compute_class_weight("balanced", classes=np.array([0, 1]),
                                                    y=y[trained]), rtol=1e-6)
        SEEN.clear()
        clf.predict(X[test])
        assert {i for i, _ in SEEN} == set(test)


# --------------------------------------------------------------------------- fitted state


def _state(est):
    """Every fitted attribute, by identity, plus the network's weights by value."""
    attrs = {k: v for k, v in vars(est).items() if k.endswith("_")}
    weights = {k: t.clone() for k, t in est.module_.state_dict().items()}
    return attrs, weights


def _assert_same_state(est, state):
    attrs, weights = state
    assert {k for k in vars(est) if k.endswith("_")} == attrs.keys()
    for k, v in attrs.items():
        assert vars(est)[k] is v, k
    now = est.module_.state_dict()
    assert all(torch.equal(now[k], t) for k, t in weights.items())


class FailOnCall:
    """An augmentation that raises ``exc`` on its n-th image: a fit that breaks (or is
    interrupted, as by Ctrl-C) in mid-training."""

    def __init__(self, n, exc=RuntimeError):
        self.n, self.exc, self.calls = n, exc, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls >= self.n:
            raise self.exc("augmentation failed")
        return x


@pytest.mark.parametrize("change, exc", [
    ({"backbone": "resnet5O"}, ValueError),  # a typo: fails at once
    ({"n_trainable_layers": 99}, ValueError),  # fails after the targets are read
    ({"augment": FailOnCall(40)}, RuntimeError),  # fails in the first epoch
    ({"augment": FailOnCall(70, KeyboardInterrupt)}, KeyboardInterrupt),  # Ctrl-C, epoch 2
])
def test_a_failed_refit_leaves_the_estimator_as_it_was(data, tiny_clf, change, exc):
    X, y = data
    clf = PretrainedCNNClassifier(**tiny_clf).fit(X, y)
    state, proba = _state(clf), clf.predict_proba(X)
    new_y = np.where(y == 1, "pneumonia", "normal")  # new classes_ if the refit got that far
    with pytest.raises(exc):
        clf.set_params(**change).fit(X, new_y)
    _assert_same_state(clf, state)
    assert clf.classes_.tolist() == [0, 1]
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


@pytest.mark.parametrize("params", [{}, {"augment": "flip"}], ids=["cached", "uncached"])
def test_fit_and_predict_leave_global_state_alone(data, tiny_clf, params):
    X, y = data
    rng = torch.get_rng_state()
    clf = PretrainedCNNClassifier(**tiny_clf, **params).fit(X, y)
    assert torch.equal(torch.get_rng_state(), rng)  # fit seeds its own, then restores
    state = _state(clf)
    clf.predict_proba(X[:10])
    clf.predict(X[:10])
    clf.decision_function(X[:10])
    _assert_same_state(clf, state)
    assert not clf.module_.training
    assert torch.equal(torch.get_rng_state(), rng)  # nor does predict draw from it


def test_early_stopping_in_the_head_phase_unfreezes_instead_of_ending(data, tiny_clf):
    """A huge min_delta makes every epoch after the first a miss: the head phase (planned
    for 5 epochs) ends at epoch 2 by early stopping, the backbone unfreezes, and phase two
    gets its own patience."""
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 8, "freeze_epochs": 5,
                                     "n_trainable_layers": 2, "patience": 1,
                                     "min_delta": 10.0}).fit(X, y)
    assert clf.history_["n_trainable_layers"].tolist() == [0, 0, 2]
    assert len(clf.trained_layers_) == 2


def test_trainable_layers_report_what_trained(data, tiny_clf):
    X, y = data
    planned = PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 4}).fit(X, y)
    bn_eval = PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 4,
                                         "batchnorm": "eval"}).fit(X, y)
    modules = dict(bn_eval.module_.backbone.named_modules())
    dropped = set(planned.trained_layers_) - set(bn_eval.trained_layers_)
    assert dropped and all(isinstance(modules[n], torch.nn.BatchNorm2d) for n in dropped)
    assert set(bn_eval.trained_layers_) < set(planned.trained_layers_)
    never = PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 2, "max_epochs": 2,
                                       "freeze_epochs": 3}).fit(X, y)
    assert never.trained_layers_ == []  # the fit ended inside the head phase


def test_fp32_depthwise_runs_trainable_depthwise_convolutions_in_fp32_under_bf16():
    """Training on the CPU in bf16: a 5x5 depthwise convolution and a 3x3 one with stride 2
    compute in fp32 (oneDNN's bf16 backward of these is 2-5x slower), their outputs cast
    back; a 3x3 stride-1 depthwise convolution and pointwise ones stay in bf16; nothing
    changes without gradients; the hooks go and autocast is back even when the forward
    raises."""
    from skcxr._runtime import depthwise_trains_fp32, fp32_depthwise

    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 5, padding=2, groups=8),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              torch.nn.Conv2d(8, 4, 1))
    assert [depthwise_trains_fp32(m) for m in net[:3]] == [True, True, False]
    spec = importlib.util.spec_from_file_location(  # the benchmark's copy of the rule
        "bench_depthwise", Path(__file__).parents[1] / "benchmarks" / "bench_depthwise.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for k, stride in itertools.product((1, 3, 5, 7), (1, 2)):
        conv = torch.nn.Conv2d(4, 4, k, stride, groups=4)
        assert bench.rule_picks_fp32(k, stride) == depthwise_trains_fp32(conv)
    seen = []
    for m in net:  # runs before fp32_depthwise's cast back: the dtype the layer computed in
        m.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    cpu = torch.device("cpu")

    def run(x, grad=True):
        seen.clear()
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16), \
                fp32_depthwise(net, cpu, "bf16"):
            return net(x)

    for size in (16, 48):  # the rule does not depend on the image size
        out = run(torch.randn(2, 8, size, size))
        assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
        assert out.dtype == torch.bfloat16
    out.float().sum().backward()  # gradients flow through the casts
    assert net[0].weight.grad is not None and net[0].weight.grad.dtype == torch.float32
    assert net[1].weight.grad is not None and net[2].weight.grad is not None
    run(torch.randn(2, 8, 16, 16), grad=False)  # prediction: autocast alone
    assert seen == [torch.bfloat16] * 4
    assert all(not m._forward_pre_hooks for m in net)
    net[0].register_forward_hook(lambda *a: 1 / 0)  # raises inside a depthwise convolution
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ZeroDivisionError), fp32_depthwise(net, cpu, "bf16"):
            net(torch.randn(2, 8, 16, 16))
        assert torch.is_autocast_enabled("cpu")  # its autocast-off section was closed
    assert all(not m._forward_pre_hooks for m in net)


def test_cached_suffix_trains_in_channels_last_with_channels_last_gradients(tiny_clf, data):
    """The trainable suffix on cached prefix outputs computes in channels_last (the cache
    hands back NCHW arrays; the whole network from pixels was already channels_last), and the
    gradient that the global pool hands back (an expanded, stride-0 tensor) reaches the layer
    before it channels_last too: the mixed-layout backward of BatchNorm/ReLU6 beside a
    channels_last activation is oneDNN's slow path."""
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 4, "max_epochs": 1})
    clf.fit(X, y)
    net = clf.module_.train()
    suffix = net.suffix_modules()
    assert net.cut > 0 and len(suffix) >= 2
    h = net.prefix(torch.zeros(4, 3, 48, 48, dtype=torch.uint8))
    h = h.contiguous()  # the layout the cache hands back
    assert h.dim() == 4 and not h.is_contiguous(memory_format=torch.channels_last)
    layouts, grads = [], []
    hooks = [m.register_forward_pre_hook(
        lambda m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
        for m in suffix]

    def watch(m, args, out):  # the global pool: what the node that made its input receives
        # (node pre-hooks run after the tensor hooks that skcxr registers on that input)
        if args[0].dim() == 4 and out.dim() != 4:
            args[0].grad_fn.register_prehook(
                lambda go: grads.append(go[0].is_contiguous(memory_format=torch.channels_last)))

    hooks += [m.register_forward_hook(watch) for m in suffix]
    try:
        net.logits(h=h).sum().backward()
    finally:
        for hk in hooks:
            hk.remove()
    n4d = [m for m in suffix if m is not suffix[-1]]  # all but the classifier slot
    assert layouts[:len(n4d)] == [True] * len(n4d)  # every 4-D input, the pool's included
    assert grads == [True]
    # the same logits as from the channels_last tensor the prefix computed
    with torch.no_grad():
        net.eval()
        np.testing.assert_allclose(net.logits(h=h).numpy(),
                                   net.logits(h=h.contiguous(
                                       memory_format=torch.channels_last)).numpy())

"""The caches: frozen outputs shared by both estimators, decoded images; exactness, sharing,
invalidation, processes, budget."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
from skcxr.cache import cache_info, clear_cache, set_cache_budget


@pytest.fixture(scope="module")
def tiny3(tiny_clf):
    return {**tiny_clf, "max_epochs": 3}


@pytest.mark.parametrize("params", [
    {"n_trainable_layers": 0},
    {"n_trainable_layers": 2, "class_weight": "balanced"},
    {"n_trainable_layers": 8, "freeze_epochs": 1, "finetune_lr": 1e-4, "dropout": 0.3},
    {"n_trainable_layers": 2, "precision": "bf16"},
])
def test_cached_and_uncached_fits_agree(data, params, tiny3):
    X, y = data
    cached = PretrainedCNNClassifier(**{**tiny3, **params}).fit(X, y)
    assert cached.prefix_namespace_ is not None
    assert cache_info()["features"]["computed"] == 60
    plain = PretrainedCNNClassifier(**{**tiny3, **params}, cache=False).fit(X, y)
    assert plain.prefix_namespace_ is None
    tol = 2e-2 if params.get("precision") == "bf16" else 1e-4
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=tol)
    np.testing.assert_allclose(cached.history_["train_loss"], plain.history_["train_loss"],
                               rtol=tol)


def test_grid_search_computes_the_prefix_once_per_cut_point(data, tiny3):
    X, y = data
    grid = GridSearchCV(PretrainedCNNClassifier(**tiny3),
                        {"n_trainable_layers": [0, 2], "train_size": [20, 40]},
                        cv=StratifiedKFold(3))
    grid.fit(X, y)
    # each image runs from its pixels once (to the anchor), whatever the folds, train sizes,
    # candidates and refit; both cut points are derived from the anchor's outputs
    assert cache_info()["features"]["computed"] == 60
    assert cache_info()["features"]["derived"] == 2 * 60
    # every other lookup of 12 fits, their scoring, refit
    assert cache_info()["features"]["hits"] >= 400


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deeper_cuts_are_derived_exactly_from_the_anchor(data, tiny3, precision):
    from skcxr import _runtime
    from skcxr._frozen import prefix_part
    from skcxr._runtime import CallOptions
    from skcxr.backbones import weights_identity
    from skcxr.images import check_images

    X, y = data
    fits = [PretrainedCNNClassifier(**{**tiny3, "precision": precision}, n_trainable_layers=c)
            .fit(X[::3], y[::3]) for c in (0, 8, 2)]  # the deepest cut first
    clear_cache()
    source = check_images(X)
    execution = _runtime.resolve("cpu", precision, "torch")
    for fitted in fits:
        net = fitted.module_
        assert 0 < net.anchor < net.cut
        part = prefix_part(net, fitted.preprocessing_, weights_identity(fitted.provenance_))
        direct = part.outputs(source, execution, CallOptions(cache=False))  # from the pixels
        derived = part.outputs(source, execution, CallOptions())
        assert derived.dtype == direct.dtype == (torch.bfloat16 if precision == "bf16"
                                                 else torch.float32)
        assert torch.equal(derived, direct)  # the same functions on the same numbers
    info = cache_info()["features"]
    assert info["computed"] == 60  # the anchor, once per image, for 3 cut points
    assert info["derived"] == 3 * 60


def test_stale_entries_are_never_hit(data, tiny3, rewrite_check):
    X, y = data
    base = PretrainedCNNClassifier(**tiny3, n_trainable_layers=2).fit(X, y)
    for change in ({"random_state": 1},  # other (random) weights
                   {"image_size": 40}, {"normalize": "unit"}, {"resize": "pad"},
                   {"precision": "bf16"}, {"n_trainable_layers": 8}):  # other cut point
        before = cache_info()["features"]
        clone(base).set_params(**change).fit(X, y)
        after = cache_info()["features"]
        computed, derived = (after[k] - before[k] for k in ("computed", "derived"))
        # every image anew: from the pixels to the anchor (but for another cut point of the
        # same network, whose anchor is the same), then derived to the cut point
        anchor = 0 if "n_trainable_layers" in change else 60
        assert (computed, derived) == (anchor, 60), change
    # same path, new pixels
    a, b = rewrite_check(base.predict_proba, 48)
    assert not np.allclose(a, b)


def test_cache_is_skipped_where_it_would_not_be_exact(data, tiny3):
    X, y = data
    assert PretrainedCNNClassifier(**tiny3, augment="flip").fit(X, y).prefix_namespace_ is None
    assert PretrainedCNNClassifier(**tiny3, batchnorm="train").fit(X, y).prefix_namespace_ is None
    tv = PretrainedCNNClassifier(**{**tiny3, "backbone": "torchvision:resnet18"}).fit(X, y)
    assert tv.prefix_namespace_ is None  # its forward is not a chain of its children
    assert cache_info()["features"]["computed"] == 0


def _fit_in_worker(params, X, y, location):
    clear_cache()  # loky reuses its workers across tests: count this fit only
    PretrainedCNNClassifier(**params, n_trainable_layers=2, memory=location).fit(X, y)
    return cache_info()["features"]["computed"]


def test_disk_cache_is_shared_across_processes(data, tmp_path, tiny3):
    X, y = data
    halves = [(X[::2], y[::2]), (X[1::2], y[1::2])]
    computed = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(_fit_in_worker)(tiny3, Xh, yh, tmp_path) for Xh, yh in halves)
    assert computed == [30, 30]
    clf = PretrainedCNNClassifier(**tiny3, n_trainable_layers=2, memory=tmp_path).fit(X, y)
    info = cache_info()["features"]
    assert info["computed"] == 0 and info["disk_hits"] == 60
    assert clf.predict_proba(X).shape == (60, 2)


def test_byte_budget_is_respected(data, tiny3):
    X, y = data
    try:
        set_cache_budget(100_000)
        PretrainedCNNClassifier(**tiny3, n_trainable_layers=8).fit(X, y)
        info = cache_info()["features"]
        assert 0 < info["bytes"] <= 100_000 and info["evicted"] > 0
        set_cache_budget(0)
        assert cache_info()["features"]["bytes"] == 0
        with pytest.raises(ValueError, match="nbytes"):
            set_cache_budget(-1)
    finally:
        set_cache_budget(2 * 1024**3)


def test_view_augmentation_trains_from_cached_prefix_outputs(data, tiny3):
    """augment="views": each view's prefix outputs are computed once per training image and
    cached; the fit equals the same augmentation applied to the pixels (no cache)."""
    X, y = data
    params = {**tiny3, "n_trainable_layers": 2, "augment": "views"}
    clear_cache()
    clf = PretrainedCNNClassifier(**params).fit(X, y)
    n_train = clf.n_train_samples_
    # every fit row in the identity view, the training rows in the 5 other views
    assert cache_info()["features"]["computed"] == len(X) + 5 * n_train
    assert clf.prefix_namespace_ is not None
    clone(clf).fit(X, y)  # another fold or grid point: nothing computed again
    assert cache_info()["features"]["computed"] == len(X) + 5 * n_train
    plain = PretrainedCNNClassifier(**{**params, "augment": None}).fit(X, y)
    assert not np.allclose(plain.history_["train_loss"], clf.history_["train_loss"])
    # the same random views drawn on the pixels, every epoch through the whole network
    pixels = PretrainedCNNClassifier(**params, cache=False).fit(X, y)
    assert pixels.prefix_namespace_ is None
    np.testing.assert_allclose(pixels.history_["train_loss"], clf.history_["train_loss"],
                               rtol=1e-4)
    np.testing.assert_allclose(pixels.predict_proba(X), clf.predict_proba(X), atol=1e-4)


# --------------------------------------------------------------------------- decoded images


def test_augmented_fits_decode_each_image_once(data, tiny3):
    X, y = data
    params = {**tiny3, "n_trainable_layers": 2, "augment": "flip", "max_epochs": 3}
    cached = PretrainedCNNClassifier(**params).fit(X, y)
    info = cache_info()["decoded"]
    # 3 epochs of 54 training + 6 validation images, decoded once each
    assert info["computed"] == 60 and info["hits"] == 3 * 60 - 60
    assert info["bytes"] == 60 * 48 * 48  # grey images kept at one channel, uint8
    clone(cached).fit(X, y)  # a clone (another fold, grid point) decodes nothing
    assert cache_info()["decoded"]["computed"] == 60
    # exact: the decoded cache changes no pixel and no random draw
    plain = PretrainedCNNClassifier(**params, cache=False).fit(X, y)
    assert cache_info()["decoded"]["computed"] == 60
    np.testing.assert_array_equal(cached.predict_proba(X), plain.predict_proba(X))
    np.testing.assert_array_equal(cached.history_["train_loss"], plain.history_["train_loss"])


def test_decoded_cache_is_never_stale_and_respects_its_budget(data, tiny3, rewrite_check):
    X, y = data
    clf = PretrainedCNNClassifier(**tiny3, augment="flip").fit(X, y)
    a, b = rewrite_check(clf.predict_proba, 48)
    assert not np.allclose(a, b)  # same path, new pixels: decoded again
    before = cache_info()["decoded"]["computed"]
    clone(clf).set_params(image_size=40).fit(X, y)  # other decode settings
    assert cache_info()["decoded"]["computed"] - before == 60
    try:
        set_cache_budget(decoded=10 * 48 * 48)
        info = cache_info()["decoded"]
        assert info["bytes"] <= 10 * 48 * 48 and info["evicted"] > 0
        with pytest.raises(ValueError, match="decoded"):
            set_cache_budget(decoded=-5)
    finally:
        set_cache_budget(decoded=1024**3)


def test_decoded_cache_on_disk(data, tmp_path, tiny3):
    X, y = data
    params = {**tiny3, "augment": "flip", "memory": tmp_path}
    first = PretrainedCNNClassifier(**params).fit(X, y).predict_proba(X)
    clear_cache()  # a new session: only the disk store remains
    # another seed: a fit that trains (the same one would be read back, finished)
    second = PretrainedCNNClassifier(**{**params, "random_state": 1}).fit(X, y)
    info = cache_info()["decoded"]
    assert info["computed"] == 0 and info["disk_hits"] == 60
    again = PretrainedCNNClassifier(**params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(second.predict_proba(X), first)


# --------------------------------------------------------------------------- one frozen path


def test_both_estimators_share_one_frozen_output_path(data, tiny_fe, tmp_path):
    """Features and prefix outputs live in the same stores, under the same kind of keys."""
    X, _ = data
    fe = FeatureExtractorTransformer(**tiny_fe).fit(X)
    first = fe.transform(X)
    info = cache_info()["features"]
    assert info["computed"] == 60 and info["entries"] == 60
    assert info["bytes"] == 60 * 256 * 4  # one float32 feature row per image
    np.testing.assert_array_equal(clone(fe).fit(X).transform(X[::-1]), first[::-1])
    info = cache_info()["features"]
    assert info["computed"] == 60 and info["hits"] == 60  # a clone hits
    # cache=False: computed, not stored; the same numbers
    np.testing.assert_array_equal(clone(fe).set_params(cache=False).fit(X).transform(X), first)
    assert cache_info()["features"]["computed"] == 60
    # memory=: the disk store, as for the classifier; a new session reads it
    clear_cache()
    FeatureExtractorTransformer(**tiny_fe, memory=tmp_path).fit(X).transform(X[:10])
    clear_cache()
    again = FeatureExtractorTransformer(**tiny_fe, memory=tmp_path).fit(X).transform(X[:10])
    assert cache_info()["features"]["disk_hits"] == 10 and cache_info()["features"]["computed"] == 0
    np.testing.assert_array_equal(again, first[:10])


def test_the_same_setting_spelled_differently_shares_entries(data, tiny_fe):
    """numpy ints, lists and tuples are the same parameter values: the same cache entries."""
    X, _ = data
    FeatureExtractorTransformer(**{**tiny_fe, "image_size": (64, 64)}, in_chans=1).fit(X) \
        .transform(X)
    FeatureExtractorTransformer(**{**tiny_fe, "image_size": [np.int64(64)] * 2},
                                in_chans=np.int64(1)).fit(X).transform(X)
    assert cache_info()["features"]["computed"] == 60 and cache_info()["features"]["hits"] == 60

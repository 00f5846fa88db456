"""The optional OpenVINO engine for frozen feature extraction."""

import numpy as np
import pytest

from skcxr import FeatureExtractorTransformer
from skcxr.cache import cache_info, clear_cache

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def reference(sample):
    X = sample.data[::25]
    fe = FeatureExtractorTransformer(precision="fp32", engine="torch").fit(X[:1])
    return X, fe.transform(X)


@pytest.mark.parametrize("precision, min_cos", [("fp32", 0.9999), ("bf16", 0.99)])
def test_openvino_features_agree_with_torch(reference, precision, min_cos):
    X, ref = reference
    fe = FeatureExtractorTransformer(precision=precision, engine="openvino").fit(X[:1])
    out = fe.transform(X)
    assert fe.engine_ == "openvino" and out.shape == ref.shape and out.dtype == np.float32
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > min_cos, cos


def test_openvino_takes_8_bit_and_16_bit_inputs(sample_paths, tiny_fe):
    from skcxr.images import read_image

    paths, _ = sample_paths
    arrays = np.stack([read_image(p) for p in paths])
    fe = FeatureExtractorTransformer(**{**tiny_fe, "engine": "openvino"}).fit(paths)
    u8 = fe.transform(arrays)
    u16 = fe.transform(arrays.astype(np.uint16) * 257)  # float path, normalised in torch
    ref = FeatureExtractorTransformer(**tiny_fe).fit(paths).transform(arrays)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(u8, ref, atol=1e-3 * scale)
    np.testing.assert_allclose(u16, ref, atol=0.03 * scale)


def test_auto_engine_follows_the_calls_size_and_caches_by_engine(sample_paths, tiny_fe):
    """engine="auto" on the CPU: torch below openvino_min_images images in a call (OpenVINO's
    compile would cost more than it saves), OpenVINO from it; int8 is OpenVINO always."""
    from skcxr import config_context
    from skcxr._runtime import resolve
    from skcxr.cache import cache_info

    paths, _ = sample_paths  # 12 images
    fe = FeatureExtractorTransformer(**{**tiny_fe, "engine": "auto"}, device="cpu").fit(paths)
    assert fe.engine_ == "torch"
    assert [resolve("cpu", "bf16", "auto", n).engine for n in (None, 511, 512)] == [
        "openvino", "torch", "openvino"]
    assert resolve("cpu", "int8", "auto", 10).engine == "openvino"
    assert resolve("cpu", "bf16", "torch", 10_000).engine == "torch"
    with config_context(openvino_min_images=12):
        assert fe.fit(paths).engine_ == "openvino"
        fe.transform(paths)
        assert cache_info()["features"]["computed"] == 12
        fe.set_params(engine="torch").transform(paths)  # other engine, other numbers: no hit
        assert cache_info()["features"]["computed"] == 24
        assert cache_info()["features"]["hits"] == 0


def test_openvino_estimator_pickles(sample_paths, tmp_path, tiny_fe):
    import joblib

    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**{**tiny_fe, "engine": "openvino"}).fit(paths)
    out = fe.transform(paths)
    joblib.dump(fe, tmp_path / "fe.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "fe.joblib").transform(paths), out)


def test_classifier_prefix_on_openvino_matches_torch(sample, tiny_clf):
    from skcxr import PretrainedCNNClassifier
    from skcxr.cache import clear_cache

    idx = np.r_[0:20, 100:120]
    X, y = sample.data[idx], sample.target[idx]
    clear_cache()
    ov = PretrainedCNNClassifier(**{**tiny_clf, "engine": "openvino"}, n_trainable_layers=2)
    ov.fit(X, y)
    assert ov.prefix_namespace_["engine"] == "openvino"
    torch_ = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2).fit(X, y)
    np.testing.assert_allclose(ov.predict_proba(X), torch_.predict_proba(X), atol=2e-3)


def _compiled():
    return cache_info()["compiled"]["entries"]


def test_augmented_fit_runs_its_frozen_prefix_compiled_and_matches_torch(sample, tiny_clf):
    """Pixel augmentation: the prefix sees new pixels every epoch, and OpenVINO computes
    it per batch; the same draws, the same training, to float rounding (fp32)."""
    import pickle

    from skcxr import PretrainedCNNClassifier

    idx = np.r_[0:20, 100:120]
    X, y = sample.data[idx], sample.target[idx]
    params = {**tiny_clf, "n_trainable_layers": 2, "augment": "standard", "cache": False}
    clear_cache()
    ov = PretrainedCNNClassifier(**{**params, "engine": "openvino"}).fit(X, y)
    assert _compiled() >= 1 and ov.prefix_namespace_ is None
    assert ov.module_.prefix_engine is None  # nothing of the engine stays in the model
    pickle.dumps(ov)
    torch_ = PretrainedCNNClassifier(**params).fit(X, y)
    np.testing.assert_allclose(ov.history_["train_loss"], torch_.history_["train_loss"],
                               rtol=1e-4)
    np.testing.assert_allclose(ov.predict_proba(X), torch_.predict_proba(X), atol=1e-4)


def test_many_images_predict_through_the_whole_network_compiled_once(sample, tiny_clf):
    """From whole_network_min_images images on (a setting), a fitted classifier's whole
    network runs in OpenVINO: compiled once per fitted model, cached logits, agreeing with torch."""
    import threading

    from skcxr import PretrainedCNNClassifier, config_context

    idx = np.r_[0:20, 100:120]
    X, y = sample.data[idx], sample.target[idx]
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=4, tta="flip").fit(X, y)
    few = clf.predict_proba(X)  # torch engine: the reference
    clf.set_params(engine="openvino")
    clear_cache()
    with config_context(whole_network_min_images=30):
        whole = clf.predict_proba(X)
    assert _compiled() == 1  # one network, compiled once, for both tta views
    assert cache_info()["features"]["computed"] == 2 * len(X)  # logits per image and view
    np.testing.assert_allclose(whole, few, atol=1e-4)  # fp32
    np.testing.assert_array_equal(clf.predict_proba(X), whole)  # cached logits
    clf.set_params(cache=False)
    results = [None] * 3

    def predict(i):
        results[i] = clf.predict_proba(X)

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _compiled() == 1  # nothing compiled again, also from threads
    for r in results:
        np.testing.assert_allclose(r, whole, atol=1e-6)
    # once compiled, a few images take the whole network too: nothing compiled again
    np.testing.assert_allclose(clf.predict_proba(X[:10]), whole[:10], atol=1e-6)
    assert _compiled() == 1
    # a few images of a network not compiled whole: the compiled prefix (to its anchor,
    # then from the anchor to its cut) and a torch suffix
    other = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2).fit(X, y)
    other.set_params(engine="openvino").predict_proba(X[:10])
    assert _compiled() == 3


def test_int8_features_quantized_at_fit(sample):
    """precision="int8": fit quantizes the backbone (NNCF), calibrated on the fit images;
    transform runs it in OpenVINO: close to fp32, picklable, cached under its own key."""
    import pickle

    from skcxr import PretrainedCNNClassifier
    from skcxr.cache import cache_info

    pytest.importorskip("nncf")
    X = sample.data[::10]  # 30 images, both classes
    fe = FeatureExtractorTransformer(precision="int8", random_state=0).fit(X)
    assert fe.precision_ == "int8" and fe.engine_ == "openvino"
    assert len(fe.quantized_["bin"]) < 0.5 * 4 * sum(p.numel() for p in fe.module_.parameters())
    out = fe.transform(X)
    ref = FeatureExtractorTransformer(precision="fp32", engine="torch").fit(X[:1]).transform(X)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9, cos  # 0.96 measured; bf16: > 0.99
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fe)).transform(X), out)
    computed = cache_info()["features"]["computed"]
    bf16 = fe.set_params(precision="bf16").transform(X)  # the float network, its own entries
    assert cache_info()["features"]["computed"] == computed + len(X)
    assert not np.array_equal(bf16, out)
    # the same seed and images quantize to the same numbers
    again = FeatureExtractorTransformer(precision="int8", random_state=0).fit(X)
    np.testing.assert_allclose(again.transform(X), out, rtol=1e-5, atol=1e-5)
    # errors before any work
    with pytest.raises(ValueError, match="engine='openvino'"):
        FeatureExtractorTransformer(precision="int8", engine="torch").fit(X)
    with pytest.raises(ValueError, match="at least 4"):
        FeatureExtractorTransformer(precision="int8").fit(X[:2])
    with pytest.raises(ValueError, match="refit with precision='int8'"):
        FeatureExtractorTransformer(precision="bf16").fit(X[:1]).set_params(
            precision="int8").transform(X[:2])
    with pytest.raises(ValueError, match="'precision' parameter"):
        PretrainedCNNClassifier(precision="int8").fit(X, sample.target[::10])


def test_cut_points_share_one_conversion_of_the_chain(sample, tiny_clf):
    """OpenVINO converts a backbone's chain once; every cut point is a cut of that model
    (compiled once per cut), and its outputs match torch's."""
    from skcxr import PretrainedCNNClassifier

    idx = np.r_[0:20, 100:120]
    X, y = sample.data[idx], sample.target[idx]
    cuts = set()
    for c in (2, 4, 8):
        ov = PretrainedCNNClassifier(**{**tiny_clf, "engine": "openvino"}, n_trainable_layers=c)
        proba = ov.fit(X, y).predict_proba(X)
        cuts.add(ov.module_.cut)
        ref = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=c).fit(X, y)
        np.testing.assert_allclose(proba, ref.predict_proba(X), atol=2e-3)
    assert len(cuts) >= 2
    assert cache_info()["conversions"]["converted"] == 1  # one conversion
    # one compile for the anchor, one per cut point (from the anchor's outputs)
    assert _compiled() == len(cuts) + 1
    # per engine (OpenVINO and the torch reference), each image from its pixels once
    assert cache_info()["features"]["computed"] == 2 * len(X)
    assert cache_info()["features"]["derived"] == 2 * len(cuts) * len(X)


def test_derived_cuts_match_direct_ones_on_openvino(sample, tiny_clf):
    """A prefix derived from the anchor's outputs by the compiled segment between them
    matches the prefix compiled whole: exactly at fp32, to bf16 rounding at bf16."""
    from skcxr import PretrainedCNNClassifier, _runtime
    from skcxr._frozen import prefix_part
    from skcxr._runtime import CallOptions
    from skcxr.backbones import weights_identity
    from skcxr.images import check_images

    X, y = sample.data[::10], sample.target[::10]
    source = check_images(X)
    clf = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2).fit(X, y)
    part = prefix_part(clf.module_, clf.preprocessing_, weights_identity(clf.provenance_))
    assert part.base is not None
    for precision, tol in (("fp32", 1e-5), ("bf16", 2e-2)):
        execution = _runtime.resolve("cpu", precision, "openvino")
        direct = part.outputs(source, execution, CallOptions(cache=False)).float()
        derived = part.outputs(source, execution, CallOptions()).float()
        scale = direct.abs().max()
        assert (derived - direct).abs().max() <= tol * scale, precision
    assert cache_info()["features"]["derived"] == 3 * len(X)  # the fit (torch), then each precision


def test_compiles_into_a_shared_cache_wait_for_each_other(tmp_path):
    """OpenVINO deletes a blob it finds half-written, failing the process writing it: a
    compile into a shared cache directory holds a lock there (another process holding it
    makes this one wait, then load the finished blob)."""
    import threading
    import time

    import torch
    from filelock import FileLock

    from skcxr import _openvino

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    done = threading.Event()

    def compile_():
        _openvino.compile_frozen(module, (3, 16, 16), "fp32", "shared-cache-test",
                                 kind="test", threads=1, cache_dir=tmp_path)
        done.set()

    with FileLock(str(tmp_path / ".compile.lock")):  # another process compiling
        worker = threading.Thread(target=compile_)
        worker.start()
        time.sleep(1.0)
        assert not done.is_set()
    worker.join(30)
    assert done.is_set()
    assert any(p.suffix == ".blob" for p in tmp_path.iterdir())


def test_a_damaged_compiled_blob_is_a_miss_recompiled_and_replaced(tmp_path, sample_paths,
                                                                   tiny_fe):
    """Compiled models kept under memory= verify like cache entries: 16 flipped bytes are a
    miss (counted as blob_rejected), the model is compiled again, the blob replaced, and the
    features are the ones a fresh compile gives."""
    X, _ = sample_paths
    params = {**tiny_fe, "engine": "openvino", "cache": False, "memory": str(tmp_path)}
    expected = FeatureExtractorTransformer(**params).fit(X[:2]).transform(X)
    (blob,) = (tmp_path / "skcxr-openvino").glob("*.blob")
    good = blob.read_bytes()
    clear_cache()
    np.testing.assert_array_equal(FeatureExtractorTransformer(**params).fit(X[:2])
                                  .transform(X), expected)
    assert cache_info()["compiled"]["blob_hits"] == 1  # loaded, not compiled
    for where in (len(good) // 2, len(good) - 40, 60):
        damaged = bytearray(good)
        damaged[where:where + 16] = bytes(b ^ 0xFF for b in damaged[where:where + 16])
        blob.write_bytes(bytes(damaged))
        clear_cache()
        got = FeatureExtractorTransformer(**params).fit(X[:2]).transform(X)
        info = cache_info()["compiled"]
        assert (info["blob_rejected"], info["blob_hits"]) == (1, 0)
        np.testing.assert_array_equal(got, expected)
        assert blob.read_bytes() != bytes(damaged)  # replaced by a good one

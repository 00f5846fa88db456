"""The optional OpenVINO engine for frozen feature extraction."""

import numpy as np
import pytest
from conftest import TINY_FE

from skcxr import FeatureExtractorTransformer

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


def test_openvino_takes_8_bit_and_16_bit_inputs(sample_paths):
    from skcxr.images import read_image

    paths, _ = sample_paths
    arrays = np.stack([read_image(p) for p in paths])
    fe = FeatureExtractorTransformer(**{**TINY_FE, "engine": "openvino"}).fit(paths)
    u8 = fe.transform(arrays)
    u16 = fe.transform(arrays.astype(np.uint16) * 257)  # float path, normalised in torch
    ref = FeatureExtractorTransformer(**TINY_FE).fit(paths).transform(arrays)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(u8, ref, atol=1e-3 * scale)
    np.testing.assert_allclose(u16, ref, atol=0.03 * scale)


def test_auto_engine_picks_openvino_on_cpu_and_caches_by_engine(sample_paths, tmp_path):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**{**TINY_FE, "engine": "auto"}, device="cpu").fit(paths)
    assert fe.engine_ == "openvino"
    assert fe._cache_namespace()["engine"] == "openvino"


def test_openvino_estimator_pickles(sample_paths, tmp_path):
    import joblib

    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**{**TINY_FE, "engine": "openvino"}).fit(paths)
    out = fe.transform(paths)
    joblib.dump(fe, tmp_path / "fe.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "fe.joblib").transform(paths), out)


def test_bad_engine():
    with pytest.raises(ValueError, match="engine must be"):
        FeatureExtractorTransformer(**{**TINY_FE, "engine": "tensorrt"}).fit(np.zeros((2, 8, 8)))


def test_classifier_prefix_on_openvino_matches_torch(sample):
    from conftest import TINYC

    from skcxr import PretrainedCNNClassifier
    from skcxr.cache import clear_cache

    idx = np.r_[0:20, 100:120]
    X, y = sample.data[idx], sample.target[idx]
    clear_cache()
    ov = PretrainedCNNClassifier(**{**TINYC, "engine": "openvino"}, n_trainable_layers=2)
    ov.fit(X, y)
    assert ov.prefix_namespace_["engine"] == "openvino"
    torch_ = PretrainedCNNClassifier(**TINYC, n_trainable_layers=2).fit(X, y)
    np.testing.assert_allclose(ov.predict_proba(X), torch_.predict_proba(X), atol=2e-3)

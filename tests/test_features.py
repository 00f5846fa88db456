import os
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from skcxr import FeatureExtractorTransformer


class ForwardCounter:
    """Counts the images that go through a fitted transformer's backbone."""

    def __init__(self, fe):
        self.n = 0
        fe.module_.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.n += inputs[0].shape[0]


def test_transform_shape_dtype_and_feature_names(sample_paths, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe, batch_size=5)
    out = fe.fit_transform(paths)
    assert out.shape == (12, 256) and out.dtype == np.float32
    assert fe.n_features_out_ == 256
    names = fe.get_feature_names_out()
    assert names.shape == (256,) and names[0] == "featureextractortransformer0"
    assert not fe.module_.training
    assert not any(p.requires_grad for p in fe.module_.parameters())
    # batch size does not change the result
    np.testing.assert_allclose(fe.set_params(batch_size=32).transform(paths), out, atol=1e-6)


def test_set_output_pandas_keeps_the_index(sample_paths, tiny_fe):
    paths, _ = sample_paths
    X = pd.Series(paths, index=[f"img{i}" for i in range(len(paths))])
    fe = FeatureExtractorTransformer(**tiny_fe).set_output(transform="pandas")
    df = fe.fit_transform(X)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == list(X.index)
    assert list(df.columns) == list(fe.get_feature_names_out())


def test_bf16_features_agree_with_fp32(sample):
    X = sample.data[::25]  # 12 real CXRs
    f32 = FeatureExtractorTransformer(precision="fp32", engine="torch").fit(X[:1]).transform(X)
    bf16 = FeatureExtractorTransformer(precision="bf16", engine="torch").fit(X[:1])
    assert bf16.precision_ == "bf16"
    f16 = bf16.transform(X)
    cos = (f32 * f16).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(f16, axis=1)
    assert cos.min() > 0.99, cos
    assert f16.dtype == np.float32


def test_auto_precision_follows_the_cpu(sample_paths, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**{**tiny_fe, "precision": "auto"}).fit(paths)
    assert fe.device_.type in ("cpu", "cuda")
    if fe.device_.type == "cpu" and "SKCXR_CPU_BF16" not in os.environ:
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        native = "avx512_bf16" in flags or "amx_bf16" in flags
        assert fe.precision_ == ("bf16" if native else "fp32")


def test_memory_cache_computes_each_image_once(sample_paths, tmp_path, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe, memory=tmp_path).fit(paths)
    counter = ForwardCounter(fe)
    first = fe.transform(paths[:8])
    assert counter.n == 8
    # overlapping subsets, as CV folds ask: only the 4 new images are computed
    both = fe.transform(paths)
    assert counter.n == 12
    np.testing.assert_array_equal(both[:8], first)
    # a clone (as cross_val_score makes) shares the directory: nothing is recomputed
    other = clone(fe).fit(paths)
    other_counter = ForwardCounter(other)
    np.testing.assert_array_equal(other.transform(paths[::-1]), both[::-1])
    assert other_counter.n == 0
    # joblib.Memory is accepted as well
    mem = FeatureExtractorTransformer(**tiny_fe, memory=joblib.Memory(tmp_path, verbose=0))
    np.testing.assert_array_equal(mem.fit(paths).transform(paths), both)


def test_memory_cache_is_invalidated_by_weights_preprocessing_and_content(
        sample_paths, tmp_path, tiny_fe, rewrite_check):
    paths, _ = sample_paths
    base = FeatureExtractorTransformer(**tiny_fe, memory=tmp_path).fit(paths)
    ref = base.transform(paths[:4])
    for change in ({"random_state": 1}, {"image_size": 48}, {"normalize": "unit"},
                   {"resize": "pad"}):
        fe = clone(base).set_params(**change).fit(paths)
        counter = ForwardCounter(fe)
        fe.transform(paths[:4])
        assert counter.n == 4, change
    # same path, new pixels: the content hash changes, so the entry is not reused
    a, b = rewrite_check(base.transform, 64)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(base.transform(paths[:4]), ref)


def test_pickle_round_trip_gives_identical_features(sample_paths, tmp_path, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe).fit(paths)
    joblib.dump(fe, tmp_path / "fe.joblib")
    loaded = joblib.load(tmp_path / "fe.joblib")
    np.testing.assert_array_equal(loaded.transform(paths), fe.transform(paths))
    assert loaded.provenance_ == fe.provenance_


def test_workers_give_the_same_features(sample_paths, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe).fit(paths)
    ref = fe.transform(paths)
    np.testing.assert_array_equal(fe.set_params(num_workers=2).transform(paths), ref)


def test_verbose_shows_a_progress_bar(sample_paths, capsys, tiny_fe):
    paths, _ = sample_paths
    FeatureExtractorTransformer(**tiny_fe, verbose=1).fit_transform(paths)
    assert "features" in capsys.readouterr().err


def test_one_channel_stem_on_grey_images(sample_paths, tiny_fe):
    paths, _ = sample_paths
    out = FeatureExtractorTransformer(**{**tiny_fe, "in_chans": 1}).fit_transform(paths)
    assert out.shape == (12, 256) and np.isfinite(out).all()


def test_transform_writes_no_attribute(sample_paths, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe).fit(paths)
    before = dict(vars(fe))
    weights = {k: t.clone() for k, t in fe.module_.state_dict().items()}
    fe.transform(paths)
    fe.set_params(precision="bf16").transform(paths)  # a call-time precision: no attribute
    assert vars(fe).keys() == before.keys()
    assert all(vars(fe)[k] is v for k, v in before.items() if k.endswith("_"))
    assert fe.precision_ == "fp32" and not fe.module_.training
    assert all(torch.equal(t, weights[k]) for k, t in fe.module_.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fitted_pickle_loads_on_cpu(sample_paths, tmp_path, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe, device="cuda").fit(paths)
    gpu = fe.transform(paths)
    joblib.dump(fe, tmp_path / "fe.joblib")
    cpu = joblib.load(tmp_path / "fe.joblib").set_params(device="cpu").transform(paths)
    np.testing.assert_allclose(cpu, gpu, rtol=1e-3, atol=1e-4)

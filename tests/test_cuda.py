"""The CUDA path (skipped without a GPU; ``benchmarks/gpu_check.py`` runs these first on a
machine with one): fits and predictions on the GPU agree with the CPU's, mixed precision
trains, fitted models come back to the CPU, and an interrupted GPU fit resumes."""

import joblib
import numpy as np
import pytest
import torch

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier, config_context
from skcxr._training import WeightedNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def fp32(tiny_clf):
    return {**tiny_clf, "max_epochs": 3, "early_stopping": False}


def test_a_gpu_fit_agrees_with_the_cpu_fit(data, fp32):
    """fp32, same seed: the same rows, initial weights and batches; float sums differ
    (cuDNN), so the probabilities agree to a tolerance, not to the bit."""
    X, y = data
    gpu = PretrainedCNNClassifier(**fp32, device="cuda").fit(X, y)
    cpu = PretrainedCNNClassifier(**fp32, device="cpu").fit(X, y)
    assert gpu.device_.type == "cuda" and cpu.device_.type == "cpu"
    assert next(gpu.module_.parameters()).device.type == "cpu"  # fitted modules live on CPU
    np.testing.assert_allclose(gpu.history_["train_loss"], cpu.history_["train_loss"],
                               rtol=1e-3)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=1e-3)


@pytest.mark.parametrize("engine_cache", [True, False], ids=["cached-prefix", "pixels"])
def test_mixed_precision_trains_on_the_gpu(data, tiny_clf, engine_cache):
    """precision='auto' on CUDA is bf16 (or fp16 where bf16 is missing); from the cached
    prefix and from pixels (augmentation), channels_last."""
    X, y = data
    params = {**tiny_clf, "precision": "auto", "max_epochs": 3, "n_trainable_layers": 2}
    if not engine_cache:
        params["augment"] = "flip"
    clf = PretrainedCNNClassifier(**params, device="cuda").fit(X, y)
    assert clf.precision_ in ("bf16", "fp16")
    assert np.isfinite(clf.history_["train_loss"]).all()
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-4)


def test_a_gpu_model_predicts_on_a_cpu_only_machine(data, fp32, tmp_path):
    X, y = data
    gpu = PretrainedCNNClassifier(**fp32, device="cuda").fit(X, y)
    joblib.dump(gpu, tmp_path / "m.joblib")
    cpu = joblib.load(tmp_path / "m.joblib").set_params(device="cpu")
    np.testing.assert_allclose(cpu.predict_proba(X), gpu.predict_proba(X), atol=1e-4)


def test_features_on_the_gpu_match_the_cpu(sample_paths, tiny_fe):
    paths, _ = sample_paths
    gpu = FeatureExtractorTransformer(**tiny_fe, device="cuda").fit(paths).transform(paths)
    cpu = FeatureExtractorTransformer(**tiny_fe, device="cpu").fit(paths).transform(paths)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)


def test_an_interrupted_gpu_fit_resumes(data, fp32, tmp_path, monkeypatch):
    X, y = data
    calls = {"n": 0, "stop": 5}
    original = WeightedNet.train_step

    def train_step(self, batch, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return original(self, batch, **kwargs)

    monkeypatch.setattr(WeightedNet, "train_step", train_step)
    clf = PretrainedCNNClassifier(**fp32, device="cuda", memory=tmp_path)
    with config_context(checkpoint_interval=0):
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
        calls["n"], calls["stop"] = 0, None
        clf.fit(X, y)
    assert 0 < calls["n"] < 3 * 4  # resumed: fewer steps than the whole fit
    assert len(clf.history_) == 3

"""Label-free adaptation: AdaBN, prior shift, per-site standardisation."""

import numpy as np
import pytest
import sklearn
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import nn

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
from skcxr.adaptation import (
    PriorAdjustedClassifier,
    PriorShiftWarning,
    SiteStandardScaler,
    adapt_batchnorm,
    adjust_to_prior,
    estimate_prior,
    training_prior,
)
from skcxr.cache import cache_info
from skcxr.images import check_images


def brighter(X):
    """A 'new site': the same images with another exposure (uint8 arrays)."""
    source = check_images(X)
    images = [source.read(i) for i in range(len(source))]
    return np.stack([np.clip(im.astype(np.float32) * 0.6 + 70, 0, 255).astype(np.uint8)
                     for im in images])


@pytest.fixture(scope="module")
def clf(data, tiny_clf):
    X, y = data
    return PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=4, class_weight="balanced",
                                   validation_fraction=0.3).fit(X, y)


def bn_layers(module):
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_adabn_changes_only_batchnorm_statistics_to_the_targets_own(clf, data):
    X, _ = data
    target = brighter(X[:40])
    with pytest.warns(UserWarning, match="reference="):  # frozen BN: pretrained statistics
        adapted = adapt_batchnorm(clf, target, batch_size=64)  # one batch: AdaBN exactly
    before, after = clf.module_.state_dict(), adapted.module_.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert len(changed) == 2 * len(bn_layers(clf.module_.backbone))
    # by hand: each BN layer's input over the target images, in the adapted network at
    # inference, has the adapted layer's mean and (population) variance
    net = adapted.module_.eval()
    seen = {}

    def keep(name):
        def hook(module, inputs):
            seen[name] = inputs[0].detach().double()  # returns None: the input is unchanged
        return hook

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in bn_layers(net.backbone)]
    prep = adapted.preprocessing_
    batch = torch.stack([prep.transform(torch.from_numpy(im)[None]) for im in target])
    with torch.no_grad():
        net.backbone(prep.normalize(batch).float())
    for h in hooks:
        h.remove()
    for n, m in bn_layers(net.backbone):
        x = seen[n].transpose(0, 1).reshape(seen[n].shape[1], -1)
        np.testing.assert_allclose(m.running_mean.numpy(), x.mean(1).numpy(), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(m.running_var.numpy(), x.var(1, unbiased=False).numpy(),
                                   rtol=1e-4, atol=1e-5)
    # recorded; the original is untouched; predictions move
    record = adapted.provenance_["adaptations"][-1]
    assert record["method"] == "batchnorm" and record["n_images"] == 40
    assert record["state_sha256_before"] == clf.provenance_["state_sha256"]
    assert adapted.provenance_["state_sha256"] != clf.provenance_["state_sha256"]
    assert "adaptations" not in clf.provenance_
    assert np.abs(adapted.predict_proba(target) - clf.predict_proba(target)).max() > 1e-3


def test_adabn_with_a_reference_standardises_the_target_as_the_reference_was(clf, data):
    """With the training site's images as reference, every BN layer's normalised output has
    on the target the per-channel mean and variance it had on the reference before."""
    X, _ = data
    target, reference = brighter(X[:40]), X[20:60]
    adapted = adapt_batchnorm(clf, target, reference=reference, batch_size=64)
    record = adapted.provenance_["adaptations"][-1]
    assert record["n_reference_images"] == 40 and record["reference_sha256"]

    def normalised(est, images):
        net, prep, out = est.module_.eval(), est.preprocessing_, {}

        def keep(name):
            def hook(module, inputs):
                x = inputs[0].detach().double()
                rm = module.running_mean.double()[None, :, None, None]
                rv = module.running_var.double()[None, :, None, None]
                z = ((x - rm) / (rv + module.eps).sqrt()).transpose(0, 1).reshape(
                    x.shape[1], -1)
                out[name] = (z.mean(1), z.var(1, unbiased=False))
            return hook

        hooks = [m.register_forward_pre_hook(keep(n)) for n, m in bn_layers(net.backbone)]
        source = check_images(images)
        batch = torch.stack([prep.load(source, i) for i in range(len(source))])
        with torch.no_grad():
            net.backbone(prep.normalize(batch).float())
        for h in hooks:
            h.remove()
        return out

    want, got = normalised(clf, reference), normalised(adapted, target)
    for name in want:
        np.testing.assert_allclose(got[name][0], want[name][0], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(got[name][1], want[name][1], rtol=1e-3, atol=1e-5,
                                   err_msg=name)
    # the same images as reference and target: nothing changes
    same = adapt_batchnorm(clf, reference, reference=reference, batch_size=64)
    for (_, a), (_, b) in zip(bn_layers(same.module_), bn_layers(clf.module_)):
        torch.testing.assert_close(a.running_mean, b.running_mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.running_var, b.running_var, atol=1e-5, rtol=1e-4)


def test_adabn_in_batches_is_close_to_one_batch(clf, data):
    X, _ = data
    target = brighter(X[:40])
    one = adapt_batchnorm(clf, target, reference=X[40:], batch_size=64)
    batched = adapt_batchnorm(clf, target, reference=X[40:], batch_size=16)
    first = lambda e: bn_layers(e.module_.backbone)[0][1]  # noqa: E731
    torch.testing.assert_close(first(one).running_var, first(batched).running_var)
    np.testing.assert_allclose(one.predict_proba(target), batched.predict_proba(target),
                               atol=0.05)


def test_adapted_and_unadapted_features_never_share_cache_entries(data, tiny_fe):
    X, y = data
    target = brighter(X[:20])
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe),
                         LogisticRegression(max_iter=500)).fit(X, y)
    plain = pipe[0].transform(target)
    entries = cache_info()["features"]["entries"]
    adapted = adapt_batchnorm(pipe, target, reference=X)
    assert adapted is not pipe and adapted[-1] is not pipe[-1]
    features = adapted[0].transform(target)
    assert cache_info()["features"]["entries"] == entries + 20  # new entries, no hit
    assert np.abs(features - plain).max() > 1e-3
    np.testing.assert_array_equal(pipe[0].transform(target), plain)  # still cached, unchanged
    np.testing.assert_array_equal(adapted[0].transform(target), features)
    # the adapted pipeline predicts on its adapted features
    np.testing.assert_allclose(adapted.predict_proba(target),
                               adapted[-1].predict_proba(features), rtol=1e-5)


def test_adapted_classifier_exports_its_statistics(clf, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from skcxr.export import TOLERANCE, to_onnx

    X, _ = data
    target = brighter(X[:30])
    with pytest.warns(UserWarning, match="reference="):  # plain AdaBN: a larger change
        adapted = adapt_batchnorm(clf, target)
    card = to_onnx(adapted, tmp_path / "adapted.onnx")
    prep = adapted.preprocessing_
    source = check_images(target)
    images = np.stack([prep.decode(source, i)[0].numpy() for i in range(len(source))])
    session = ort.InferenceSession(str(tmp_path / "adapted.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images[..., None]})[0]
    assert np.abs(got - adapted.predict_proba(images)).max() <= TOLERANCE
    assert np.abs(got - clf.predict_proba(images)).max() > 10 * TOLERANCE
    assert card["weights"]["adaptations"][0]["method"] == "batchnorm"


def test_adapt_batchnorm_refuses_what_it_cannot_adapt(data, tiny_fe):
    X, y = data
    with pytest.raises(TypeError, match="holds none"):
        adapt_batchnorm(LogisticRegression().fit(np.eye(4), [0, 1, 0, 1]), X)
    fe = FeatureExtractorTransformer(**tiny_fe).fit(X)
    with pytest.raises(ValueError, match="at least 2"):
        adapt_batchnorm(fe, X[:1])
    with pytest.raises(FileNotFoundError):
        adapt_batchnorm(fe, ["missing.png"] * 3)


# ----------------------------------------------------------------------- prior shift

def synthetic(prior, n, rng, d=1.5, shift_negatives=0.0):
    """Binormal scores (class 1 centred at d) and the posteriors at a uniform prior."""
    y = (rng.random_sample(n) < prior).astype(int)
    x = rng.normal(0, 1, n) + d * y + shift_negatives * (1 - y)
    lr = norm.pdf(x, d, 1) / norm.pdf(x, 0, 1)
    p1 = lr / (1 + lr)  # calibrated at source prior 0.5
    return np.stack([1 - p1, p1], 1), y


def test_prior_correction_recovers_a_known_prevalence():
    rng = np.random.RandomState(0)
    source_p, source_y = synthetic(0.5, 2000, rng)
    target_p, target_y = synthetic(0.2, 3000, rng)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorShiftWarning)
        est = estimate_prior(target_p, 0.5, source_proba=source_p, source_y=source_y)
    assert est.converged and est.assumption_holds
    assert est.prior[1] == pytest.approx(target_y.mean(), abs=0.02)
    # Bayes' rule: the adjusted posteriors are calibrated at the target prior (they are
    # the exact posteriors of the generating model there)
    adjusted = adjust_to_prior(target_p, 0.5, 0.2)
    lr = target_p[:, 1] / target_p[:, 0]
    np.testing.assert_allclose(adjusted[:, 1], lr * 0.25 / (1 + lr * 0.25))
    assert adjusted[:, 1].mean() == pytest.approx(0.2, abs=0.02)
    # accuracy at the target prior improves
    assert ((adjusted[:, 1] > 0.5) == target_y).mean() > ((target_p[:, 1] > 0.5) ==
                                                          target_y).mean()


def test_the_em_warning_fires_on_a_concept_shift():
    rng = np.random.RandomState(1)
    source_p, source_y = synthetic(0.5, 2000, rng)
    # the negatives look more like positives at the target (Kermany's test NORMAL images):
    # p(x | y) changed, not only p(y); EM then over-estimates the positives badly
    target_p, target_y = synthetic(0.4, 3000, rng, shift_negatives=1.0)
    with pytest.warns(PriorShiftWarning, match="not a mixture"):
        est = estimate_prior(target_p, 0.5, source_proba=source_p, source_y=source_y)
    assert est.assumption_holds is False and est.prior[1] > target_y.mean() + 0.2
    with pytest.warns(PriorShiftWarning, match="cannot check"):
        estimate_prior(target_p, 0.5)


def test_prior_adjusted_classifier_and_training_prior(clf, data):
    from sklearn.frozen import FrozenEstimator

    X, y = data
    # class_weight="balanced": the loss weighs both classes equally -> uniform prior
    np.testing.assert_allclose(training_prior(clf), [0.5, 0.5], atol=1e-6)
    model = PriorAdjustedClassifier(FrozenEstimator(clf), target_prior=0.8).fit(X, y)
    got = model.predict_proba(X)
    np.testing.assert_allclose(got, adjust_to_prior(clf.predict_proba(X), 0.5, 0.8),
                               rtol=1e-6)
    assert (model.predict(X) == model.classes_[got.argmax(1)]).all()
    keep = PriorAdjustedClassifier(FrozenEstimator(clf), target_prior=0.8,
                                   decision="keep").fit(X, y)
    np.testing.assert_array_equal(keep.predict(X), clf.predict(X))
    with pytest.raises(ValueError, match="target_prior"):
        PriorAdjustedClassifier(FrozenEstimator(clf), target_prior=1.5).fit(X, y)


# ----------------------------------------------------------------------- per-site scaling

def test_site_standard_scaler_uses_each_sites_statistics_in_a_pipeline():
    rng = np.random.RandomState(0)
    n = 200
    sites = np.repeat(["a", "b"], n // 2)
    y = rng.randint(0, 2, n)
    X = rng.normal(0, 1, (n, 3)) + y[:, None]
    X[sites == "b"] = X[sites == "b"] * 3 + 10  # site b: another scale and offset
    Xt, yt = rng.normal(0, 1, (60, 3)) + (yt := rng.randint(0, 2, 60))[:, None], yt
    Xt = Xt * 0.5 - 4  # an unseen site
    scaler = SiteStandardScaler().fit(X, sites=sites)
    for s in "ab":
        z = scaler.transform(X[sites == s], sites=sites[sites == s])
        np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    z = scaler.transform(Xt, sites=np.array(["new"] * 60))  # its own statistics
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(SiteStandardScaler(), LogisticRegression())
        pipe.fit(X, y, sites=sites)
        accuracy = (pipe.predict(Xt, sites=np.array(["new"] * 60)) == yt).mean()
    assert accuracy > 0.7
    plain = make_pipeline(SiteStandardScaler(), LogisticRegression()).fit(X, y)
    assert (plain.predict(Xt) == yt).mean() < accuracy
    with pytest.raises(ValueError, match="min_rows"):
        scaler.transform(Xt[:5], sites=np.array(["new"] * 5))


# ----------------------------------------------------------------------- ensembles

def test_a_soft_voting_ensemble_in_cv_a_grid_adaptation_and_export(data, tiny_clf, tmp_path):
    from sklearn.ensemble import VotingClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate

    from skcxr.export import to_onnx

    X, y = data
    a = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2)
    b = PretrainedCNNClassifier(**tiny_clf, n_trainable_layers=2, intensity="equalize")
    ensemble = VotingClassifier([("a", a), ("b", b)], voting="soft")
    cv = cross_validate(ensemble, X, y, cv=StratifiedKFold(3), scoring="roc_auc",
                        return_estimator=True)
    assert len(cv["test_score"]) == 3 and np.isfinite(cv["test_score"]).all()
    fitted = cv["estimator"][0]
    members = [m.predict_proba(X) for m in fitted.estimators_]
    np.testing.assert_allclose(fitted.predict_proba(X), np.mean(members, axis=0), rtol=1e-6)
    grid = GridSearchCV(ensemble, {"a__n_trainable_layers": [0, 2]}, cv=StratifiedKFold(2),
                        scoring="roc_auc").fit(X, y)
    assert grid.best_params_["a__n_trainable_layers"] in (0, 2)
    target = brighter(X[:30])
    adapted = adapt_batchnorm(grid.best_estimator_, target, reference=X)
    assert all(m.provenance_["adaptations"][0]["n_images"] == 30 for m in adapted.estimators_)
    assert all("adaptations" not in m.provenance_ for m in grid.best_estimator_.estimators_)
    with pytest.raises(TypeError, match="export each member"):
        to_onnx(adapted, tmp_path / "ensemble.onnx")
    to_onnx(adapted.estimators_[0], tmp_path / "member.onnx")  # one member at a time

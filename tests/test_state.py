"""Process state: every store is named, bounded and emptied by clear_cache; fits do not
depend on what ran before or beside them in the process; forked children work."""

import importlib.util
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from skcxr import (
    FeatureExtractorTransformer,
    PretrainedCNNClassifier,
    config_context,
    get_config,
    set_config,
)
from skcxr.cache import cache_info, clear_cache

ENGINES = ["torch", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="no openvino"))]


def _rows(sample, a, b, n):
    idx = np.r_[a:a + n, 150 + b:150 + b + n]
    return sample.data[idx], sample.target[idx]


def test_clear_cache_empties_every_store(sample, tmp_path):
    """Fill every kind of store (features, decoded images, backbones, plans, OpenVINO
    conversions and compiled models, network and file digests, cache roots, warnings,
    machine facts), then clear_cache(): cache_info() shows every store empty."""
    import torch

    X, y = _rows(sample, 0, 0, 12)
    tiny = dict(backbone="test_efficientnet", image_size=48, random_state=0, max_epochs=1)
    path = tmp_path / "w.pth"
    from skcxr import load_backbone

    torch.save(load_backbone("test_efficientnet", None, random_state=0).module.state_dict(),
               path)
    with config_context(whole_network_min_images=1, openvino_min_images=1):
        # engine="auto" in OpenVINO where installed: a prefix converted, a network compiled
        clf = PretrainedCNNClassifier(**tiny, weights=str(path), n_trainable_layers=2,
                                      memory=str(tmp_path / "m")).fit(X, y)
        clf.predict(X)  # a whole network compiled (OpenVINO where installed)
    PretrainedCNNClassifier(**tiny, weights=None, augment="flip").fit(X, y)  # decoded images
    from skcxr.protocol import fit_rows

    with pytest.warns(UserWarning, match="fewer than 5 positive"):  # a warning given once
        fit_rows(np.eye(3)[[0, 1, 2] * 4], seed=0)
    info = cache_info()
    filled = {name for name, store in info.items() if store["entries"]}
    expected = {"features", "decoded", "backbones", "plans", "file_digests", "cache_roots",
                "warnings", "machine"}
    if importlib.util.find_spec("openvino") is not None:
        expected |= {"conversions", "compiled", "network_digests"}
    assert expected <= filled
    for name, store in info.items():  # each store says its bound, and keeps to it
        bound = store.get("max_entries", store.get("budget"))
        assert bound is not None, name
        assert (store["bytes"] if "budget" in store else store["entries"]) <= bound
    clear_cache()
    for name, store in cache_info().items():
        assert store["entries"] == 0, name
        assert store.get("bytes", 0) == 0 and store["hits"] == store["misses"] == 0, name
    # what a fitted estimator needs is rebuilt on demand
    assert clf.predict(X).shape == (len(X),)


def _fit_predict(args):
    c, X, y, engine, seed = args
    clf = PretrainedCNNClassifier(
        "test_efficientnet", weights=None, image_size=48, n_trainable_layers=c, max_epochs=3,
        batch_size=8, dropout=0.3, random_state=seed, engine=engine,
        augment="flip" if c == 1 else None)
    return clf.fit(X, y).predict_proba(X)


@pytest.mark.parametrize("engine", ENGINES)
def test_concurrent_fits_of_distinct_estimators_equal_sequential_ones(sample, engine):
    """Two different estimators on different data in two threads (one with dropout and
    augmentation, both drawing from torch's one global RNG): exactly the sequential result."""
    jobs = [(2, *_rows(sample, 0, 0, 12), engine, 0), (1, *_rows(sample, 20, 20, 30), engine, 5)]
    sequential = [_fit_predict(job) for job in jobs]
    clear_cache()
    out = [None, None]
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, _fit_predict(jobs[i])))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(out, sequential):
        np.testing.assert_array_equal(got, want)


_FRESH = """
import sys, numpy as np
from skcxr import PretrainedCNNClassifier, load_sample_cxr
s = load_sample_cxr()
idx = np.r_[0:40, 150:190]
clf = PretrainedCNNClassifier("test_efficientnet", weights=None, image_size=48,
                              n_trainable_layers=0, max_epochs=3, random_state=0,
                              engine=sys.argv[1])
np.save(sys.argv[2], clf.fit(s.data[idx], s.target[idx]).predict_proba(s.data[idx]))
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fit_after_another_fit_equals_the_same_fit_in_a_fresh_process(sample, engine,
                                                                         tmp_path):
    """A c=0 fit after a c=2 fit in the same process used to see the c=2 fit's trained
    layers through OpenVINO's kept conversion (it shared the training network's tensors):
    a grid candidate's score depended on the candidates before it."""
    X, y = _rows(sample, 0, 0, 40)
    kw = dict(backbone="test_efficientnet", weights=None, image_size=48, max_epochs=3,
              random_state=0, engine=engine)
    PretrainedCNNClassifier(**kw, n_trainable_layers=2, lr=0.05).fit(X, y)
    after = PretrainedCNNClassifier(**kw, n_trainable_layers=0).fit(X, y).predict_proba(X)
    out = tmp_path / "fresh.npy"
    subprocess.run([sys.executable, "-c", _FRESH, engine, str(out)], check=True)
    np.testing.assert_array_equal(after, np.load(out))


def _transform(fe_chunk):
    fe, chunk = fe_chunk
    return fe.transform(chunk)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fork_started_pool_after_use_works(sample, engine):
    """Used in the parent (OpenVINO's and OpenMP's thread pools started), then in the workers
    of a fork-started multiprocessing pool, Linux's default: the workers compute (on one
    thread each) instead of waiting forever for threads that stayed in the parent."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    X = sample.data[:16]
    fe = FeatureExtractorTransformer("test_efficientnet", weights=None, image_size=48,
                                     random_state=0, engine=engine, cache=False).fit(X)
    expected = fe.transform(X)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(_transform, [(fe, X[:8]), (fe, X[8:])]).get(timeout=60)
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5, atol=1e-6)


_FORK_WHILE_TRAINING = """
import os, sys, threading, time
import numpy as np
from skcxr import PretrainedCNNClassifier, load_sample_cxr
s = load_sample_cxr()
idx = np.r_[0:6, 150:156]
X, y = s.data[idx], s.target[idx]
kw = dict(backbone="test_efficientnet", weights=None, image_size=48, max_epochs=1,
          random_state=0, engine="torch")
inside, release = threading.Event(), threading.Event()

def blocking_augment(image):  # stops its fit inside the training loop (torch's RNG lock held)
    inside.set()
    release.wait(60)
    return image

t = threading.Thread(target=lambda: PretrainedCNNClassifier(
    **kw, augment=blocking_augment).fit(X, y))
t.start()
assert inside.wait(60)
pid = os.fork()
if pid == 0:  # the child
    code = 1
    try:
        PretrainedCNNClassifier(**kw).fit(X, y).predict(X)
        code = 0
    finally:
        os._exit(code)
for _ in range(600):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    status = None
release.set()
t.join()
print("child:", "hung" if status is None else os.waitstatus_to_exitcode(status))
"""


def test_a_child_forked_while_another_thread_trains_can_fit():
    """Locks another thread holds at the fork (a fit's RNG section) would stay locked
    forever in the child: the child gets fresh ones.

    In a fresh interpreter: torch refuses autograd in a forked child once the parent's
    autograd engine has started its device threads, which it does at the process's first
    backward if a ``torch.export`` (an ONNX export) came before it. That is torch's rule
    (pytorch wiki, "Autograd and Fork"), and earlier tests in the same session decide it."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    run = subprocess.run([sys.executable, "-c", _FORK_WHILE_TRAINING], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "child: 0", run.stderr[-3000:]


def test_settings_are_validated_and_scoped():
    assert get_config()["whole_network_min_images"] == 2048
    with config_context(cache_chunk=3):
        assert get_config()["cache_chunk"] == 3
        seen = []
        t = threading.Thread(target=lambda: seen.append(get_config()["cache_chunk"]))
        t.start()
        t.join()
        assert seen == [512]  # a context is the calling thread's
    assert get_config()["cache_chunk"] == 512
    with pytest.raises(TypeError, match="unknown setting 'chunk'"):
        set_config(chunk=3)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="int >= 1"):
            set_config(claim_chunk=bad)
    set_config(claim_chunk=8)
    try:
        assert get_config()["claim_chunk"] == 8
    finally:
        set_config(claim_chunk=64)


def test_per_key_locks_exist_only_while_used():
    from skcxr._state import KeyedLocks

    locks = KeyedLocks()
    with locks.hold("a"), locks.hold("b"), locks.hold("a"):  # reentrant
        assert len(locks) == 2
    assert len(locks) == 0


def test_no_test_touches_a_private_global():
    """Process state is reached through cache_info / clear_cache / config_context: no test
    reads or writes a private module-level store (the state module itself aside)."""
    import re

    pattern = re.compile(r"\b_[a-z]+\._[A-Z][A-Z_]+\b|\b_[a-z]+\.[A-Z][A-Z_]+\b"
                         r"|monkeypatch\.setattr\(_[a-z]")
    hits = [f"{p.name}:{i}: {line.strip()}"
            for p in sorted(Path(__file__).parent.glob("test_*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) and "re.compile" not in line and "pattern" not in line]
    assert hits == []

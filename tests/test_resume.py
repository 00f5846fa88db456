"""Resumable fits (``memory=``): a fit killed mid-epoch resumes from its last completed epoch
and ends where the uninterrupted fit ends; a finished fit is not trained again; stale,
foreign or corrupt checkpoints are ignored."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from skcxr import PretrainedCNNClassifier, config_context
from skcxr._training import WeightedNet
from skcxr.cache import clear_cache

#: 60 sample images, 54 training rows: 4 batches per epoch (16, 16, 16, 6). A backbone layer that
#: unfreezes after the first epoch, a cosine schedule, early stopping: every piece of state
#: a resumed fit must restore
PARAMS = dict(backbone="test_efficientnet", weights=None, image_size=48, random_state=0,
              precision="fp32", engine="torch", batch_size=16, max_epochs=5,
              n_trainable_layers=2, freeze_epochs=1, lr_scheduler="cosine", dropout=0.3,
              patience=10)
STEPS_PER_EPOCH = 4


@pytest.fixture(autouse=True)
def every_epoch():
    """Save every epoch's state (by default at most every 10 s)."""
    with config_context(checkpoint_interval=0):
        yield


@pytest.fixture
def steps(monkeypatch):
    """Counts training steps; ``steps.interrupt_at = k`` raises KeyboardInterrupt (Ctrl-C)
    in step k."""
    class Counter:
        n = 0
        interrupt_at = None

    counter = Counter()
    original = WeightedNet.train_step

    def train_step(self, batch, **kwargs):
        counter.n += 1
        if counter.n == counter.interrupt_at:
            raise KeyboardInterrupt
        return original(self, batch, **kwargs)

    monkeypatch.setattr(WeightedNet, "train_step", train_step)
    return counter


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted fit (no memory: no checkpoints), from frozen-prefix outputs computed
    here (an earlier test's, cached in this process, may come from another thread count:
    equal to float rounding, not to the bit)."""
    X, y = data
    clear_cache()
    return PretrainedCNNClassifier(**PARAMS).fit(X, y)


def assert_same_fit(clf, ref):
    cols = ["train_loss", "valid_loss", "valid_auc", "lr", "n_trainable_layers"]
    np.testing.assert_array_equal(clf.history_[cols].to_numpy(), ref.history_[cols].to_numpy())
    assert clf.best_epoch_ == ref.best_epoch_
    for (k, a), b in zip(clf.module_.state_dict().items(), ref.module_.state_dict().values()):
        assert torch.equal(a, b), k


def interrupt(clf, X, y, steps, at: int) -> None:
    """Fit ``clf`` with a Ctrl-C in training step ``at``; then let steps run again."""
    steps.n, steps.interrupt_at = 0, at
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X, y)
    steps.n, steps.interrupt_at = 0, None


def checkpoint_files(root) -> list[Path]:
    return sorted(Path(root, "skcxr-fits").glob("*.entry"))


def test_a_fit_killed_mid_epoch_resumes_and_equals_the_uninterrupted_one(data, reference,
                                                                         tmp_path, steps):
    """SIGKILL in the second batch of epoch 3 (no cleanup can run); the rerun trains only
    epochs 3 to 5 and ends with the uninterrupted fit's weights, bit for bit."""
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from skcxr import PretrainedCNNClassifier, load_sample_cxr
        from skcxr._training import WeightedNet
        import skcxr, torch
        skcxr.set_config(checkpoint_interval=0)
        torch.set_num_threads({torch.get_num_threads()})  # this process's: the same sums
        sample = load_sample_cxr()
        idx = np.r_[0:30, 100:130]
        original, calls = WeightedNet.train_step, [0]
        def train_step(self, batch, **kwargs):
            calls[0] += 1
            if calls[0] == {2 * STEPS_PER_EPOCH + 2}:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch, **kwargs)
        WeightedNet.train_step = train_step
        PretrainedCNNClassifier(**{PARAMS!r}, memory={str(tmp_path)!r}).fit(
            sample.data[idx], sample.target[idx])
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert len(checkpoint_files(tmp_path)) == 1  # epoch 2's state
    X, y = data
    clf = PretrainedCNNClassifier(**PARAMS, memory=tmp_path).fit(X, y)
    assert steps.n == 3 * STEPS_PER_EPOCH  # epochs 3, 4, 5 only
    assert_same_fit(clf, reference)


def test_ctrl_c_keeps_the_estimator_and_the_rerun_resumes(data, reference, tmp_path, steps):
    X, y = data
    clf = PretrainedCNNClassifier(**PARAMS, memory=tmp_path)
    interrupt(clf, X, y, steps, at=3 * STEPS_PER_EPOCH + 1)  # first batch of epoch 4
    assert not hasattr(clf, "module_")
    clf.fit(X, y)
    assert steps.n == 2 * STEPS_PER_EPOCH
    assert_same_fit(clf, reference)


def test_a_finished_fit_and_a_grid_search_are_not_trained_again(data, tmp_path, steps):
    X, y = data
    params = {**PARAMS, "max_epochs": 2, "memory": tmp_path}
    first = PretrainedCNNClassifier(**params).fit(X, y)
    assert steps.n == 2 * STEPS_PER_EPOCH
    steps.n = 0
    again = PretrainedCNNClassifier(**params).fit(X, y)
    assert steps.n == 0
    assert_same_fit(again, first)
    np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
    # a grid search run again skips every fit it finished (3 folds x 2 candidates, and the refit)
    grid = {"lr": [1e-3, 3e-3]}
    search = GridSearchCV(PretrainedCNNClassifier(**params), grid, cv=3).fit(X, y)
    trained = steps.n
    assert trained > 0
    steps.n = 0
    rerun = GridSearchCV(PretrainedCNNClassifier(**params), grid, cv=3).fit(X, y)
    assert steps.n == 0
    np.testing.assert_array_equal(rerun.cv_results_["mean_test_score"],
                                  search.cv_results_["mean_test_score"])
    # a changed parameter, other data or another seed is another fit
    for changed, Xy in (({"lr": 2e-3}, (X, y)), ({"random_state": 1}, (X, y)),
                        ({}, (X[:-1], y[:-1]))):
        steps.n = 0
        PretrainedCNNClassifier(**{**params, **changed}).fit(*Xy)
        assert steps.n > 0, changed
    # verbose, memory and callbacks change nothing trained
    steps.n = 0
    PretrainedCNNClassifier(**{**params, "verbose": 1}).fit(X, y)
    assert steps.n == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_a_damaged_or_foreign_checkpoint_is_ignored(data, reference, tmp_path, steps, damage):
    """A checkpoint that does not verify (truncated, a flipped bit) or that belongs to
    another fit (copied over this one's) is never loaded: the fit trains from the start
    and equals the uninterrupted one."""
    X, y = data
    clf = PretrainedCNNClassifier(**PARAMS, memory=tmp_path)
    interrupt(clf, X, y, steps, at=2 * STEPS_PER_EPOCH + 1)
    (path,) = checkpoint_files(tmp_path)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        i = len(blob) - 1000
        path.write_bytes(blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1:])
    else:  # another fit's (finished) checkpoint under this fit's name
        other = tmp_path / "other"
        PretrainedCNNClassifier(**{**PARAMS, "lr": 2e-3, "max_epochs": 1},
                                memory=other).fit(X, y)
        (foreign,) = checkpoint_files(other)
        os.replace(foreign, path)
    steps.n = 0
    clf.fit(X, y)
    assert steps.n == 5 * STEPS_PER_EPOCH
    assert_same_fit(clf, reference)


def test_a_batch_schedule_resumes_exactly(data, tmp_path, steps):
    """One-cycle steps every batch: its position is restored with the rest."""
    X, y = data
    params = {**PARAMS, "lr_scheduler": "onecycle"}
    reference = PretrainedCNNClassifier(**params).fit(X, y)
    clf = PretrainedCNNClassifier(**params, memory=tmp_path)
    interrupt(clf, X, y, steps, at=2 * STEPS_PER_EPOCH + 3)
    clf.fit(X, y)
    assert steps.n == 3 * STEPS_PER_EPOCH
    assert_same_fit(clf, reference)

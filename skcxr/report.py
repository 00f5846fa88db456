"""One self-contained HTML report of a model's results: card, metrics with CIs, figures,
subgroups, top losses with Grad-CAM and the data-set check.

Everything is in the one file (figures as embedded PNG, styles inline, no script, no
external asset): it opens offline, can be mailed or attached to a paper's supplement, and
prints (figures scale to the page, tables wrap). From Python, :func:`write_report`; from a
shell, ``python -m skcxr report FOLDER`` (see :mod:`skcxr.cli`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluation import evaluate_predictions, subgroup_metrics
from .interpretation import ErrorAnalysis

__all__ = [
    "model_card",
    "write_report",
]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:0 auto;
padding:1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;margin-top:2rem}
h3{font-size:1rem;margin-bottom:.2rem}
td.num{overflow-wrap:normal}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0;max-width:100%;
display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:.15rem .4rem;text-align:right;overflow-wrap:anywhere;
white-space:pre-line}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
tr.unreadable td{color:#999}
figure{margin:1rem 0;break-inside:avoid}figure img{max-width:100%;height:auto}
figcaption{font-size:.8rem;color:#555}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.75rem;background:#f8f8f8;
padding:.5rem}
.note{font-size:.85rem;color:#555}
@media print{body{max-width:none}h2{break-after:avoid}}
"""


def _skcxr_part(estimator):
    """The skcxr estimator inside ``estimator`` (itself, a pipeline step, a search's best)."""
    from ._classifier import PretrainedCNNClassifier
    from ._features import FeatureExtractorTransformer

    seen = estimator
    for _ in range(8):
        if isinstance(seen, (PretrainedCNNClassifier, FeatureExtractorTransformer)):
            return seen
        if hasattr(seen, "best_estimator_"):
            seen = seen.best_estimator_
        elif hasattr(seen, "steps"):
            parts = [s for _, s in seen.steps if _skcxr_part(s) is not None]
            if not parts:
                return None
            seen = parts[0]
        elif hasattr(seen, "estimator") and hasattr(seen, "calibrated_classifiers_"):
            seen = seen.estimator
        else:
            return None
    return None


def model_card(estimator, *, scores: dict | None = None) -> dict:
    """Describe what a reader needs to know about a fitted model: provenance, protocol, training.

    The same fields as :func:`skcxr.export.to_onnx`'s card where they apply (estimator,
    backbone and weights, parameters, precision, calibration and thresholds, training rows
    and epochs, data fingerprint, library versions), without the ONNX file's.

    Parameters
    ----------
    estimator : fitted estimator
        A skcxr estimator, a pipeline or search holding one, or an ensemble of them (each
        member gets its card under ``"members"``).
    scores : dict, optional
        Validation scores to record (e.g. CV results).

    Returns
    -------
    dict
        The card, JSON-serialisable.
    """
    from .export import _jsonable, _versions

    part = _skcxr_part(estimator)
    card = {"estimator": _describe_steps(estimator), "scores": _jsonable(scores or {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions()}
    members = getattr(estimator, "named_estimators_", None)
    if part is None and members is not None:  # an ensemble (VotingClassifier): each member
        card["members"] = {name: {k: v for k, v in model_card(m).items()
                                  if k not in ("created", "versions", "scores")}
                           for name, m in members.items()}
        return card
    if part is None:
        return card
    card["skcxr_step"] = type(part).__name__
    card["backbone"] = (part.backbone if isinstance(part.backbone, str)
                        else type(part.backbone).__name__)
    card["weights"] = _jsonable(getattr(part, "provenance_", {}))
    card["params"] = _jsonable(part.get_params(deep=False))
    card["precision"] = getattr(part, "precision_", None)
    card["engine"] = getattr(part, "engine_", None)
    if hasattr(part, "history_"):
        card["calibration"] = {"temperature": _jsonable(part.temperature_)}
        card["thresholds"] = _jsonable(part.thresholds_)
        card["training"] = {
            "n_train_samples": part.n_train_samples_,
            "n_valid_samples": part.n_valid_samples_,
            "best_epoch": _jsonable(part.best_epoch_),
            "epochs_run": len(part.history_),
            "trained_layers": len(part.trained_layers_),
            "class_weight": _jsonable(part.class_weight_),
        }
        card["data_fingerprint"] = part.data_fingerprint_
    return card


def _describe_steps(estimator) -> str:
    if hasattr(estimator, "steps"):
        return " -> ".join(type(s).__name__ for _, s in estimator.steps)
    return type(estimator).__name__


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
            f'{_png(fig)}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _table(frame: pd.DataFrame, *, floatfmt="{:.3f}", classes=None) -> str:
    shown = frame.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else floatfmt.format(v))
    rows = []
    for k, (_, r) in enumerate(shown.iterrows()):
        cls = f' class="{classes[k]}"' if classes is not None and classes[k] else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(v) for v in r) + "</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(value) -> str:
    """A table cell; numbers and intervals never break inside a number."""
    text = str(value)
    num = ' class="num"' if text and _NUMERIC.fullmatch(text) else ""
    return f"<td{num}>{html.escape(text)}</td>"


_NUMERIC = re.compile(r"[-+0-9.eE\[\], \nnaif]+")


def _with_ci(table: pd.DataFrame) -> pd.DataFrame:
    """estimate [low, high] as one column, per target and metric."""
    out = table[["target", "metric"]].copy()
    out["estimate [95% CI]"] = [
        f"{e:.3f}" + ("" if pd.isna(lo) else f" [{lo:.3f}, {hi:.3f}]")
        for e, lo, hi in zip(table.estimate, table.ci_low, table.ci_high)]
    out["n"] = table["n"].astype(int)
    out["n positive"] = table["n_positive"].map(lambda v: "" if pd.isna(v) else int(v))
    return out


#: the wide metrics tables of a report with many targets: threshold-free, then decisions
_WIDE_GROUPS = (("Ranking and calibration", ("roc_auc", "pr_auc", "ece")),
                ("At the decision rule", ("sensitivity", "specificity", "ppv", "npv",
                                          "balanced_accuracy", "f1")))


def _subgroup_view(sub: pd.DataFrame):
    """Subgroup rows as one row per (variable, subgroup, target), a column per metric
    (estimate over its interval), and whether each row is readable."""
    keys = ["variable", "subgroup", "target"]
    cells = sub.assign(cell=[
        f"{e:.3f}" + ("" if pd.isna(lo) else f"\n[{lo:.3f}, {hi:.3f}]")
        for e, lo, hi in zip(sub.estimate, sub.ci_low, sub.ci_high)])
    order = list(dict.fromkeys(map(tuple, sub[keys].to_numpy())))
    wide = cells.pivot(index=keys, columns="metric", values="cell")
    wide = wide.reindex(index=pd.MultiIndex.from_tuples(order, names=keys),
                        columns=list(dict.fromkeys(sub.metric)))
    meta = cells.groupby(keys, sort=False).agg(
        n=("n", "first"), n_positive=("n_positive", "first"), readable=("readable", "all"),
        note=("note", "first")).reindex(wide.index)
    view = wide.join(meta[["n", "n_positive", "note"]]).reset_index()
    view["n_positive"] = view["n_positive"].map(lambda v: "" if pd.isna(v) else int(v))
    return view.rename(columns={"n_positive": "n positive"}), meta["readable"].tolist()


def _metrics_html(table: pd.DataFrame) -> str:
    """The metrics: one row per (target, metric) for one or two targets; with more, one row
    per target and a column per metric (estimate over its interval), in two tables that fit
    a printed page."""
    targets = [t for t in dict.fromkeys(table.target) if t != "overall"]
    if len(targets) <= 2:
        return _table(_with_ci(table))
    per_target = table[table.target != "overall"]
    cells = per_target.assign(cell=[
        f"{e:.3f}" + ("" if pd.isna(lo) else f"\n[{lo:.3f}, {hi:.3f}]")
        for e, lo, hi in zip(per_target.estimate, per_target.ci_low, per_target.ci_high)])
    wide = cells.pivot(index="target", columns="metric", values="cell").reindex(targets)
    counts = per_target.groupby("target", sort=False)[["n", "n_positive"]].first()
    counts = counts.reindex(targets).astype(int).rename(columns={"n_positive": "n positive"})
    out = ['<p class="note">One row per target: each metric\'s estimate over its 95% '
           "interval.</p>"]
    for title, names in _WIDE_GROUPS:
        shown = [m for m in names if m in wide.columns]
        if shown:
            frame = wide[shown].join(counts) if title.startswith("Ranking") else wide[shown]
            out.append(f"<h3>{title}</h3>" + _table(frame.reset_index()))
    overall = table[table.target == "overall"]
    if len(overall):
        out.append("<h3>Overall</h3>" + _table(_with_ci(overall)))
    return "".join(out)


def write_report(path, estimator, X, y, *, y_proba=None, y_pred=None, groups=None,
                 metadata=None, labels=None, title: str | None = None,
                 description: str = "", scores: dict | None = None, check=None,
                 top_k: int = 9, gradcam: bool = True, n_resamples: int = 1000,
                 random_state=0) -> Path:
    """Write one self-contained HTML report of a fitted model on ``X, y``.

    Parameters
    ----------
    path : str or Path
        The ``.html`` file to write.
    estimator : fitted classifier
        A :class:`~skcxr.PretrainedCNNClassifier`, a pipeline or search holding skcxr
        steps, or any scikit-learn classifier of image paths. Its card opens the report.
    X : paths or array of images
        The evaluation images.
    y : array-like
        Their labels (or multi-label 0/1 matrix).
    y_proba, y_pred : array-like, optional
        Predictions to report instead of ``estimator``'s on ``X``: e.g. out-of-fold ones
        from ``cross_val_predict`` of the protocol whose refit ``estimator`` is (the card
        then describes the refit model, the numbers the cross-validation). Grad-CAM is
        drawn with ``estimator`` either way.
    groups : array-like, optional
        Patient ids (intervals resample patients; shown beside the top losses).
    metadata : DataFrame, optional
        One row per image of subgroup columns (sex, age, view, site): a subgroup table.
    labels : sequence of str, optional
        Names of a multi-label target's columns.
    title, description : str
        The report's heading and an introductory paragraph (the protocol, in words).
    scores : dict, optional
        Validation scores for the card (e.g. ``{"cv_roc_auc_mean": 0.99}``).
    check : DatasetCheck, optional
        A :func:`skcxr.datacheck.check_dataset` result to include.
    top_k : int, default=9
        Top losses shown (worst images per label, for multi-label).
    gradcam : bool, default=True
        Grad-CAM overlays on the top losses (when the model is one
        :func:`skcxr.explain.gradcam` explains; otherwise the report says why not).
    n_resamples : int, default=1000
        Bootstrap resamples of every interval.
    random_state : int, RandomState instance or None, default=0
        Seeds the bootstrap resamples (an int: the same intervals every time).

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from sklearn.metrics import ConfusionMatrixDisplay

    from .plotting import (
        HistoryDisplay,
        PrecisionRecallCIDisplay,
        ReliabilityDisplay,
        RocCurveCIDisplay,
        TopLossesDisplay,
    )

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path should end in .html; got {str(path)!r}.")
    y = np.asarray(y)
    if (y_proba is None) != (y_pred is None):
        raise ValueError("pass both y_proba and y_pred (predictions to report), or neither "
                         "(the estimator predicts X).")
    given = y_proba is not None
    if not given:
        y_proba = np.asarray(estimator.predict_proba(X))
        y_pred = np.asarray(estimator.predict(X))
    y_proba, y_pred = np.asarray(y_proba), np.asarray(y_pred)
    if len(y_proba) != len(y):
        raise ValueError(f"{len(y_proba)} predictions for {len(y)} labels.")
    classes = None if y.ndim == 2 else np.asarray(getattr(estimator, "classes_",
                                                          np.unique(y)))
    kw = dict(groups=groups, n_resamples=n_resamples, random_state=random_state)
    metrics = evaluate_predictions(y, y_proba, y_pred, classes=classes, labels=labels, **kw)
    metrics.attrs["decision"] = ("given with the predictions" if given
                                 else "the estimator's predict")
    card = model_card(estimator, scores=scores)
    task = metrics.attrs["task"]
    source_note = ("out-of-fold predictions given to the report" if given
                   else "the estimator's predictions on these images")
    parts = [f"<h1>{html.escape(title or 'skcxr model report')}</h1>"]
    if description:
        parts.append(f"<p>{html.escape(description)}</p>")
    parts.append(f'<p class="note">{len(y)} images ({task}); numbers from {source_note}; '
                 f"decisions: {html.escape(str(metrics.attrs['decision']))}; 95% intervals "
                 f"from {n_resamples} stratified bootstrap resamples"
                 f"{' of patients' if groups is not None else ''}.</p>")

    parts.append("<h2>Model card</h2>" + _card_html(card))
    parts.append("<h2>Metrics</h2>" + _metrics_html(metrics))

    parts.append("<h2>Figures</h2>")
    if task == "binary":
        score = y_proba[:, -1] if y_proba.ndim == 2 else y_proba
        pos = classes[-1]
        for display in (RocCurveCIDisplay, PrecisionRecallCIDisplay):
            d = display.from_predictions(y, score, pos_label=pos, groups=groups,
                                         name=str(pos), n_resamples=min(n_resamples, 200),
                                         random_state=random_state).plot()
            parts.append(_figure(d.figure_, f"{d._metric.replace('_', ' ').upper()} of "
                                 f"{pos} with its 95% bootstrap band"))
    if task != "multilabel":
        codes = np.searchsorted(classes, y) if _is_sorted(classes) else np.array(
            [list(classes).index(v) for v in y])
        d = ReliabilityDisplay.from_predictions(codes, y_proba).plot()
        parts.append(_figure(d.figure_, "Reliability diagram (ten bins)"))
        cm = ConfusionMatrixDisplay.from_predictions(y, y_pred, labels=classes)
        cm.figure_.set_size_inches(4, 3.6)
        parts.append(_figure(cm.figure_, "Confusion matrix at the decision rule"))
    else:
        d = ReliabilityDisplay.from_predictions(y, y_proba).plot()
        parts.append(_figure(d.figure_, "Reliability diagram, every label pooled"))
    if getattr(_skcxr_part(estimator), "history_", None) is not None:
        d = HistoryDisplay.from_estimator(_skcxr_part(estimator)).plot()
        parts.append(_figure(d.figure_, "Training history of the reported model"))

    if metadata is not None:
        sub = subgroup_metrics(y, y_proba, y_pred, subgroups=metadata, classes=classes,
                               labels=labels, **kw)
        shown = sub[sub.target != "overall"] if task != "multilabel" else sub
        view, readable = _subgroup_view(shown)
        parts.append("<h2>Subgroups</h2><p class=\"note\">One row per subgroup and target. "
                     "Grey rows are too small to read (the note says why): their estimate "
                     "is shown, no interval.</p>"
                     + _table(view, classes=["" if r else "unreadable" for r in readable]))

    parts.append("<h2>Errors</h2>" + _errors_html(
        estimator, X, y, y_proba, y_pred, classes, labels, groups, top_k,
        gradcam and not given, TopLossesDisplay))
    if check is not None:
        parts.append("<h2>Data-set check</h2>" + _check_html(check))
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title or 'skcxr model report')}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _is_sorted(classes) -> bool:
    try:
        return bool(np.all(classes[:-1] < classes[1:]))
    except TypeError:
        return False


def _card_html(card: dict) -> str:
    rows = []
    for key in ("estimator", "skcxr_step", "backbone", "precision", "engine",
                "data_fingerprint", "created"):
        if card.get(key) is not None:
            rows.append((key, str(card[key])))
    weights = card.get("weights") or {}
    for key in ("weights_origin", "weights_sha256", "adaptations"):
        if key in weights:
            rows.append((key.replace("_", " "), str(weights[key])))
    for key, value in (card.get("training") or {}).items():
        rows.append((key.replace("_", " "), str(value)))
    for key, value in (card.get("scores") or {}).items():
        rows.append((key, f"{value:.4f}" if isinstance(value, float) else str(value)))
    for name, member in (card.get("members") or {}).items():
        train = member.get("training") or {}
        params = member.get("params") or {}
        what = [str(member.get("estimator")), f"backbone {member.get('backbone')}"]
        what += [f"{k} {params[k]}" for k in ("image_size", "n_trainable_layers", "intensity",
                                               "augment") if params.get(k) is not None]
        if train:
            what.append(f"{train['n_train_samples']} training rows, kept epoch "
                        f"{train['best_epoch']} of {train['epochs_run']}")
        rows.append((f"member {name}", ", ".join(what)))
    out = _table(pd.DataFrame(rows, columns=["field", "value"]))
    extra = {k: card[k] for k in ("params", "calibration", "thresholds", "members",
                                  "versions") if k in card}
    return out + f"<details><summary>parameters and versions</summary><pre>" \
        f"{html.escape(json.dumps(extra, indent=1, default=str))}</pre></details>"


def _errors_html(estimator, X, y, proba, pred, classes, labels, groups, k, gradcam,
                 TopLossesDisplay) -> str:
    errors = ErrorAnalysis.from_predictions(y, proba, pred, classes=classes, labels=labels,
                                            X=X, groups=groups)
    if errors.task_ == "multilabel":
        return ("<p>The images with the largest loss for each label.</p>"
                + _table(errors.worst_per_label(max(1, min(k, 3)))))
    out = []
    confused = errors.most_confused()
    out.append("<p>Most confused (true, predicted) pairs:</p>" + _table(confused))
    note = ""
    display = None
    if gradcam:
        try:
            display = TopLossesDisplay.from_estimator(estimator, X, y, k=k, groups=groups)
        except (TypeError, ValueError, ImportError) as exc:
            note = f"Grad-CAM not drawn: {exc}"
    if display is None:
        display = TopLossesDisplay._from_errors(errors, X, k, None)
        if not gradcam and not note:
            note = "Grad-CAM not drawn (the predictions were given, not made here)."
    out.append(_figure(display.plot().figure_, f"The {len(display.table)} images with the "
                       "largest loss" + (", Grad-CAM of the true class"
                                         if display.heatmaps is not None else "")))
    if note:
        out.append(f'<p class="note">{html.escape(note)}</p>')
    shown = display.table.drop(columns=["row"])
    if "path" in shown:
        shown = shown.assign(path=shown["path"].map(_short_path))
    out.append(_table(shown))
    return "".join(out)


def _short_path(path) -> str:
    """The last three parts of a path (split/class/file): what identifies an image to a
    reader, without the machine's folders."""
    return "/".join(str(path).replace("\\", "/").split("/")[-3:])


def _check_html(check) -> str:
    out = [_table(check.summary())]
    d = check.duplicates
    if len(d):
        cols = ["kind", "similarity", "path_i", "path_j", "split_i", "split_j", "label_i",
                "label_j"]
        shown = d[cols].head(30).copy()
        for c in ("path_i", "path_j"):
            shown[c] = shown[c].map(_short_path)
        out.append(f"<p>Duplicate pairs (first 30 of {len(d)}):</p>" + _table(shown))
    if len(check.patient_leaks):
        out.append(f"<p>Patients in more than one split (first 30 of "
                   f"{len(check.patient_leaks)}):</p>" + _table(check.patient_leaks.head(30)))
    if len(check.shifts):
        flagged = check.shifts[check.shifts.flagged]
        out.append(f"<p>Statistics that differ between splits (|SMD| >= 0.5 and KS p < "
                   f"0.001): {len(flagged)} of {len(check.shifts)} compared.</p>"
                   + (_table(flagged.drop(columns=["flagged"]), floatfmt="{:.3g}")
                      if len(flagged) else ""))
    out.append("<p>Per split and label:</p>" + _table(check.statistics, floatfmt="{:.3g}"))
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in check.seconds.items())
    out.append(f'<p class="note">Check time: {seconds}.</p>')
    return "".join(out)

"""Export a fitted estimator to one ONNX file and a JSON model card, for deployment.

The file runs without Python or skcxr (ONNX Runtime, OpenVINO, TensorRT, a browser). Its one
input, ``images``, is a batch of uint8 images already resized to the fitted image size, in
``(batch, height, width, channels)`` order (what ``numpy.asarray(PIL.Image)`` gives), with
1 channel (grey, the default) or 3 (RGB), fixed at export. Everything after the resize is
inside the graph: the conversion to the backbone's channels, the test-time augmentation
views, the scaling to [0, 1], the normalisation, the network, the temperature and the
softmax/sigmoid. Its output is what the estimator returns:

- a :class:`~skcxr.PretrainedCNNClassifier`: ``probabilities``, ``predict_proba``'s
  ``(batch, n_classes)`` (or ``(batch, n_labels)``); the decision thresholds are in the card;
- a :class:`~skcxr.FeatureExtractorTransformer`: ``features``, ``transform``'s
  ``(batch, n_features)``;
- a :class:`~sklearn.pipeline.Pipeline` of a feature extractor, optionally a
  :class:`~sklearn.preprocessing.StandardScaler`, and a
  :class:`~sklearn.linear_model.LogisticRegression`: ``probabilities`` (``features`` when it
  ends in the scaler).

The graph computes in float32, whatever ``precision`` the estimator ran at; it matches the
estimator at ``precision="fp32"`` to ``TOLERANCE`` (tested with ONNX Runtime).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .images import apply_view, tta_views

__all__ = ["OPSET", "TOLERANCE", "to_onnx"]

#: The ONNX opset of exported files.
OPSET = 18
#: The largest difference of an exported file's outputs from the estimator's at
#: ``precision="fp32"`` that the tests accept (probabilities; features: relative to their
#: scale).
TOLERANCE = 1e-3


class _Preprocess(nn.Module):
    """uint8 ``(n, H, W, C)`` -> the network's normalised float ``(n, in_chans, H, W)`` input
    in one ``view``; the same steps, in the same order, as :class:`skcxr.images.Preprocessing`
    (channels, view) and :func:`skcxr.images.normalize_batch`."""

    def __init__(self, prep, channels: int, view: str = "none"):
        super().__init__()
        self.in_chans, self.channels, self.view = prep.in_chans, channels, view
        c = prep.in_chans
        self.register_buffer("mean", torch.tensor(prep.mean[:c]).view(1, c, 1, 1).float())
        self.register_buffer("std", torch.tensor(prep.std[:c]).view(1, c, 1, 1).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # 0..255
        if self.channels == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels == 3 and self.in_chans == 1:
            x = x.mean(1, keepdim=True).round()  # as Preprocessing.channels on uint8
        x = apply_view(x, self.view)
        return (x / 255.0 - self.mean) / self.std


class _Classifier(nn.Module):
    """Probabilities of a fitted PretrainedCNNClassifier: per view, the whole network, the
    temperature and the softmax/sigmoid; averaged over the views (``predict_proba``)."""

    def __init__(self, est, channels: int):
        super().__init__()
        self.views = nn.ModuleList(_Preprocess(est.preprocessing_, channels, v)
                                   for v in tta_views(getattr(est, "tta", None)))
        self.net = copy.deepcopy(est.module_).float().eval().whole()
        self.temperature = float(getattr(est, "temperature_", None) or 1.0)
        self.sigmoid = est.target_type_ == "multilabel"

    def forward(self, images):
        out = 0.0
        for pre in self.views:
            logits = self.net(pre(images)) / self.temperature
            out = out + (torch.sigmoid(logits) if self.sigmoid else logits.softmax(-1))
        return out / len(self.views)


class _Features(nn.Module):
    """Pooled features of a fitted FeatureExtractorTransformer, then the linear steps of a
    pipeline (scaler, logistic regression) as tensors."""

    def __init__(self, fe, channels: int, steps=()):
        super().__init__()
        self.pre = _Preprocess(fe.preprocessing_, channels)
        self.backbone = copy.deepcopy(fe.module_).float().eval()
        self.steps = list(steps)  # ("affine", shift, scale) / ("linear", W, b, kind)
        for i, step in enumerate(self.steps):
            for j, value in enumerate(step[1:3]):
                self.register_buffer(f"s{i}_{j}", torch.as_tensor(value, dtype=torch.float32))

    def forward(self, images):
        x = self.backbone(self.pre(images)).flatten(1)
        for i, step in enumerate(self.steps):
            a, b = getattr(self, f"s{i}_0"), getattr(self, f"s{i}_1")
            if step[0] == "affine":
                x = (x - a) / b
            else:
                z = x @ a.T + b
                if step[3] == "binary":
                    p = torch.sigmoid(z)
                    x = torch.cat([1 - p, p], dim=1)
                else:
                    x = z.softmax(-1)
        return x


def _pipeline_steps(pipe):
    """The feature extractor of a pipeline and its later steps as tensors (or an error)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ._features import FeatureExtractorTransformer

    steps = [s for _, s in pipe.steps if s not in (None, "passthrough")]
    if not steps or not isinstance(steps[0], FeatureExtractorTransformer):
        raise TypeError(
            "to_onnx exports a Pipeline whose first step is a FeatureExtractorTransformer; "
            f"this one starts with {type(steps[0]).__name__ if steps else 'nothing'}.")
    out = []
    for k, step in enumerate(steps[1:], start=1):
        if isinstance(step, StandardScaler):
            n = steps[0].n_features_out_
            mean = step.mean_ if step.with_mean else np.zeros(n)
            scale = step.scale_ if step.with_std else np.ones(n)
            out.append(("affine", mean, scale))
        elif isinstance(step, LogisticRegression) and k == len(steps) - 1:
            kind = "binary" if len(step.classes_) == 2 else "multiclass"
            out.append(("linear", step.coef_, step.intercept_, kind))
        else:
            raise TypeError(
                f"to_onnx cannot put pipeline step {k} ({type(step).__name__}) into the graph: "
                "it takes StandardScaler steps and a final LogisticRegression. Export the "
                "FeatureExtractorTransformer alone (its output is the features) and convert "
                "the rest with skl2onnx, or refit with supported steps.")
    return steps[0], out, steps[-1]


def _versions() -> dict:
    names = ["skcxr", "torch", "torchvision", "timm", "scikit-learn", "numpy", "onnx"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def _jsonable(value):
    """Parameters and attributes as JSON: containers kept, anything else as its repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_onnx(estimator, path, *, channels: int = 1, scores: dict | None = None) -> dict:
    """Write a fitted estimator to ``path`` (ONNX) and its model card beside it (JSON).

    Parameters
    ----------
    estimator : PretrainedCNNClassifier, FeatureExtractorTransformer or Pipeline
        Fitted. A pipeline: a FeatureExtractorTransformer, then StandardScaler steps and
        optionally a final LogisticRegression.
    path : str or Path
        The ONNX file to write; the card goes to the same name with ``.json``.
    channels : {1, 3}, default=1
        Channels of the input images: 1 (grey, ``(batch, H, W, 1)``) or 3 (RGB). Converted
        to the backbone's channels inside the graph, as skcxr converts them.
    scores : dict, default=None
        Validation scores to record in the card (e.g. ``{"cv_roc_auc": 0.99}`` from
        ``cross_validate``): an estimator does not know how it was validated.

    Returns
    -------
    card : dict
        The model card, as written to the ``.json`` file: input and output (names,
        shapes, dtype, the resize to apply before), backbone and weights (sha256),
        preprocessing, classes, calibration and thresholds, the training protocol
        (parameters, rows, epochs), the data fingerprint, ``scores`` and library versions.

    Examples
    --------
    Feed the file from image files with ONNX Runtime (``card`` is this function's return
    value, or ``json.load`` of the ``.json`` file)::

        import numpy as np, onnxruntime as ort
        from PIL import Image
        h, w = card["input"]["shape"][1:3]
        resample = Image.BICUBIC  # card["input"]["resize_before"]["interpolation"]
        batch = np.stack([np.asarray(Image.open(p).convert("L").resize((w, h),
                          resample))[..., None] for p in paths])
        proba = ort.InferenceSession("model.onnx").run(None, {"images": batch})[0]

    See the docs page "Export for deployment" for how close that comes to skcxr's own
    decoding (PIL's resize rounds differently from torchvision's).
    """
    from sklearn.pipeline import Pipeline

    from ._classifier import PretrainedCNNClassifier
    from ._features import FeatureExtractorTransformer

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    if isinstance(estimator, Pipeline):
        check_is_fitted(estimator)
        fe, steps, last = _pipeline_steps(estimator)
        check_is_fitted(fe)
        model = _Features(fe, channels, steps)
        ends_in_proba = bool(steps) and steps[-1][0] == "linear"
        output = "probabilities" if ends_in_proba else "features"
        classes = last.classes_ if ends_in_proba else None
        described, prep = fe, fe.preprocessing_
    elif isinstance(estimator, PretrainedCNNClassifier):
        check_is_fitted(estimator)
        model, output, classes = _Classifier(estimator, channels), "probabilities", \
            estimator.classes_
        described, prep = estimator, estimator.preprocessing_
    elif isinstance(estimator, FeatureExtractorTransformer):
        check_is_fitted(estimator)
        model, output, classes = _Features(estimator, channels), "features", None
        described, prep = estimator, estimator.preprocessing_
    else:
        raise TypeError(
            "to_onnx exports a fitted PretrainedCNNClassifier, FeatureExtractorTransformer or "
            f"a Pipeline starting with one; got {type(estimator).__name__}.")

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path should end in .onnx, got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    h, w = prep.size
    example = torch.randint(0, 256, (2, h, w, channels), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        n_out = model(example).shape[1]
    batch = torch.export.Dim("batch", min=1)
    card_path = path.with_suffix(".json")
    # both files are written under temporary names first and moved into place together,
    # the card last: an interrupted export leaves the previous pair as it was
    tmp, card_tmp = (p.with_name(f".{p.name}.{os.getpid()}.partial") for p in (path, card_path))
    try:
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"],
                          output_names=[output], opset_version=OPSET, dynamo=True,
                          external_data=False, dynamic_shapes={"images": {0: batch}},
                          verbose=False)
        card = _card(estimator, described, prep, tmp, path.name, channels, output, n_out,
                     classes, scores)
        card_tmp.write_text(json.dumps(card, indent=2) + "\n")
        with _signals_deferred():
            tmp.replace(path)
            card_tmp.replace(card_path)
    finally:
        tmp.unlink(missing_ok=True)
        card_tmp.unlink(missing_ok=True)
    return card


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM wait until the block is done (two renames: a model and its card
    are never left describing different models); elsewhere than the main thread, or
    without signal masks (Windows), the block just runs."""
    import signal

    masked = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, masked)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _card(estimator, described, prep, onnx_file, name, channels, output, n_out, classes,
          scores) -> dict:
    """The model card of an exported file (see :func:`to_onnx`)."""
    from ._classifier import PretrainedCNNClassifier

    h, w = prep.size
    card = {
        "format": "onnx", "opset": OPSET, "file": name, "sha256": _sha256(onnx_file),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "estimator": type(estimator).__name__,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", h, w, channels],
                  "layout": "NHWC", "channels": "grey" if channels == 1 else "RGB",
                  "resize_before": {"size": [h, w], "mode": prep.resize,
                                    "interpolation": prep.interpolation,
                                    "crop_pct": prep.crop_pct}},
        "output": {"name": output, "dtype": "float32", "shape": ["batch", n_out],
                   "classes": _jsonable(classes)},
        "backbone": described.backbone if isinstance(described.backbone, str)
        else type(described.backbone).__name__,
        "weights": _jsonable(getattr(described, "provenance_", {})),
        "preprocessing": _jsonable(dataclasses.asdict(prep)),
        "params": _jsonable(estimator.get_params(deep=False)),
        "precision": {"graph": "fp32", "estimator": getattr(described, "precision_", None)},
        "tolerance": TOLERANCE,
        "scores": _jsonable(scores or {}),
        "versions": _versions(),
    }
    if isinstance(estimator, PretrainedCNNClassifier):
        rows = estimator.fit_rows_
        card["calibration"] = {"temperature": estimator.temperature_}
        card["thresholds"] = _jsonable(estimator.thresholds_)
        card["tta_views"] = list(tta_views(estimator.tta))
        card["training"] = {
            "n_train_samples": estimator.n_train_samples_,
            "n_valid_samples": estimator.n_valid_samples_,
            "best_epoch": _jsonable(estimator.best_epoch_),
            "epochs_run": len(estimator.history_),
            "trained_layers": estimator.trained_layers_,
            "class_weight": _jsonable(estimator.class_weight_),
            "rare_labels": _jsonable(getattr(rows, "rare_labels", None)),
        }
        card["data_fingerprint"] = estimator.data_fingerprint_
    return card

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
- a :class:`~sklearn.pipeline.Pipeline` of a feature extractor, affine scalers and
  optionally a linear classifier: ``probabilities`` for a
  :class:`~sklearn.linear_model.LogisticRegression` (``predict_proba``), ``scores``
  (``decision_function``) for another linear classifier, ``features`` without one.

What it accepts is what :func:`skcxr.explain.gradcam` accepts: both are built from the one
"fitted estimator as a network" (``skcxr._fitted.as_network``), whose list of accepted
pipelines is in the error for anything else.

The graph computes in float32, whatever ``precision`` the estimator ran at; it matches the
estimator at ``precision="fp32"`` to ``TOLERANCE`` (tested with ONNX Runtime).
"""

from __future__ import annotations

import contextlib
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

from ._classifier import PretrainedCNNClassifier
from ._fitted import as_network
from ._views import tta_views

__all__ = ["OPSET", "TOLERANCE", "to_onnx"]

#: The ONNX opset of exported files.
OPSET = 18
#: The largest difference of an exported file's outputs from the estimator's at
#: ``precision="fp32"`` that the tests accept (probabilities; features: relative to their
#: scale).
TOLERANCE = 1e-3


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
        Fitted. A pipeline: a FeatureExtractorTransformer (imbalanced-learn samplers may sit
        anywhere: they act in fit only), affine scalers (StandardScaler, MinMaxScaler,
        MaxAbsScaler) and optionally a final linear classifier (LogisticRegression,
        LinearSVC, RidgeClassifier, ...).
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
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    net = as_network(estimator)  # a TypeError naming what is accepted, for anything else
    output, classes = net.output, net.classes
    described, prep = net.estimator, net.preprocessing
    model = net.export_graph()

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
    h, w = prep.size
    card = {
        "format": "onnx", "opset": OPSET, "file": name, "sha256": _sha256(onnx_file),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "estimator": type(estimator).__name__,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", h, w, channels],
                  "layout": "NHWC", "channels": "grey" if channels == 1 else "RGB",
                  "resize_before": prep.geometry.describe(),
                  "intensity_before": prep.decode_steps[1].describe()},
        "output": {"name": output, "dtype": "float32", "shape": ["batch", n_out],
                   "classes": _jsonable(classes)},
        "backbone": described.backbone if isinstance(described.backbone, str)
        else type(described.backbone).__name__,
        "weights": _jsonable(described.provenance_),
        "preprocessing": _jsonable(dataclasses.asdict(prep)),
        "params": _jsonable(estimator.get_params(deep=False)),
        "precision": {"graph": "fp32", "estimator": described.precision_},
        "tolerance": TOLERANCE,
        "scores": _jsonable(scores or {}),
        "versions": _versions(),
    }
    if isinstance(described, PretrainedCNNClassifier):
        rows = described.fit_rows_
        card["calibration"] = {"temperature": described.temperature_}
        card["thresholds"] = _jsonable(described.thresholds_)
        card["tta_views"] = list(tta_views(described.tta))
        card["training"] = {
            "n_train_samples": described.n_train_samples_,
            "n_valid_samples": described.n_valid_samples_,
            "best_epoch": _jsonable(described.best_epoch_),
            "epochs_run": len(described.history_),
            "trained_layers": described.trained_layers_,
            "class_weight": _jsonable(described.class_weight_),
            "rare_labels": _jsonable(rows.rare_labels),
        }
        card["data_fingerprint"] = described.data_fingerprint_
    return card

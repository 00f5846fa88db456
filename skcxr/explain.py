"""Grad-CAM heatmaps for fitted skcxr models, computed by the ``grad-cam`` package.

``pip install "skcxr[explain]"`` (the ``grad-cam`` package, imported as ``pytorch_grad_cam``).
skcxr only builds the differentiable model (image -> logits) out of a fitted estimator, picks
the layer to explain, and maps the heatmaps back onto the images as they were given.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .images import ImageSource, Preprocessing, check_images, make_loader, read_image

__all__ = [
    "gradcam",
]

METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")


def _import_cam(method: str):
    try:
        import pytorch_grad_cam as pgc
    except ImportError as exc:
        raise ImportError(
            "skcxr.explain needs the grad-cam package: pip install 'skcxr[explain]' "
            "(or pip install grad-cam)."
        ) from exc
    return {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus,
            "hirescam": pgc.HiResCAM, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
            "eigencam": pgc.EigenCAM}[method]


class _ImageToLogits(nn.Module):
    """``model(x)`` in float32 with the input requiring grad, so that gradients reach every
    layer, frozen ones included (their parameters do not require grad)."""

    def __init__(self, model: nn.Module, prep: Preprocessing | None = None, backbone=None,
                 linear: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.model = model
        self.prep = prep
        self.backbone = backbone
        if linear is not None:
            w, b = linear
            self.linear = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                self.linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
                self.linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def forward(self, x):
        x = x.detach().requires_grad_(True)
        if self.backbone is None:
            return self.model(x)
        z = self.linear(self.backbone(self.prep.normalize(x)))
        return torch.cat([-z, z], dim=1) if z.shape[1] == 1 else z  # binary: [class 0, 1]


def _last_spatial_layer(backbone: nn.Module, probe: torch.Tensor) -> tuple[str, nn.Module]:
    """The last leaf module (in execution order) whose output is a 4-D map larger than 1x1
    (global pooling layers keep 4-D outputs of 1x1, which have nothing to localise)."""
    seen: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, name=name: seen.append((name, mod))
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-2:].numel() > 1
        else None)
        for name, m in backbone.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            backbone(probe)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError("the backbone has no layer with a 4-D (n, c, h, w) output to explain; "
                         "pass layer= explicitly.")
    return seen[-1]


def _resolve(estimator):
    """(model image->logits, backbone, preprocessing, classes) from a fitted estimator."""
    from sklearn.pipeline import Pipeline

    from ._classifier import PretrainedCNNClassifier
    from ._features import FeatureExtractorTransformer

    if isinstance(estimator, PretrainedCNNClassifier):
        check_is_fitted(estimator)
        net = copy.deepcopy(estimator.module_).cpu().eval()
        net.precision = "fp32"  # gradients in float32 whatever the training precision
        return _ImageToLogits(net), net.backbone, estimator.preprocessing_, estimator
    if isinstance(estimator, Pipeline):
        steps = [s for _, s in estimator.steps if s not in (None, "passthrough")]
        if steps and isinstance(steps[-1], PretrainedCNNClassifier) \
                and all(hasattr(s, "fit_resample") for s in steps[:-1]):
            return _resolve(steps[-1])  # samplers (imblearn) act in fit only
        if steps and isinstance(steps[0], FeatureExtractorTransformer) \
                and hasattr(steps[-1], "coef_"):
            fe = steps[0]
            check_is_fitted(fe)
            w = np.atleast_2d(np.asarray(steps[-1].coef_, dtype=np.float64))
            b = np.atleast_1d(np.asarray(getattr(steps[-1], "intercept_", 0.0), float))
            b = np.broadcast_to(b, (w.shape[0],)).copy()
            for step in reversed(steps[1:-1]):  # fold affine scalers into the linear model
                if not (hasattr(step, "scale_") or hasattr(step, "mean_")):
                    raise ValueError(
                        f"cannot explain through pipeline step {step!r}: only affine scalers "
                        "(StandardScaler, MinMaxScaler...) may sit between the feature "
                        "extractor and the linear model.")
                scale = getattr(step, "scale_", None)
                scale = np.ones(w.shape[1]) if scale is None else np.asarray(scale)
                if hasattr(step, "min_"):  # MinMaxScaler: x * scale_ + min_
                    b = b + w @ step.min_
                    w = w * scale
                else:  # StandardScaler: (x - mean_) / scale_
                    mean = getattr(step, "mean_", None)
                    mean = np.zeros(w.shape[1]) if mean is None else np.asarray(mean)
                    w = w / scale
                    b = b - w @ mean
            backbone = copy.deepcopy(fe.module_).cpu().eval()
            model = _ImageToLogits(None, fe.preprocessing_, backbone, (w, b))
            return model, backbone, fe.preprocessing_, steps[-1]
    raise TypeError(
        "gradcam explains a fitted PretrainedCNNClassifier (alone or after imbalanced-learn "
        "samplers in a pipeline), or a Pipeline of "
        "FeatureExtractorTransformer, optional affine scalers and a linear model with coef_ "
        f"(e.g. LogisticRegression); got {type(estimator).__name__}.")


def gradcam(estimator, X, *, target=None, layer=None, method: str = "gradcam",
            batch_size: int = 8, aligned: str = "image"):
    """Grad-CAM heatmaps of ``estimator`` on images ``X``, in ``[0, 1]``.

    Parameters
    ----------
    estimator : fitted PretrainedCNNClassifier or Pipeline
        A fine-tuned classifier, or ``make_pipeline(FeatureExtractorTransformer(), [scaler],
        linear model)``.
    X : paths, (n, 1) column of paths, or array of images
        As for ``fit``.
    target : None, class label, or array-like of labels, default=None
        The class (for multi-label: the label index) whose score is explained. None explains
        each image's predicted class (multi-label: its highest-scoring label).
    layer : None, str or nn.Module, default=None
        Layer of the backbone to explain (a name inside the backbone, e.g. ``"conv_head"`` or
        ``"features.denseblock4"``). None picks the last layer with a spatial (4-D) output.
    method : {"gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"}
    batch_size : int, default=8
    aligned : {"image", "input"}, default="image"
        "image": each heatmap has the size of its image as read from ``X`` and lies on it
        pixel for pixel (the resize, padding or cropping of preprocessing is undone; cropped
        margins get 0). "input": heatmaps at the network's input size.

    Returns
    -------
    heatmaps : ndarray of shape (n, H, W), or list of (H_i, W_i) arrays
        float32 in ``[0, 1]``. A list when ``aligned="image"`` and the images differ in size.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if aligned not in ("image", "input"):
        raise ValueError(f"aligned must be 'image' or 'input'; got {aligned!r}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    cam_cls = _import_cam(method)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, backbone, prep, clf = _resolve(estimator)
    source = check_images(X)
    n = len(source)
    probe = torch.zeros(1, prep.in_chans, *prep.size)
    if layer is None:
        _, target_layer = _last_spatial_layer(backbone, prep.normalize(probe))
    elif isinstance(layer, nn.Module):
        target_layer = layer
    else:
        try:
            target_layer = backbone.get_submodule(layer)
        except AttributeError:
            names = [nm for nm, _ in backbone.named_modules() if nm][-8:]
            raise ValueError(f"layer {layer!r} is not a module of the backbone; its last "
                             f"modules are {names}.") from None
    categories = _categories(clf, target, n)
    out = []
    with cam_cls(model=model, target_layers=[target_layer]) as cam:
        start = 0
        for batch in make_loader(source, prep, batch_size=batch_size):
            x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
            k = len(x)
            if categories is None:
                with torch.no_grad():
                    cats = model(x).argmax(1).tolist()
            else:
                cats = categories[start:start + k]
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in cats])
            out.extend(np.asarray(m, dtype=np.float32) for m in maps)
            start += k
    if aligned == "input":
        return np.stack(out)
    maps = [_to_image(m, prep, _image_shape(source, i)) for i, m in enumerate(out)]
    shapes = {m.shape for m in maps}
    return np.stack(maps) if len(shapes) == 1 else maps


def _categories(clf, target, n: int):
    if target is None:
        return None
    targets = np.broadcast_to(np.asarray(target, dtype=object), (n,))
    classes = getattr(clf, "classes_", None)
    if classes is None or getattr(clf, "target_type_", None) == "multilabel":
        return [int(t) for t in targets]
    lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    try:
        return [lookup[t] for t in targets]
    except KeyError as exc:
        raise ValueError(f"target {exc.args[0]!r} is not one of the classes "
                         f"{list(lookup)}.") from None


def _image_shape(source: ImageSource, i: int) -> tuple[int, int]:
    img = read_image(source.data[i]) if source.kind == "paths" else source.data[i]
    return tuple(np.asarray(img).shape[:2])


def _to_image(m: np.ndarray, prep: Preprocessing, shape: tuple[int, int]) -> np.ndarray:
    """Undo preprocessing's geometry: a heatmap at input size -> one on the original image."""
    import torch.nn.functional as F

    h, w = prep.size
    ih, iw = shape
    t = torch.from_numpy(m)[None, None]

    def resize(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    if prep.resize == "stretch":
        t = resize(t, (ih, iw))
    elif prep.resize == "pad":
        ratio = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * ratio)), max(1, round(iw * ratio))
        top, left = (h - nh) // 2, (w - nw) // 2
        t = resize(t[..., top:top + nh, left:left + nw], (ih, iw))
    else:  # crop: the heatmap covers the central crop only
        sh, sw = int(h / prep.crop_pct), int(w / prep.crop_pct)
        ratio = max(sh / ih, sw / iw)
        rh, rw = round(ih * ratio), round(iw * ratio)
        canvas = torch.zeros(1, 1, rh, rw)
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        canvas[..., top:top + h, left:left + w] = t
        t = resize(canvas, (ih, iw))
    return t[0, 0].clamp(0, 1).numpy()

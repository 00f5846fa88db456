"""Grad-CAM heatmaps for fitted skcxr models, computed by the ``grad-cam`` package.

``pip install "skcxr[explain]"`` (the ``grad-cam`` package, imported as ``pytorch_grad_cam``).
skcxr only builds the differentiable model (image -> logits) out of a fitted estimator, picks
the layer to explain, and maps the heatmaps back onto the images as they were given.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._fitted import as_network
from ._steps import Scale
from .images import check_images, make_loader

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


def gradcam(estimator, X, *, target=None, layer=None, method: str = "gradcam",
            batch_size: int = 8, aligned: str = "image"):
    """Grad-CAM heatmaps of ``estimator`` on images ``X``, in ``[0, 1]``.

    Parameters
    ----------
    estimator : fitted PretrainedCNNClassifier, Pipeline or soft VotingClassifier
        A fine-tuned classifier (alone, or after imbalanced-learn samplers), or
        ``make_pipeline(FeatureExtractorTransformer(), [affine scalers], linear
        classifier)``: what :func:`skcxr.export.to_onnx` accepts, with class scores. A
        fitted ``VotingClassifier(voting="soft")`` of such models: the weighted mean of its
        members' heatmaps, each explaining the same class (``aligned="image"`` only, since
        members may differ in input size).
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
        Images per forward and backward pass.
    aligned : {"image", "input"}, default="image"
        "image": each heatmap has the size of its image as read from ``X`` and lies on it
        pixel for pixel (the resize, padding or cropping of preprocessing is undone; cropped
        margins get 0). "input": heatmaps at the network's input size.

    Returns
    -------
    heatmaps : ndarray of shape (n, H, W), or list of (H_i, W_i) arrays
        Heatmaps as float32 in ``[0, 1]``. A list when ``aligned="image"`` and the images
        differ in size.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if aligned not in ("image", "input"):
        raise ValueError(f"aligned must be 'image' or 'input'; got {aligned!r}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    cam_cls = _import_cam(method)
    if _is_soft_vote(estimator):
        return _ensemble_gradcam(estimator, X, target=target, layer=layer, method=method,
                                 batch_size=batch_size, aligned=aligned)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = as_network(estimator)  # a TypeError naming what is accepted, for anything else
    model, backbone, prep = net.explained(), net.backbone, net.preprocessing
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
    categories = _categories(net, target, n)
    out = []
    with cam_cls(model=model, target_layers=[target_layer]) as cam:
        start = 0
        for batch in make_loader(source, prep, batch_size=batch_size):
            x = Scale().apply(batch)  # float in [0, 1]: gradients start at the pixels
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
    maps = [prep.geometry.invert(m, source.read(i).shape[:2]).clip(0, 1)
            for i, m in enumerate(out)]
    shapes = {m.shape for m in maps}
    return np.stack(maps) if len(shapes) == 1 else maps


def _categories(net, target, n: int):
    if target is None:
        return None
    targets = np.broadcast_to(np.asarray(target, dtype=object), (n,))
    classes = net.classes
    if classes is None or net.multilabel:
        return [int(t) for t in targets]
    lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    try:
        return [lookup[t] for t in targets]
    except KeyError as exc:
        raise ValueError(f"target {exc.args[0]!r} is not one of the classes "
                         f"{list(lookup)}.") from None


def _is_soft_vote(estimator) -> bool:
    from sklearn.ensemble import VotingClassifier

    return isinstance(estimator, VotingClassifier) and hasattr(estimator, "estimators_")


def _ensemble_gradcam(ensemble, X, *, target, layer, method, batch_size, aligned):
    """The weighted mean of a soft-voting ensemble's members' heatmaps of one class each.

    The members are fitted on the ensemble's encoded labels (``ensemble.le_``); the class
    explained is ``target`` (a label of the ensemble), or the ensemble's prediction.
    """
    if ensemble.voting != "soft":
        raise TypeError("gradcam explains a VotingClassifier with voting='soft' (the mean of "
                        "its members' probabilities); a hard vote has no class score.")
    if aligned != "image":
        raise ValueError("an ensemble's members may differ in input size: use "
                         "aligned='image' (heatmaps on the images as given).")
    source = check_images(X)
    n = len(source)
    labels = ensemble.predict(source.data) if target is None else np.broadcast_to(
        np.asarray(target, dtype=object), (n,))
    known = set(np.asarray(ensemble.classes_).tolist())
    unknown = [t for t in set(np.asarray(labels, dtype=object).tolist()) if t not in known]
    if unknown:
        raise ValueError(f"target {unknown[0]!r} is not one of the classes {sorted(known)}.")
    codes = ensemble.le_.transform(np.asarray(labels).tolist())
    weights = (np.ones(len(ensemble.estimators_)) if ensemble.weights is None
               else np.asarray(ensemble.weights, dtype=float))
    total = None
    for w, member in zip(weights, ensemble.estimators_):
        maps = gradcam(member, source.data, target=codes, layer=layer, method=method,
                       batch_size=batch_size, aligned="image")
        maps = [np.asarray(m, dtype=np.float32) * w for m in maps]
        total = maps if total is None else [a + b for a, b in zip(total, maps)]
    out = [(m / weights.sum()).clip(0, 1) for m in total]
    return np.stack(out) if len({m.shape for m in out}) == 1 else out

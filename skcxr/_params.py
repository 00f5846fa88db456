"""Every parameter's allowed values, one table per estimator, checked before any work starts.

In the spirit of scikit-learn's ``_parameter_constraints`` (built on public Python only):
each estimator declares ``_parameter_constraints = {**SHARED_CONSTRAINTS, ...}``, and
:func:`validate_params` checks every parameter at the top of ``fit``, before any image file
is opened, with a message that names the parameter, what it may be and what it got. The
parameters both estimators share are declared once here (imbalanced-learn's pattern), and so
is their docstring text (:func:`fill_doc`), so the two estimators cannot drift apart. Public
functions that take the same arguments (``load_backbone``, ``make_preprocessing``) check them
against the same entries.

Only one check waits for the loaded backbone: the range of ``n_trainable_layers``.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

import numpy as np

RESIZE_MODES = ("stretch", "pad", "crop")
NORMALIZATIONS = ("backbone", "imagenet", "centered", "unit")
POOLINGS = ("avg", "max", "avgmax", "catavgmax")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "openvino")
BATCHNORM_POLICIES = ("frozen", "eval", "train")
AUGMENT_PRESETS = ("flip", "standard", "crop")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULERS = ("step", "cosine", "plateau")
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a value it may not have (a ValueError and a TypeError, as sklearn's)."""


# --------------------------------------------------------------------------- constraints


class Constraint:
    """One allowed form of a value: ``reason(value)`` is None when it fits, else why not."""

    description = ""

    def reason(self, value) -> str | None:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.description


class Options(Constraint):
    """One of a few values (booleans never pass for ints: ``True == 1``)."""

    def __init__(self, *values):
        self.values = values
        self.description = (repr(values[0]) if len(values) == 1
                            else f"one of {', '.join(map(repr, values))}")

    def reason(self, value):
        return None if any(_same(v, value) for v in self.values) else ""


def _same(option, value) -> bool:
    if option is None or isinstance(option, bool):
        return value is option
    if isinstance(option, str):
        return isinstance(value, str) and value == option
    return (isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))
            and value == option)


class Interval(Constraint):
    """An int (``kind="int"``) or a real number (``kind="real"``) in a range."""

    def __init__(self, kind: str, low=None, high=None, closed: str = "both"):
        self.kind, self.low, self.high, self.closed = kind, low, high, closed
        noun = "an int" if kind == "int" else "a float"
        lo_in, hi_in = closed in ("both", "left"), closed in ("both", "right")
        if high is None:
            self.description = noun if low is None else f"{noun} {'>=' if lo_in else '>'} {low}"
        else:
            self.description = (f"{noun} in {'[' if lo_in else '('}{low}, {high}"
                                f"{']' if hi_in else ')'}")

    def reason(self, value):
        if isinstance(value, (bool, np.bool_)):
            return ""
        types = Integral if self.kind == "int" else Real
        if not isinstance(value, types):
            return ""
        if self.kind == "real" and not math.isfinite(float(value)):
            return ""
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return ""
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return ""
        return None


class Fraction(Interval):
    """A float (not an int) in a range: ``train_size=0.5`` is a fraction, ``1`` a row count."""

    def reason(self, value):
        if isinstance(value, Integral):
            return ""
        return super().reason(value)


class InstanceOf(Constraint):
    def __init__(self, types, description: str):
        self.types, self.description = types, description

    def reason(self, value):
        if isinstance(value, bool) and bool not in np.atleast_1d(self.types).tolist():
            return ""
        return None if isinstance(value, self.types) else ""


class Check(Constraint):
    """A value checked by ``fn(value) -> None | reason``; a reason explains the failure."""

    def __init__(self, fn, description: str):
        self.fn, self.description = fn, description

    def reason(self, value):
        return self.fn(value)


NONE = Options(None)
BOOL = InstanceOf((bool, np.bool_), "a bool")
DICT = InstanceOf(dict, "a dict")
CALLABLE = Check(lambda v: None if callable(v) else "", "a callable")


def _backbone(value):
    from torch import nn

    if isinstance(value, nn.Module):
        return None
    if not isinstance(value, str):
        return ""
    from .backbones import resolve_name

    try:
        resolve_name(value)
    except ValueError as exc:
        return str(exc)
    return None


def _checkpoint(value):
    if not isinstance(value, (str, os.PathLike)) or value == "imagenet":
        return ""
    path = os.fspath(value)
    if not os.path.isfile(path):
        return f"{path!r} is not an existing file"
    if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
        return f"{path!r} has an unsupported extension"
    return None


def _size_pair(value):
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(Interval("int", 8).reason(v) is None for v in value)):
        return None
    return ""


def _mean_std(value):
    try:
        mean, std = value
        std = np.broadcast_to(np.asarray(std, dtype=float), (3,))
        np.broadcast_to(np.asarray(mean, dtype=float), (3,))
    except (TypeError, ValueError):
        return ""
    if not np.isfinite(std).all() or (std <= 0).any():
        return f"its std {std.tolist()} must be positive"
    return None


def _device(value):
    import torch

    if isinstance(value, torch.device):
        return None
    if isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return None
    return ""


def _memory(value):  # a joblib.Memory: what counts is its location
    location = getattr(value, "location", False)
    if location is False:
        return ""
    if location is None or isinstance(location, (str, os.PathLike)):
        return None
    return f"its location {location!r} is not a directory path"


def _hidden_units(value):
    if isinstance(value, (tuple, list)) and all(
            Interval("int", 1).reason(u) is None for u in value):
        return None
    return ""


def _module_name(value):
    return None if isinstance(value, str) and value.strip(".") else ""


#: Parameters both estimators take, with the same meaning and the same allowed values.
SHARED_CONSTRAINTS = {
    "backbone": [Check(_backbone, "a timm or torchvision model name or a torch.nn.Module")],
    "weights": [Options("imagenet"), NONE,
                Check(_checkpoint, "the path of a checkpoint file ("
                      + ", ".join(CHECKPOINT_EXTENSIONS) + ")")],
    "image_size": [NONE, Interval("int", 8),
                   Check(_size_pair, "a (height, width) pair of ints >= 8")],
    "in_chans": [Options(1, 3)],
    "resize": [Options(*RESIZE_MODES)],
    "normalize": [Options(*NORMALIZATIONS), Check(_mean_std, "a (mean, std) pair")],
    "batch_size": [Interval("int", 1)],
    "device": [Options(*DEVICES), Check(_device, "'cuda:N' or a torch.device")],
    "precision": [Options(*PRECISIONS)],
    "engine": [Options(*ENGINES)],
    "num_workers": [Interval("int", 0)],
    "cache": [BOOL],
    "memory": [NONE, InstanceOf((str, os.PathLike), "a directory path"),
               Check(_memory, "a joblib.Memory")],
    "random_state": [NONE, Interval("int", 0, 2**32 - 1),
                     InstanceOf(np.random.RandomState, "a numpy RandomState")],
    "verbose": [Interval("int", 0), BOOL],
}

POOLING_CONSTRAINT = [Options(*POOLINGS)]

CLASSIFIER_CONSTRAINTS = {
    "n_trainable_layers": [Interval("int", -1), Options("all"),
                           Check(_module_name, "a module name")],
    "train_size": [NONE, Interval("int", 1), Fraction("real", 0, 1, closed="right")],
    "class_weight": [NONE, Options("balanced"), DICT],
    "head_hidden_units": [Check(_hidden_units, "a tuple of ints >= 1")],
    "dropout": [Interval("real", 0, 1, closed="left")],
    "max_epochs": [Interval("int", 1)],
    "lr": [Interval("real", 0, closed="neither")],
    "optimizer": [Options(*OPTIMIZERS)],
    "optimizer_kwargs": [NONE, DICT],
    "lr_scheduler": [NONE, Options(*LR_SCHEDULERS)],
    "lr_scheduler_kwargs": [NONE, DICT],
    "freeze_epochs": [Interval("int", 0)],
    "finetune_lr": [NONE, Interval("real", 0)],
    "batchnorm": [Options(*BATCHNORM_POLICIES)],
    "validation_fraction": [Interval("real", 0, 1, closed="left")],
    "early_stopping": [BOOL],
    "patience": [Interval("int", 1)],
    "min_delta": [Interval("real", 0)],
    "augment": [NONE, Options(*AUGMENT_PRESETS), CALLABLE],
}


def validate(values: dict, constraints: dict, owner: str) -> None:
    """Check ``values[name]`` against ``constraints[name]`` for every name in ``values``.

    Raises
    ------
    InvalidParameterError
        Naming the first parameter that fits none of its constraints, what it may be and
        what it got.
    """
    for name, value in values.items():
        reasons = [c.reason(value) for c in constraints[name]]
        if any(r is None for r in reasons):
            continue
        allowed = " or ".join(str(c) for c in constraints[name])
        why = "; ".join(r for r in reasons if r)
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be {allowed}; got {value!r}"
            + (f" ({why})." if why else "."))


def validate_params(estimator) -> dict:
    """Check every parameter of ``estimator`` against its class's constraint table.

    Returns the parameters (``get_params(deep=False)``), so ``fit`` reads one snapshot.
    """
    params = estimator.get_params(deep=False)
    constraints = type(estimator)._parameter_constraints
    missing = set(params) ^ set(constraints)
    if missing:  # a parameter without an entry is a bug in skcxr, not in the caller
        raise RuntimeError(f"{type(estimator).__name__} has no constraint for {sorted(missing)}")
    validate(params, constraints, type(estimator).__name__)
    return params


def as_seed(random_state) -> int:
    """``random_state`` (None, int or RandomState) -> an int seed, as the package uses it.

    An int is used as given (so ``random_state=0`` seeds torch with 0); None draws from
    numpy's global RNG and a RandomState from itself, as scikit-learn's
    ``check_random_state`` does.
    """
    if random_state is None:
        return int(np.random.randint(2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    return int(random_state)


# --------------------------------------------------------------------------- docstrings

#: numpydoc text of the shared parameters, inserted into both estimators' docstrings.
SHARED_DOCS = {
    "backbone": """\
backbone : str or torch.nn.Module, default="tf_efficientnet_lite0"
    A timm model name, a torchvision model name (``"torchvision:densenet121"``), or a
    module (its classifier is removed: see :func:`skcxr.load_backbone`).""",
    "weights": """\
weights : {"imagenet"}, None or path, default="imagenet"
    Pretrained ImageNet weights (offline for the EfficientNet-Lite family), ``None`` for
    random initialisation (seeded by ``random_state``), or a local checkpoint file
    (.pth, .pt, .bin, .ckpt, .safetensors).""",
    "image_size": """\
image_size : int, (int, int) or None, default=None
    Input size; None uses the backbone's data config (224 for EfficientNet-Lite0).""",
    "in_chans": """\
in_chans : {3, 1}, default=3
    3 replicates grey images to RGB; 1 feeds one channel to a stem whose pretrained
    filters are summed over RGB.""",
    "resize": """\
resize : {"stretch", "pad", "crop"}, default="stretch"
    ``"stretch"`` resizes to ``image_size`` ignoring the aspect ratio; ``"pad"`` keeps
    it and pads with black; ``"crop"`` resizes by the backbone's ``crop_pct`` and takes
    the centre crop (timm's evaluation transform; it can cut off lung apices).""",
    "normalize": """\
normalize : {"backbone", "imagenet", "centered", "unit"} or (mean, std), default="backbone"
    ``"backbone"`` uses the backbone's mean/std (0.5/0.5 for EfficientNet-Lite);
    ``"centered"`` is ``x / 255 - 0.5`` (study 000); ``"unit"`` is ``x / 255``.""",
    "batch_size": """\
batch_size : int, default=32
    Images per forward (and, for training, backward) pass.""",
    "device": """\
device : {"auto", "cpu", "cuda"}, "cuda:N" or torch.device, default="auto"
    Where torch computes; "auto" uses CUDA when available. Resolved again at every
    ``predict``/``transform`` call, so ``set_params(device="cpu")`` moves a fitted model
    (for example one fitted on a GPU and unpickled on a laptop) without refitting.""",
    "precision": """\
precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
    "auto" runs under bf16 autocast on GPUs and on CPUs with native bf16 (AVX-512 BF16 or
    AMX), fp32 otherwise. bf16 features agree with fp32 ones to a cosine similarity above
    0.99 and are 3-4x faster on such CPUs (measured with lite0); outputs are float32
    either way. "fp16" is for CUDA only.""",
    "engine": """\
engine : {"auto", "torch", "openvino"}, default="auto"
    What runs the frozen part of the network (the transformer's whole backbone, the
    classifier's frozen prefix). "openvino" compiles it with OpenVINO (CPU only;
    ``pip install "skcxr[openvino]"``), about 3x faster than eager torch on CPUs with
    AVX-512 BF16; "auto" uses it when installed and the device is the CPU, torch
    otherwise. Training always runs in torch. OpenVINO outputs agree with torch ones to
    bf16 rounding (cosine > 0.99).""",
    "num_workers": """\
num_workers : int, default=0
    DataLoader worker processes that decode images. 0 decodes in the calling process,
    which is fastest on small CPUs with small images.""",
    "cache": """\
cache : bool, default=True
    Keep what the frozen part of the network computes for each image in an in-process
    store shared by all clones (see :mod:`skcxr.cache`), keyed by everything the output
    depends on (backbone, weights digest, preprocessing, precision, engine, cut point and
    the image's content), so the folds of a cross-validation and the candidates of a grid
    search compute each image once. The transformer keeps its pooled features; the
    classifier its frozen prefix's outputs where that is exact (see ``augment``), and the
    decoded, resized images where it is not.""",
    "memory": """\
memory : str, path, joblib.Memory or None, default=None
    A directory for an on-disk copy of the cache, shared by joblib worker processes
    (``GridSearchCV(n_jobs=...)``) and later sessions.""",
    "random_state": """\
random_state : int, RandomState instance or None, default=None
    Seeds everything random: ``weights=None`` initialisation and, for the classifier,
    the head, subsampling, splits, shuffling, dropout and augmentation. With an int, two
    CPU fits give identical results.""",
    "verbose": """\
verbose : int, default=0
    Progress bars on long work when > 0 (the classifier: 1 prints skorch's per-epoch
    table, 2 adds progress bars).""",
}


def fill_doc(cls):
    """Replace each ``%(name)s`` line of ``cls.__doc__`` by ``SHARED_DOCS[name]``, indented."""
    lines = []
    for line in cls.__doc__.splitlines():
        stripped = line.strip()
        if stripped.startswith("%(") and stripped.endswith(")s"):
            indent = line[: len(line) - len(line.lstrip())]
            lines += [indent + t if t else t
                      for t in SHARED_DOCS[stripped[2:-2]].splitlines()]
        else:
            lines.append(line)
    cls.__doc__ = "\n".join(lines)
    return cls

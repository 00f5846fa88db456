"""Every parameter's allowed values: one table per estimator, shared entries declared once.

In the spirit of scikit-learn's ``_parameter_constraints`` (built on public Python only; the
attribute is named ``_parameter_table`` so that scikit-learn's own ``_validate_params``
never reads it): each estimator's ``_parameter_table`` is one of the tables below, and
:func:`validate_params` checks every parameter at the top of ``fit``, before any image file
is opened, with a message that names the parameter, what it may be and what it got; then
the few combinations a table cannot express (``optimizer_kwargs`` must fit the optimizer,
"plateau" needs validation rows, ...). The
parameters both estimators share come from one dict (imbalanced-learn's pattern), and so
does their docstring text (:func:`fill_doc`), so the two estimators cannot drift apart.

Each entry is defined where its concept lives (resize modes in :mod:`skcxr.images`, devices
in :mod:`skcxr._runtime`, backbone names in :mod:`skcxr.backbones`, ...), so that the public
functions there (``load_backbone``, ``make_preprocessing``) check the same values; this
module only assembles them. One check waits for the loaded backbone: the range of
``n_trainable_layers``.
"""

from __future__ import annotations

from ._augment import PRESETS as AUGMENT_PRESETS
from ._callbacks import RESERVED_CALLBACK_NAMES, is_callback_list
from ._disk import MEMORY_CONSTRAINT
from ._layers import BATCHNORM_POLICIES
from ._preprocessing import PREPROCESSING_CONSTRAINTS
from ._runtime import RUNTIME_CONSTRAINTS
from ._schedules import OPTIMIZER_CLASSES, SCHEDULER_CLASSES
from ._validation import (
    BOOL,
    CALLABLE,
    DICT,
    INVALID,
    NONE,
    RANDOM_STATE,
    VALID,
    Check,
    Interval,
    InvalidParameterError,
    Options,
    validate,
)
from ._views import TTA_CONSTRAINT
from .backbones import BACKBONE_CONSTRAINTS, check_pooling, resolve_name
from .calibration import CALIBRATION_CONSTRAINTS
from .protocol import PROTOCOL_CONSTRAINTS

#: The parameters both estimators take, in their order in both signatures: the shared head
#: first, each estimator's own parameters, then the shared tail.
SHARED_HEAD = ("backbone", "weights", "image_size", "in_chans", "resize", "normalize",
               "intensity")
SHARED_TAIL = ("batch_size", "cache", "memory", "engine", "device", "precision",
               "num_workers", "random_state", "verbose")

#: Parameters both estimators take, with the same meaning and the same allowed values.
SHARED_CONSTRAINTS = {
    "backbone": BACKBONE_CONSTRAINTS["backbone"],
    "weights": BACKBONE_CONSTRAINTS["weights"],
    **PREPROCESSING_CONSTRAINTS,
    "batch_size": [Interval("int", 1)],
    **RUNTIME_CONSTRAINTS,
    "num_workers": [Interval("int", 0)],
    "cache": [BOOL],
    "memory": MEMORY_CONSTRAINT,
    "random_state": RANDOM_STATE,
    "verbose": [Interval("int", 0), BOOL],
}

TRANSFORMER_CONSTRAINTS = {**SHARED_CONSTRAINTS, "pooling": BACKBONE_CONSTRAINTS["pooling"],
                           # int8: the frozen backbone quantized at fit (features only)
                           "precision": [Options(*RUNTIME_CONSTRAINTS["precision"][0].values,
                                                 "int8")]}


def _hidden_units(value):
    ok = isinstance(value, (tuple, list)) and all(
        Interval("int", 1).verdict(u).ok for u in value)
    return VALID if ok else INVALID


def _module_name(value):
    return VALID if isinstance(value, str) and value.strip(".") else INVALID


CLASSIFIER_CONSTRAINTS = {
    **SHARED_CONSTRAINTS,
    "n_trainable_layers": [Interval("int", -1), Options("all"),
                           Check(_module_name, "a module name")],
    **PROTOCOL_CONSTRAINTS,
    **CALIBRATION_CONSTRAINTS,
    "tta": TTA_CONSTRAINT,
    "head_hidden_units": [Check(_hidden_units, "a tuple of ints >= 1")],
    "dropout": [Interval("real", 0, 1, closed="left")],
    "max_epochs": [Interval("int", 1)],
    "lr": [Interval("real", 0, closed="neither")],
    "optimizer": [Options(*OPTIMIZER_CLASSES)],
    "optimizer_kwargs": [NONE, DICT],
    "lr_scheduler": [NONE, Options(*SCHEDULER_CLASSES)],
    "lr_scheduler_kwargs": [NONE, DICT],
    "freeze_epochs": [Interval("int", 0)],
    "finetune_lr": [NONE, Interval("real", 0)],
    "batchnorm": [Options(*BATCHNORM_POLICIES)],
    "early_stopping": [BOOL],
    "patience": [Interval("int", 1)],
    "min_delta": [Interval("real", 0)],
    "augment": [NONE, Options(*AUGMENT_PRESETS), CALLABLE],
    "callbacks": [NONE, Check(lambda v: VALID if is_callback_list(v) else INVALID,
                              "a list of skorch callbacks or (name, callback) pairs with "
                              "unique names, none of "
                              + ", ".join(map(repr, RESERVED_CALLBACK_NAMES)))],
}


def validate_params(estimator) -> dict:
    """Check every parameter of ``estimator`` against its class's table, then the
    combinations its class checks (``_parameter_checks``).

    Parameters that a subclass adds without an entry are left alone, as scikit-learn does.
    Returns the parameters (``get_params(deep=False)``), so ``fit`` reads one snapshot.
    """
    params = estimator.get_params(deep=False)
    table = type(estimator)._parameter_table
    owner = type(estimator).__name__
    validate({k: v for k, v in params.items() if k in table}, table, owner)
    for check in getattr(type(estimator), "_parameter_checks", ()):
        check(params, owner)
    return params


def _kwargs_fit(name: str, owner: str, kwargs, target, extra=()) -> None:
    """``kwargs`` must be keyword arguments that ``target`` takes (after its first)."""
    import inspect

    names = list(inspect.signature(target).parameters)[1:]  # not params / optimizer
    unknown = sorted(set(kwargs or {}) - set(names) - set(extra))
    if unknown:
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} has keys {unknown} that {target.__name__} "
            f"does not take; it takes {sorted(set(names) | set(extra))}.")


def check_training_combinations(params: dict, owner: str) -> None:
    """What the classifier's training parameters must agree on (checked before any work)."""
    for name in ("calibration", "threshold"):
        if params.get(name) is not None and not params["validation_fraction"]:
            raise InvalidParameterError(
                f"{owner}: {name}={params[name]!r} is fitted on the inner validation rows, but "
                "validation_fraction=0 leaves none; set validation_fraction > 0 (e.g. 0.2), "
                f"or fit it yourself on held-out predictions with skcxr.calibration.")
    _kwargs_fit("optimizer_kwargs", owner, params["optimizer_kwargs"],
                OPTIMIZER_CLASSES[params["optimizer"]])
    if params["lr_scheduler"] is None:
        if params["lr_scheduler_kwargs"]:
            raise InvalidParameterError(
                f"{owner} got lr_scheduler_kwargs={params['lr_scheduler_kwargs']!r} but "
                "lr_scheduler=None: choose a scheduler or drop the kwargs.")
        return
    kwargs = params["lr_scheduler_kwargs"] or {}
    _kwargs_fit("lr_scheduler_kwargs", owner, kwargs, SCHEDULER_CLASSES[params["lr_scheduler"]],
                extra=("monitor", "event_name", "step_every"))  # skorch's LRScheduler's own
    if (params["lr_scheduler"] == "plateau" and not params["validation_fraction"]
            and kwargs.get("monitor", "valid_loss") == "valid_loss"):
        raise InvalidParameterError(
            f"{owner}: lr_scheduler='plateau' watches the validation loss, but "
            "validation_fraction=0 leaves no validation rows; set validation_fraction > 0 "
            "or lr_scheduler_kwargs={'monitor': 'train_loss'}.")


def check_backbone_combinations(params: dict, owner: str) -> None:
    """torchvision backbones pool internally: only ``pooling="avg"``."""
    backbone = params["backbone"]
    if isinstance(backbone, str):
        check_pooling(resolve_name(backbone)[0], backbone, params.get("pooling", "avg"), owner)


# The combinations that need the data (checked in fit as soon as it is known, before any
# image is decoded)

def check_target_combinations(params: dict, task: str, n_classes: int, owner: str) -> None:
    """A decision threshold is for binary and multi-label targets."""
    if params.get("threshold") is not None and task == "multiclass":
        raise InvalidParameterError(
            f"{owner}: threshold={params['threshold']!r} applies to binary and multi-label "
            f"targets; y has {n_classes} classes, whose prediction is the most probable one. "
            "Use threshold=None.")


def check_input_combinations(params: dict, n_images: int, owner: str,
                             int8_minimum: int, int8_used: int) -> None:
    """``precision="int8"`` calibrates the quantization on the images given to fit."""
    if params.get("precision") == "int8" and n_images < int8_minimum:
        raise InvalidParameterError(
            f"{owner}: precision='int8' calibrates the quantization on the images given to "
            f"fit; X has {n_images}, at least {int8_minimum} are needed (up to {int8_used} "
            "are used).")


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
    "intensity": """\
intensity : {"none", "equalize", "clahe"}, default="none"
    Intensity standardisation of each image after the resize: global histogram
    equalisation, or CLAHE (contrast-limited adaptive histogram equalisation), by
    scikit-image. Cached with the decoded image and applied at fit, predict, ``tta`` and
    Grad-CAM alike; an exported model card says how to apply it before the ONNX model.
    Evens out exposure and processing differences between sites (see "A model for
    another hospital" in the docs).""",
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
    0.99; with channels_last, lite0 features come 3.6x faster than from a plain fp32 loop
    on such a CPU (``benchmarks/bench_features.py``). Outputs are float32 either way.
    "fp16" is for CUDA only.""",
    "engine": """\
engine : {"auto", "torch", "openvino"}, default="auto"
    What runs the frozen part of the network (the transformer's whole backbone, the
    classifier's frozen prefix). "openvino" compiles it with OpenVINO (CPU only; a
    regular dependency where OpenVINO has wheels), 3.2x faster than the torch engine for
    lite0 features on a CPU with AVX-512 BF16 (``benchmarks/bench_features.py``) once
    compiled; "auto" uses it when installed, the device is the CPU and the call has at
    least 512 images (the ``openvino_min_images`` setting: below, its ~3.5 s compile
    costs more than it saves), torch otherwise. ``engine_`` says which a fit used.
    Training always runs in torch. OpenVINO outputs agree with torch ones to bf16
    rounding (cosine > 0.99).""",
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
    A directory for an on-disk copy of the cache (with ``cache=True``), shared by joblib
    worker processes (``GridSearchCV(n_jobs=...)``), Dask workers that can all reach it
    and later sessions: each image's entry is computed once across all of them (see
    ``docs/scaling.md``). Compiled OpenVINO models are cached there too. The classifier
    also keeps each fit's training state there (after an epoch, at most every 10 s) and
    its result: a fit interrupted
    (Ctrl-C, a killed process) resumes from its last completed epoch when run again with
    the same parameters and data, and a finished fit (a grid search run again) is not
    trained again (see ``docs/persistence.md``).""",
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

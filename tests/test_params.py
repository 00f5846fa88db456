"""Every parameter of both estimators is checked at the top of fit, before any file is touched.

Table-driven: BAD holds wrong values for every parameter, and a test fails when an estimator
gains a parameter that has no entry here.
"""

import math

import numpy as np
import pytest
import torch

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier

SHARED_BAD = {
    "backbone": ["resnet5O", 3, None],
    "weights": ["/no/such/file.pth", 3, "imagenet21k"],
    "image_size": [3, (8,), "224", (224, 7), 224.0],
    "in_chans": [2, True, 3.0],
    "resize": ["squash", None],
    "normalize": ["zscore", (0.5, 0), ([0.5], [-1.0]), 0.5],
    "intensity": ["clahe2", None, 1],
    "batch_size": [0, 2.5, True, "32"],
    "device": ["tpu", 3, "cuda:x", "cpu:"],
    "precision": ["int4", None],
    "engine": ["tensorrt", None],
    "num_workers": [-1, 1.5],
    "cache": ["yes", 1],
    "memory": [3, object(), ""],
    "random_state": ["abc", -1, 1.5],
    "verbose": [-1, "loud"],
}
BAD = {
    FeatureExtractorTransformer: {**SHARED_BAD, "pooling": ["median", None]},
    PretrainedCNNClassifier: {
        **SHARED_BAD,
        "precision": ["int8", "int4", None],  # int8: features only
        "n_trainable_layers": [-2, 2.5, "", None],
        "train_size": [0, 0.0, 1.5, -3, "half", True],
        "class_weight": ["auto", [1, 2], {0: -1.0}, {0: "x"}, {0: math.inf}],
        "sampler": ["oversample", object()],
        "calibration": ["platt", True],
        "threshold": ["accuracy", ("sensitivity", 1.5), ("specificity", 0.9), 0.5],
        "tta": ["rotate", ("none", "vflip"), (), ("hflip", "hflip")],
        "head_hidden_units": [512, (512, 0), (512.5,)],
        "dropout": [1.0, -0.1],
        "max_epochs": [0, True, 2.0],
        "lr": ["fast", 0, -1, math.nan],
        "optimizer": ["adamax"],
        "optimizer_kwargs": ["momentum=0.9"],
        "lr_scheduler": ["cyclic"],
        "lr_scheduler_kwargs": [3],
        "freeze_epochs": [-1],
        "finetune_lr": [-1e-3, "x"],
        "batchnorm": ["none"],
        "validation_fraction": [None, 1.0, -0.1],
        "early_stopping": ["yes"],
        "patience": [0],
        "min_delta": [-1, math.nan],
        "augment": ["mixup", 3],
        "callbacks": ["mlflow", [print], (object(),)],
    },
}
CASES = [(est, name, value) for est, table in BAD.items()
         for name, values in table.items() for value in values]

#: paths that do not exist: any file access before the parameter check raises
#: FileNotFoundError instead of the expected ValueError
NO_FILES = ["/nonexistent/a.png", "/nonexistent/b.png"]


@pytest.mark.parametrize("estimator", list(BAD), ids=lambda e: e.__name__)
def test_every_parameter_has_bad_values_here(estimator):
    assert set(BAD[estimator]) == set(estimator().get_params())


@pytest.mark.parametrize("estimator, name, value", CASES,
                         ids=[f"{e.__name__}-{n}-{v!r}"[:70] for e, n, v in CASES])
def test_bad_parameter_is_named_before_any_file_is_touched(estimator, name, value):
    with pytest.raises(ValueError, match=f"The '{name}' parameter of {estimator.__name__}"
                                         " must be .*; got") as info:
        estimator(**{name: value}).fit(NO_FILES, [0, 1])
    assert not isinstance(info.value, FileNotFoundError)


def test_messages_say_what_is_allowed():
    with pytest.raises(ValueError) as info:
        PretrainedCNNClassifier(lr="fast").fit(NO_FILES, [0, 1])
    assert str(info.value) == ("The 'lr' parameter of PretrainedCNNClassifier must be a float "
                               "> 0; got 'fast'.")
    with pytest.raises(ValueError, match=r"Did you mean: resnet50"):
        FeatureExtractorTransformer("resnet5O").fit(NO_FILES)
    with pytest.raises(ValueError, match=r"one of 'frozen', 'eval', 'train'; got 'none'"):
        PretrainedCNNClassifier(batchnorm="none").fit(NO_FILES, [0, 1])


@pytest.mark.parametrize("estimator", list(BAD), ids=lambda e: e.__name__)
def test_what_this_machine_cannot_do_is_said_before_any_file_is_touched(estimator):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            estimator(device="cuda").fit(NO_FILES, [0, 1])
        with pytest.raises(ValueError, match="fp16.* only supported on CUDA"):
            estimator(device="cpu", precision="fp16").fit(NO_FILES, [0, 1])
    with pytest.raises(FileNotFoundError):  # good parameters: the files are next
        estimator(random_state=np.random.RandomState(0), verbose=True).fit(NO_FILES, [0, 1])


@pytest.mark.parametrize("params, match", [
    ({"optimizer_kwargs": {"momentm": 0.9}},
     r"'optimizer_kwargs' parameter of PretrainedCNNClassifier has keys \['momentm'\] that "
     "Adam does not take"),
    ({"optimizer": "sgd", "optimizer_kwargs": {"betas": (0.9, 0.99)}}, "SGD does not take"),
    ({"lr_scheduler": "step", "lr_scheduler_kwargs": {"step": 2}}, "StepLR does not take"),
    ({"lr_scheduler_kwargs": {"step_size": 2}}, "lr_scheduler=None"),
    ({"lr_scheduler": "plateau", "validation_fraction": 0}, "no validation rows"),
    ({"backbone": "torchvision:resnet18", "pooling": "max"}, "pools internally"),
])
def test_combinations_are_checked_before_any_file_is_touched(params, match):
    estimator = FeatureExtractorTransformer if "pooling" in params else PretrainedCNNClassifier
    with pytest.raises(ValueError, match=match):
        estimator(**params).fit(NO_FILES, [0, 1])


@pytest.mark.parametrize("params", [
    {"optimizer": "sgd", "optimizer_kwargs": {"nesterov": True, "weight_decay": 1e-6}},
    {"lr_scheduler": "plateau", "validation_fraction": 0,
     "lr_scheduler_kwargs": {"monitor": "train_loss", "factor": 0.5}},
    {"device": "cpu:0", "in_chans": np.int64(1), "image_size": [64, 48]},
])
def test_good_combinations_pass(params):
    with pytest.raises(FileNotFoundError):  # past every parameter check: the files are next
        PretrainedCNNClassifier(**params).fit(NO_FILES, [0, 1])

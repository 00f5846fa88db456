"""The reliability battery: bad inputs and faults, each with the exact outcome it must have.

Every case is one row of a table: the input (arrays, files generated here, parameters, or a
fault injected into a fit or the disk cache) and either the exception it must raise, with
words its message must contain (what is wrong, and the fix), or the correct result. Bad
input must fail before any image is decoded (counted), and a failed or interrupted fit
must leave the estimator as it was. See docs/checks.md for the rules these enforce.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import skcxr.images as images_module
from skcxr import (
    FeatureExtractorTransformer,
    ImageReadError,
    PretrainedCNNClassifier,
    config_context,
)
from skcxr._disk import ENTRY_VERSION, decode_entry, encode_entry
from skcxr.cache import cache_info, clear_cache
from skcxr.images import check_images, read_image

# --------------------------------------------------------------------------- the table form


@dataclass
class Raises:
    exc: type
    words: list = field(default_factory=list)  # each must occur in the message (case-folded)

    def check(self, fn):
        with pytest.raises(self.exc) as info:
            fn()
        message = str(info.value).lower()
        for w in self.words:
            assert w.lower() in message, f"{w!r} not in: {info.value}"
        return info.value


@dataclass
class Gives:
    check_result: object  # a function of the result: asserts

    def check(self, fn):
        self.check_result(fn())


def _shape(*shape, dtype=None):
    def check(result):
        data = result if isinstance(result, np.ndarray) else result.data
        assert data.shape == shape
        if dtype is not None:
            assert data.dtype == dtype
    return check


def _range(lo, hi, dtype=None):
    def check(result):
        data = result if isinstance(result, np.ndarray) else result.data
        assert (float(data.min()), float(data.max())) == pytest.approx((lo, hi), abs=1e-6)
        if dtype is not None:
            assert data.dtype == dtype
    return check


# --------------------------------------------------------------------------- arrays

rng = np.random.default_rng(0)
U8 = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)

ARRAYS = [
    # a single image without its batch axis: never read as a batch of slices
    ("single RGB (H, W, 3)", np.zeros((64, 64, 3), np.uint8), Raises(ValueError, ["X[None]"])),
    ("single RGBA (H, W, 4)", np.zeros((64, 64, 4), np.uint8), Raises(ValueError, ["X[None]"])),
    ("single grey (H, W, 1)", np.zeros((64, 64, 1), np.uint8), Raises(ValueError, ["X[None]"])),
    ("single 2-channel (H, W, 2)", np.zeros((64, 64, 2), np.uint8),
     Raises(ValueError, ["X[None]"])),
    ("channels-first single (3, H, W)", np.zeros((3, 64, 64), np.uint8),
     Raises(ValueError, ["transpose(1, 2, 0)[None]", "X[..., None]"])),
    ("2-D grey image", np.zeros((64, 64), np.uint8), Raises(ValueError, ["X[None]"])),
    ("1-D pixels", np.zeros(64, np.uint8), Raises(ValueError, ["(n, h, w)"])),
    ("5-D", np.zeros((1, 2, 32, 32, 3), np.uint8), Raises(ValueError, ["5-d"])),
    ("batch of 2 grey (2, H, W)", np.zeros((2, 64, 64), np.uint8), Gives(_shape(2, 64, 64))),
    ("batch of 4 grey", U8, Gives(lambda s: np.testing.assert_array_equal(s.data, U8))),
    ("single with batch axis (1, H, W, 3)", np.zeros((1, 64, 64, 3), np.uint8),
     Gives(_shape(1, 64, 64, 3))),
    ("(n, H, W, 1)", np.zeros((3, 64, 64, 1), np.uint8), Gives(_shape(3, 64, 64, 1))),
    ("3 grey images said explicitly (3, H, W, 1)", np.zeros((3, 64, 64, 1), np.uint8),
     Gives(_shape(3, 64, 64, 1))),
    ("channels-first batch (n, 3, H, W)", np.zeros((2, 3, 64, 64), np.uint8),
     Raises(ValueError, ["channels-last", "transpose(0, 2, 3, 1)"])),
    ("RGBA batch (n, H, W, 4)", np.zeros((2, 64, 64, 4), np.uint8),
     Raises(ValueError, ["X[..., :3]"])),
    ("5 channels", np.zeros((2, 64, 64, 5), np.uint8), Raises(ValueError, ["C=5"])),
    ("1x1 images", np.zeros((2, 1, 1, 3), np.uint8), Raises(ValueError, ["2x2"])),
    ("1 px high", np.zeros((2, 1, 64), np.uint8), Raises(ValueError, ["2x2"])),
    ("empty batch", np.zeros((0, 64, 64), np.uint8), Raises(ValueError, ["empty"])),
    # pixel scaling by type, never by the values present
    ("uint8 kept", U8, Gives(_range(U8.min(), U8.max(), np.uint8))),
    ("uint16 kept (scaled by 65535 later)", np.full((2, 8, 8), 4095, np.uint16),
     Gives(_range(4095, 4095, np.uint16))),
    ("bool -> 0/255", np.eye(8, dtype=bool)[None].repeat(2, 0), Gives(_range(0, 255, np.uint8))),
    ("int64 0..255", U8.astype(np.int64), Raises(ValueError, ["int64", "X.astype(np.uint8)"])),
    ("int32 0..4095", np.full((2, 8, 8), 4095, np.int32),
     Raises(ValueError, ["int32", "X.astype(np.uint16)"])),
    ("int16 negative", np.full((2, 8, 8), -5, np.int16), Raises(ValueError, ["negative"])),
    ("int8", np.zeros((2, 8, 8), np.int8), Raises(ValueError, ["int8", "uint8"])),
    ("uint32 above 16 bits", np.full((2, 8, 8), 70000, np.uint32),
     Raises(ValueError, ["uint32", "65535"])),
    ("uint32 small", np.full((2, 8, 8), 7, np.uint32), Raises(ValueError, ["uint32"])),
    ("uint64", np.zeros((2, 8, 8), np.uint64), Raises(ValueError, ["uint64"])),
    ("int64 beyond 16 bits (would wrap)", np.full((2, 8, 8), 70000, np.int64),
     Raises(ValueError, ["65535"])),
    ("float32 in [0, 1]", np.full((2, 8, 8), 0.5, np.float32), Gives(_range(0.5, 0.5))),
    ("float16 in [0, 1]", np.full((2, 8, 8), 0.25, np.float16), Gives(_range(0.25, 0.25))),
    ("float64 0..255", np.full((2, 8, 8), 200.0), Raises(ValueError, ["[0, 1]", "X / 255"])),
    ("float negative", np.full((2, 8, 8), -0.1), Raises(ValueError, ["[0, 1]"])),
    ("float NaN", np.array([np.zeros((8, 8)), np.full((8, 8), np.nan)]),
     Raises(ValueError, ["nan", "[1]"])),
    ("float inf", np.full((2, 8, 8), np.inf), Raises(ValueError, ["infinite"])),
    ("complex", np.zeros((2, 8, 8), np.complex64), Raises(ValueError, ["numeric"])),
    ("strings of 2-D", np.array([["a.png", "b.png"]]), Raises(ValueError, ["1-d"])),
    # containers
    ("None", None, Raises(ValueError, ["none"])),
    ("a single path string", "img.png", Raises(ValueError, ["list of paths"])),
    ("list of arrays of different sizes", [np.zeros((8, 8)), np.zeros((9, 9))],
     Raises(ValueError, ["different shapes"])),
    ("list mixing a path and an array", ["a.png", np.zeros((8, 8), np.uint8)],
     Raises(ValueError, ["mixes file paths", "X[1]"])),
    ("list mixing a path and a number", ["a.png", 3], Raises(ValueError, ["mixes file paths"])),
    ("DataFrame with 2 columns", pd.DataFrame({"a": ["x.png"], "b": ["y.png"]}),
     Raises(ValueError, ["one column"])),
]


@pytest.mark.parametrize("X, expect", [c[1:] for c in ARRAYS], ids=[c[0] for c in ARRAYS])
def test_arrays(X, expect):
    expect.check(lambda: check_images(X, check_files=False))


def test_uint16_scaled_by_type_not_by_neighbours():
    """An image's pixels never depend on the other images of the call."""
    from skcxr._steps import to_tensor

    dim = np.full((8, 8), 1000, np.uint16)
    alone = check_images(dim[None]).data[0]
    with_bright = check_images(np.stack([dim, np.full((8, 8), 65535, np.uint16)])).data[0]
    assert to_tensor(alone).max() == to_tensor(with_bright).max() == pytest.approx(1000 / 65535)


# --------------------------------------------------------------------------- files


def _save(path, im, **kw):
    im.save(path, **kw)
    return str(path)


def _exif_rotated(path):
    """A 64-wide, 32-high picture whose EXIF says: rotate 90 degrees clockwise to view."""
    im = Image.new("L", (64, 32), 0)
    im.paste(255, (0, 0, 8, 8))  # a bright corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(path, im, exif=exif.tobytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("battery")
    grey = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    f = {
        "png": _save(d / "grey.png", grey), "jpg": _save(d / "rgb.jpg", rgb, quality=95),
        "PNG upper": _save(d / "UPPER.PNG", grey), "bmp": _save(d / "x.bmp", rgb),
        "tiff": _save(d / "x.tif", grey),
        "png16": _save(d / "x16.png", Image.fromarray(np.full((16, 16), 4095, np.uint16))),
        "rgba": _save(d / "rgba.png", Image.new("RGBA", (16, 16), (255, 0, 0, 0))),
        "la": _save(d / "la.png", Image.new("LA", (16, 16), (200, 255))),
        "palette": _save(d / "p.png", rgb.convert("P")),
        "cmyk": _save(d / "cmyk.jpg", rgb.convert("CMYK")),
        "1bit": _save(d / "bw.png", grey.convert("1")),
        "float ok": _save(d / "f_ok.tif", Image.fromarray(np.full((16, 16), 0.25, np.float32))),
        "float HU": _save(d / "f_hu.tif", Image.fromarray(
            np.linspace(-1000, 3000, 256, dtype=np.float32).reshape(16, 16))),
        "float NaN": _save(d / "f_nan.tif", Image.fromarray(np.full((16, 16), np.nan,
                                                                     np.float32))),
        "int32 big": _save(d / "i32.tif", Image.fromarray(np.full((16, 16), 70000, np.int32))),
        "int32 negative": _save(d / "i32n.tif", Image.fromarray(np.full((16, 16), -3,
                                                                          np.int32))),
        "exif": _exif_rotated(d / "exif.jpg"),
        "1x1": _save(d / "one.png", Image.new("L", (1, 1))),
        "1x64": _save(d / "line.png", Image.new("L", (64, 1))),
        "2x2": _save(d / "two.png", Image.new("L", (2, 2), 128)),
    }
    jpg, png = Path(f["jpg"]).read_bytes(), Path(f["png"]).read_bytes()
    (d / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (d / "trunc.png").write_bytes(png[: len(png) // 2])
    corrupt = bytearray(png)  # whole, but its image data damaged: found only when decoded
    corrupt[len(png) // 2:len(png) // 2 + 64] = b"\xff" * 64
    (d / "corrupt.png").write_bytes(bytes(corrupt))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    (d / "text.jpg").write_text("not an image either")
    (d / "dir.png").mkdir()
    (d / "anim.gif").write_bytes(b"GIF89a")
    os.symlink(d / "loop_b.png", d / "loop_a.png")
    os.symlink(d / "loop_a.png", d / "loop_b.png")
    os.symlink(d / "gone.png", d / "broken.png")
    f.update({k: str(d / n) for k, n in [
        ("truncated jpg", "trunc.jpg"), ("truncated png", "trunc.png"),
        ("corrupt png", "corrupt.png"), ("empty", "empty.png"),
        ("text png", "text.png"), ("text jpg", "text.jpg"), ("directory", "dir.png"),
        ("gif", "anim.gif"), ("symlink loop", "loop_a.png"), ("broken symlink", "broken.png"),
        ("missing", "nope.png")]})
    return f


FILES_CHECK = [  # check_images([path]): what is found before any pixel is decoded
    ("png", None), ("jpg", None), ("PNG upper", None), ("bmp", None), ("tiff", None),
    ("png16", None), ("2x2", None),
    ("empty", Raises(ImageReadError, ["empty", "0 bytes"])),
    ("text png", Raises(ImageReadError, ["text.png", "not a valid"])),
    ("text jpg", Raises(ImageReadError, ["text.jpg", "not a valid"])),
    ("directory", Raises(FileNotFoundError, ["dir.png", "is a directory"])),
    ("missing", Raises(FileNotFoundError, ["nope.png", "does not exist"])),
    ("symlink loop", Raises(FileNotFoundError, ["loop_a.png", "symbolic link loop"])),
    ("broken symlink", Raises(FileNotFoundError, ["broken.png", "broken symbolic link",
                                                  "gone.png"])),
    ("gif", Raises(ValueError, ["'.gif'", "supported"])),
    ("1x1", Raises(ImageReadError, ["one.png", "1x1", "2x2"])),
    ("1x64", Raises(ImageReadError, ["line.png", "64x1"])),
    ("truncated jpg", Raises(ImageReadError, ["trunc.jpg", "truncated", "end marker"])),
    ("truncated png", Raises(ImageReadError, ["trunc.png", "truncated"])),
    ("corrupt png", None),  # complete, damaged inside: only decoding can tell
    ("exif", None), ("float HU", None), ("cmyk", None),
]


@pytest.mark.parametrize("name, expect", FILES_CHECK, ids=[c[0] for c in FILES_CHECK])
def test_files_checked_up_front(files, name, expect):
    if expect is None:
        assert check_images([files[name]]).kind == "paths"
    else:
        expect.check(lambda: check_images([files[name]]))


FILES_READ = [  # read_image(path): pixels, with the same rules as arrays
    ("png", Gives(_shape(64, 64, dtype=np.uint8))),
    ("jpg", Gives(_shape(64, 64, 3, dtype=np.uint8))),
    ("bmp", Gives(_shape(64, 64, 3, dtype=np.uint8))),
    ("tiff", Gives(_shape(64, 64, dtype=np.uint8))),
    ("png16", Gives(_range(4095 / 65535, 4095 / 65535, np.float32))),
    ("rgba", Gives(_range(0, 0, np.uint8))),  # transparent red composited onto black
    ("la", Gives(_shape(16, 16, 3, dtype=np.uint8))),
    ("palette", Gives(_shape(64, 64, 3, dtype=np.uint8))),
    ("cmyk", Gives(_shape(64, 64, 3, dtype=np.uint8))),
    ("1bit", Gives(_shape(64, 64, dtype=np.uint8))),
    ("float ok", Gives(_range(0.25, 0.25, np.float32))),
    ("float HU", Raises(ImageReadError, ["f_hu.tif", "[-1000, 3000]", "[0, 1]"])),
    ("float NaN", Raises(ImageReadError, ["f_nan.tif", "[0, 1]"])),
    ("int32 big", Raises(ImageReadError, ["i32.tif", "16 bits"])),
    ("int32 negative", Raises(ImageReadError, ["i32n.tif", "16 bits"])),
    ("truncated jpg", Raises(ImageReadError, ["trunc.jpg", "truncated"])),
    ("truncated png", Raises(ImageReadError, ["trunc.png"])),
    ("corrupt png", Raises(ImageReadError, ["corrupt.png", "corrupt"])),
    ("1x1", Raises(ImageReadError, ["one.png", "2x2"])),
    ("2x2", Gives(_range(128, 128, np.uint8))),
]


@pytest.mark.parametrize("name, expect", FILES_READ, ids=[c[0] for c in FILES_READ])
def test_files_decoded(files, name, expect):
    expect.check(lambda: read_image(files[name]))


def test_decoded_arrays_are_writable(files):
    for name in ("png", "jpg", "float ok", "png16"):
        assert read_image(files[name]).flags.writeable


def test_exif_orientation_is_applied(files):
    img = read_image(files["exif"])
    assert img.shape == (64, 32)  # stood up: 64 high, 32 wide
    assert img[:8, -8:].mean() > 200  # the stored top-left corner is now top right
    assert img[:8, :8].mean() < 50


def test_decompression_bomb_is_named_with_the_override(files, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2 x 1000
    Raises(ImageReadError, ["grey.png", "decompression-bomb", "MAX_IMAGE_PIXELS"]).check(
        lambda: check_images([files["png"]]))


def test_unreadable_file_says_permission_not_invalid(files, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("grey.png")
                        else real(p, mode))
    Raises(PermissionError, ["grey.png", "permission"]).check(
        lambda: check_images([files["png"]]))


def test_permission_error_while_decoding_is_not_called_corrupt(files, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    Raises(PermissionError, ["grey.png", "permission denied"]).check(
        lambda: read_image(files["png"]))


# --------------------------------------------------------------------------- parameters


@pytest.fixture
def decodes(monkeypatch):
    """Counts images decoded: bad input must fail with 0."""
    calls = []
    real = images_module.read_image

    def counting(path, data=None):
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(images_module, "read_image", counting)
    return calls


TINY = dict(backbone="test_efficientnet", weights=None, image_size=48, random_state=0,
            precision="fp32", max_epochs=1, batch_size=16, engine="torch")


class _NotForImages(torch.nn.Module):
    def forward(self, x):
        return x.reshape(len(x), 5, -1) @ torch.zeros(7, 2)  # a shape error on any image


PARAMS = [  # (id, classifier parameters, fit keyword arguments, expected error)
    ("random_state str", {"random_state": "abc"}, {}, Raises(ValueError, ["random_state"])),
    ("lr str", {"lr": "fast"}, {}, Raises(ValueError, ["'lr'", "float"])),
    ("lr negative", {"lr": -1.0}, {}, Raises(ValueError, ["'lr'"])),
    ("lr NaN", {"lr": float("nan")}, {}, Raises(ValueError, ["'lr'"])),
    ("validation_fraction None", {"validation_fraction": None}, {},
     Raises(ValueError, ["validation_fraction"])),
    ("validation_fraction 1", {"validation_fraction": 1.0}, {},
     Raises(ValueError, ["validation_fraction"])),
    ("validation_fraction negative", {"validation_fraction": -0.1}, {},
     Raises(ValueError, ["validation_fraction"])),
    ("image_size huge", {"image_size": 100_000}, {}, Raises(ValueError, ["image_size", "4096"])),
    ("image_size 0", {"image_size": 0}, {}, Raises(ValueError, ["image_size"])),
    ("image_size pair too big", {"image_size": (64, 50_000)}, {},
     Raises(ValueError, ["image_size"])),
    ("batch_size 0", {"batch_size": 0}, {}, Raises(ValueError, ["batch_size"])),
    ("max_epochs 0", {"max_epochs": 0}, {}, Raises(ValueError, ["max_epochs"])),
    ("max_epochs float", {"max_epochs": 2.5}, {}, Raises(ValueError, ["max_epochs"])),
    ("n_trainable_layers -2", {"n_trainable_layers": -2}, {},
     Raises(ValueError, ["n_trainable_layers"])),
    ("n_trainable_layers unknown name", {"n_trainable_layers": "no_such_block"}, {},
     Raises(ValueError, ["no_such_block"])),
    ("unknown backbone", {"backbone": "no_such_net_xyz"}, {}, Raises(ValueError,
                                                                     ["no_such_net_xyz"])),
    ("module that cannot take images", {"backbone": _NotForImages()}, {},
     Raises(ValueError, ["_NotForImages", "cannot take a batch of images"])),
    ("weights file missing", {"weights": "/nonexistent/w.pth"}, {},
     Raises(Exception, ["/nonexistent/w.pth"])),
    ("device unknown", {"device": "tpu"}, {}, Raises(ValueError, ["device"])),
    ("precision unknown", {"precision": "fp8"}, {}, Raises(ValueError, ["precision"])),
    ("engine unknown", {"engine": "tensorrt"}, {}, Raises(ValueError, ["engine"])),
    ("optimizer unknown", {"optimizer": "lbfgs"}, {}, Raises(ValueError, ["optimizer"])),
    ("resize unknown", {"resize": "squash"}, {}, Raises(ValueError, ["resize"])),
    ("in_chans 2", {"in_chans": 2}, {}, Raises(ValueError, ["in_chans"])),
    ("dropout 1.5", {"dropout": 1.5}, {}, Raises(ValueError, ["dropout"])),
    ("class_weight negative", {"class_weight": {0: -1.0}}, {},
     Raises(ValueError, ["class_weight", ">= 0"])),
    ("class_weight NaN", {"class_weight": {0: float("nan")}}, {},
     Raises(ValueError, ["class_weight"])),
    ("class_weight unknown class", {"class_weight": {7: 2.0}}, {},
     Raises(ValueError, ["unknown classes", "[7]"])),
    ("class_weight 'auto'", {"class_weight": "auto"}, {}, Raises(ValueError, ["class_weight"])),
    ("train_size larger than data", {"train_size": 10_000}, {},
     Raises(ValueError, ["train_size"])),
    ("memory is a file", {"memory": "FILE"}, {}, Raises(ValueError, ["is a file", "memory"])),
    ("memory cannot be created", {"memory": "UNDER_FILE"}, {},
     Raises(ValueError, ["cannot be created", "memory"])),
    ("memory empty string", {"memory": ""}, {}, Raises(ValueError, ["memory"])),
    ("sample_weight NaN", {}, {"sample_weight": "NAN"}, Raises(ValueError, ["sample_weight"])),
    ("sample_weight negative", {}, {"sample_weight": "NEG"},
     Raises(ValueError, ["sample_weight"])),
    ("sample_weight wrong length", {}, {"sample_weight": "SHORT"},
     Raises(ValueError, ["sample_weight", "shape"])),
    ("y mixed int and str", {}, {"y": "MIXED"}, Raises(ValueError, ["mixes label types"])),
    ("y continuous", {}, {"y": "FLOAT"}, Raises(ValueError, ["continuous"])),
    ("y one class", {}, {"y": "ONE"}, Raises(ValueError, ["single class"])),
    ("y NaN", {}, {"y": "NAN"}, Raises(ValueError, ["nan"])),
    ("y None", {}, {"y": "NONE"}, Raises(ValueError, ["y is required"])),
    ("y wrong length", {}, {"y": "SHORT"}, Raises(ValueError, ["different lengths"])),
]


def _fit_inputs(kind, tmp_path, X, y):
    n = len(X)
    special = {
        "NAN": np.r_[np.ones(n - 1), np.nan], "NEG": np.r_[np.ones(n - 1), -1.0],
        "SHORT": np.ones(n - 1), "MIXED": np.array([0, "a"] * (n // 2), dtype=object),
        "FLOAT": np.linspace(0, 1, n) + 0.01, "ONE": np.zeros(n, int),
        "NONE": None,
    }
    return special[kind]


@pytest.mark.parametrize("params, fit_kw, expect", [c[1:] for c in PARAMS],
                         ids=[c[0] for c in PARAMS])
def test_parameters_fail_before_any_decoding(sample_paths, tmp_path, decodes, params, fit_kw,
                                             expect):
    X, y = sample_paths
    (tmp_path / "a_file").write_text("")
    params = dict(params)
    if params.get("memory") == "FILE":
        params["memory"] = str(tmp_path / "a_file")
    elif params.get("memory") == "UNDER_FILE":
        params["memory"] = str(tmp_path / "a_file" / "cache")
    kw = {}
    for k, v in fit_kw.items():
        value = _fit_inputs(v, tmp_path, X, y)
        if k == "y":
            y = value[:-1] if v == "SHORT" else value
        else:
            kw[k] = value
    if fit_kw.get("y") == "SHORT":
        y = np.asarray(sample_paths[1])[:-1]
    clf = PretrainedCNNClassifier(**{**TINY, **params})
    expect.check(lambda: clf.fit(X, y, **kw))
    assert decodes == []
    assert not hasattr(clf, "classes_")


# --------------------------------------------------------------------------- multi-label

LABELS = ["effusion", "nodule", "mass"]


def _multilabel(n):
    y = np.zeros((n, 3), int)
    y[::2, 0] = y[1::2, 1] = y[::3, 2] = 1
    return y


MULTILABEL_WEIGHTS = [
    ("column index", {1: 3.0}, False, Gives(lambda w: np.testing.assert_allclose(w, [1, 3, 1]))),
    ("label name with DataFrame y", {"nodule": 3.0}, True,
     Gives(lambda w: np.testing.assert_allclose(w, [1, 3, 1]))),
    ("label name without names", {"nodule": 3.0}, False,
     Raises(ValueError, ["'nodule'", "0..2", "DataFrame"])),
    ("unknown label name", {"fracture": 2.0}, True,
     Raises(ValueError, ["'fracture'", "effusion"])),
    ("index out of range", {5: 2.0}, False, Raises(ValueError, ["5", "0..2"])),
    ("negative weight", {0: -2.0}, False, Raises(ValueError, [">= 0"])),
    ("balanced", "balanced", False, Gives(lambda w: np.testing.assert_array_less(0, w))),
]


@pytest.mark.filterwarnings("ignore:Multi-label y")  # 40 rows: rare labels, warned
@pytest.mark.parametrize("cw, frame, expect", [c[1:] for c in MULTILABEL_WEIGHTS],
                         ids=[c[0] for c in MULTILABEL_WEIGHTS])
def test_multilabel_class_weight_keys(cw, frame, expect):
    from skcxr.protocol import fit_rows

    y = _multilabel(40)
    if frame:
        y = pd.DataFrame(y, columns=LABELS)
    expect.check(lambda: fit_rows(y, class_weight=cw, seed=0).class_weight)


# --------------------------------------------------------------------------- faults in fit


def _same_state(a, b):
    sa, sb = a.module_.state_dict(), b
    return all(torch.equal(sa[k], sb[k]) for k in sb)


@pytest.fixture
def fitted_clf(sample_paths):
    X, y = sample_paths
    return PretrainedCNNClassifier(**TINY).fit(X, y)


def test_failed_refit_leaves_the_previous_model(fitted_clf, sample_paths):
    X, y = sample_paths
    before = {k: v.clone() for k, v in fitted_clf.module_.state_dict().items()}
    classes = fitted_clf.classes_.copy()
    with pytest.raises(ValueError):
        fitted_clf.fit(X, np.where(y == y[0], "a", "b").astype(object) * 0)  # one class
    with pytest.raises(ValueError):
        fitted_clf.set_params(lr="fast").fit(X, np.array(["x", "y"] * (len(y) // 2)))
    np.testing.assert_array_equal(fitted_clf.classes_, classes)
    assert _same_state(fitted_clf, before)


_CTRL_C = []  # calls of _ctrl_c: a function, so clones (deep copies) share it


def _ctrl_c(image):
    """An augmentation that is a Ctrl-C in the middle of training."""
    _CTRL_C.append(1)
    raise KeyboardInterrupt


def test_interrupt_propagates_and_leaves_the_previous_model(fitted_clf, sample_paths):
    X, y = sample_paths
    before = {k: v.clone() for k, v in fitted_clf.module_.state_dict().items()}
    history = fitted_clf.history_.copy()
    with pytest.raises(KeyboardInterrupt):
        fitted_clf.set_params(max_epochs=3, augment=_ctrl_c).fit(X, y)
    fitted_clf.set_params(augment=None)
    assert _same_state(fitted_clf, before)
    pd.testing.assert_frame_equal(fitted_clf.history_, history)


@pytest.mark.parametrize("runner", ["cross_val_score", "GridSearchCV"])
def test_interrupt_stops_cross_validation_too(sample_paths, runner):
    """Not scored as a failed fold (error_score) and carried on from: the search stops."""
    from sklearn.model_selection import GridSearchCV, cross_val_score

    X, y = sample_paths
    _CTRL_C.clear()
    clf = PretrainedCNNClassifier(**TINY, augment=_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        if runner == "cross_val_score":
            cross_val_score(clf, X, y, cv=3, error_score=np.nan)
        else:
            GridSearchCV(clf, {"lr": [1e-3, 1e-2]}, cv=3, error_score=np.nan).fit(X, y)
    assert len(_CTRL_C) == 1


def test_nan_loss_stops_the_fit_naming_the_epoch(sample_paths):
    X, y = sample_paths
    clf = PretrainedCNNClassifier(**{**TINY, "lr": 1e38, "max_epochs": 3,
                                     "n_trainable_layers": 2, "optimizer": "sgd"})
    err = Raises(FloatingPointError, ["epoch", "learning rate", "lr="]).check(
        lambda: clf.fit(X, y))
    assert "epoch 1" in str(err) or "epoch 2" in str(err) or "epoch 3" in str(err)
    assert not hasattr(clf, "module_")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_checkpoint_with_non_finite_weights_is_rejected(tmp_path, sample_paths, value):
    from skcxr import load_backbone

    model = load_backbone("test_efficientnet", None, random_state=0).module
    sd = model.state_dict()
    name = next(k for k, v in sd.items() if v.is_floating_point())
    sd[name] = sd[name].clone().fill_(value)
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    X, y = sample_paths
    Raises(ValueError, ["diverged.pth", "nan or infinite", name]).check(
        lambda: PretrainedCNNClassifier(**{**TINY, "weights": str(path)}).fit(X, y))


def test_truncated_safetensors_is_named(tmp_path):
    pytest.importorskip("safetensors")
    from skcxr import load_backbone

    path = tmp_path / "cut.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    Raises(ValueError, ["cut.safetensors", "safetensors"]).check(
        lambda: load_backbone("test_efficientnet", str(path)))


def test_unseeded_random_weights_differ_between_fits(sample_paths):
    X, _ = sample_paths
    kw = {**TINY, "random_state": None}
    a = FeatureExtractorTransformer(**{k: v for k, v in kw.items()
                                       if k not in ("max_epochs", "batch_size")}).fit(X[:2])
    b = FeatureExtractorTransformer(**a.get_params()).fit(X[:2])
    assert not np.allclose(a.transform(X[:2]), b.transform(X[:2]))


# --------------------------------------------------------------------------- the disk cache


def _fe(memory, **kw):
    return FeatureExtractorTransformer(**{**{k: v for k, v in TINY.items()
                                             if k not in ("max_epochs", "batch_size")},
                                          "image_size": 32,
                                          "memory": None if memory is None else str(memory),
                                          **kw})


def _entries(memory):
    return sorted(Path(memory).glob("skcxr-features/*/*/*.entry"))


def _poison_truncate(path, other):
    path.write_bytes(path.read_bytes()[:-7])


def _poison_flip(path, other):
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # tampered value, same size
    path.write_bytes(bytes(blob))


def _poison_shape(path, other):  # valid checksum, right namespace, wrong shape
    ns = path.parent.parent.name
    path.write_bytes(encode_entry(ns, np.zeros(5, np.float32)))


def _poison_dtype(path, other):
    ns = path.parent.parent.name
    good = decode_entry(path.read_bytes(), ns)
    path.write_bytes(encode_entry(ns, good.astype(np.float64)))


def _poison_namespace(path, other):  # a valid entry of another namespace
    path.write_bytes(encode_entry("0" * 24, decode_entry(path.read_bytes(),
                                                         path.parent.parent.name)))


def _poison_npy(path, other):  # a plain .npy, as version 1 wrote
    with open(path, "wb") as f:
        np.save(f, np.ones(8, np.float32))


def _poison_version(path, other):
    blob = bytearray(path.read_bytes())
    blob[len(b"skcxr-entry")] = ENTRY_VERSION + 1
    path.write_bytes(bytes(blob))


def _poison_swap(path, other):  # another image's (valid) entry under this key
    path.write_bytes(other.read_bytes())


POISONS = [_poison_truncate, _poison_flip, _poison_shape, _poison_dtype, _poison_namespace,
           _poison_npy, _poison_version]


@pytest.mark.parametrize("poison", POISONS, ids=[p.__name__[8:] for p in POISONS])
def test_a_bad_disk_entry_is_a_miss_recomputed_and_replaced(tmp_path, sample_paths, poison):
    X, _ = sample_paths
    expected = _fe(tmp_path).fit(X[:2]).transform(X)
    entries = _entries(tmp_path)
    assert len(entries) == len(X)
    poison(entries[0], entries[1])
    clear_cache()
    got = _fe(tmp_path).fit(X[:2]).transform(X)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # all but the recomputed row (in a batch of 1: other rounding) come from disk as stored
    assert sum(not np.array_equal(g, e) for g, e in zip(got, expected)) <= 1
    info = cache_info()["features"]
    assert (info["rejected"], info["computed"], info["disk_hits"]) == (1, 1, len(X) - 1)
    ns = entries[0].parent.parent.name
    assert decode_entry(entries[0].read_bytes(), ns) is not None  # replaced by a good one
    clear_cache()
    _fe(tmp_path).fit(X[:2]).transform(X)
    assert (cache_info()["features"]["rejected"], cache_info()["features"]["computed"]) == (0, 0)


def test_a_swapped_entry_is_served_the_documented_limit(tmp_path, sample_paths):
    """What a shared directory is trusted with: an entry valid for its namespace is served
    under whatever key it is stored (keys are not inside entries). docs/checks.md says so."""
    X, _ = sample_paths
    expected = _fe(tmp_path).fit(X[:2]).transform(X)
    entries = _entries(tmp_path)
    _poison_swap(entries[0], entries[1])
    clear_cache()
    got = _fe(tmp_path).fit(X[:2]).transform(X)
    assert cache_info()["features"]["rejected"] == 0
    assert sum(not np.array_equal(g, e) for g, e in zip(got, expected)) == 1


def test_a_bad_entry_never_reaches_estimators_without_memory(tmp_path, sample_paths):
    X, _ = sample_paths
    expected = _fe(tmp_path).fit(X[:2]).transform(X)
    _poison_dtype(_entries(tmp_path)[0], None)
    clear_cache()
    _fe(tmp_path).fit(X[:2]).transform(X)
    no_memory = FeatureExtractorTransformer(**_fe(tmp_path).get_params()).set_params(
        memory=None).fit(X[:2])
    np.testing.assert_allclose(no_memory.transform(X), expected, atol=1e-6)


def test_cache_files_follow_the_umask(tmp_path, sample_paths):
    X, _ = sample_paths
    old = os.umask(0o002)  # a group-shared cache
    try:
        _fe(tmp_path).fit(X[:2]).transform(X[:3])
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in _entries(tmp_path)}
    assert modes == {0o664}


def _failing_writes(monkeypatch, root, err=errno.EROFS, after=0):
    """Writes under ``root`` fail with ``err`` (read-only file system, disk full), after
    ``after`` files were created there: what a remount or a full disk does. Root ignores
    permissions, so os.open and os.mkdir are where it is simulated."""
    root = os.fspath(root)
    real_open, real_mkdir = os.open, os.mkdir
    created = []

    def under(path):
        return os.fspath(os.path.abspath(path)).startswith(root)

    def fake_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            if len(created) >= after:
                raise OSError(err, os.strerror(err), os.fspath(path))
            created.append(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path) and not os.path.isdir(path) and len(created) >= after:
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return created


def test_read_only_cache_with_the_entries_is_used(tmp_path, sample_paths, monkeypatch):
    X, _ = sample_paths
    expected = _fe(tmp_path).fit(X[:2]).transform(X[:6])
    clear_cache()
    before = {p: p.stat().st_mtime_ns for p in _entries(tmp_path)}
    _failing_writes(monkeypatch, tmp_path)  # as if remounted read-only
    with pytest.warns(UserWarning, match="not writable"):
        got = _fe(tmp_path).fit(X[:2]).transform(X)  # 6 on disk, 6 new
    np.testing.assert_array_equal(got[:6], expected)
    info = cache_info()["features"]
    assert (info["disk_hits"], info["computed"]) == (6, len(X) - 6)
    assert {p: p.stat().st_mtime_ns for p in _entries(tmp_path)} == before  # nothing written
    assert not list(tmp_path.glob("skcxr-features/*/*/*.claim"))


def test_read_only_cache_warns_before_work(tmp_path, sample_paths, monkeypatch, decodes):
    X, _ = sample_paths
    root = tmp_path / "ro"
    root.mkdir()
    _failing_writes(monkeypatch, root)
    fe = _fe(root).fit(X[:2])
    decodes.clear()
    with pytest.warns(UserWarning, match="not writable") as record:
        fe.transform(X[:3])
    assert len(record) == 1


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["disk full", "read-only"])
@pytest.mark.parametrize("estimator", ["transformer", "classifier"])
def test_a_cache_disk_that_fills_up_warns_once_and_the_work_finishes(
        tmp_path, sample, monkeypatch, err, estimator):
    """The cache is an optimisation: a write that fails mid-run (disk full, a file system
    remounted read-only) is warned once, naming the directory and the cause, and the
    results come from memory, equal to a run without the disk cache."""
    idx = np.r_[0:20, 150:170]
    X, y = sample.data[idx], sample.target[idx]
    if estimator == "transformer":
        def run(memory):
            return _fe(memory).fit(X[:2]).transform(X)
    else:
        def run(memory):
            clf = PretrainedCNNClassifier(**{**TINY, "memory": memory, "max_epochs": 2})
            return clf.fit(X, y).predict_proba(X)

    expected = run(None)
    clear_cache()
    root = tmp_path / "cache"
    created = _failing_writes(monkeypatch, root, err, after=12)
    with config_context(cache_chunk=4, claim_chunk=4), \
            pytest.warns(UserWarning, match=os.strerror(err)) as record:
        got = run(str(root))
    assert sum(str(root) in str(w.message) for w in record) == 1
    # the same numbers, up to the rounding of other batch sizes (chunks of 4 here)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(created) == 12  # nothing tried after the first failure
    assert not list(root.rglob("*.tmp"))  # nothing half-written
    for path in _entries(root):  # what was stored is whole
        assert decode_entry(path.read_bytes(), path.parent.parent.name) is not None


def test_truncated_file_keeps_the_work_before_it(tmp_path, sample_paths, files):
    X, _ = sample_paths
    bad = np.array(list(X[:9]) + [files["corrupt png"]] + list(X[9:]), dtype=object)
    for memory in (None, tmp_path):
        clear_cache()
        fe = _fe(memory) if memory else _fe(tmp_path).set_params(memory=None)
        fe.fit(X[:2])
        with config_context(cache_chunk=4, claim_chunk=4):
            err = Raises(ImageReadError, ["corrupt.png", "8 image(s) computed before it are "
                                          "cached", "resume"]).check(lambda: fe.transform(bad))
        assert ("in " + str(tmp_path)) in str(err) if memory else "memory" in str(err)
        assert cache_info()["features"]["computed"] == 8
        fe.transform(X[:8])  # all from the cache
        assert cache_info()["features"]["computed"] == 8
    assert len(_entries(tmp_path)) == 8


def test_concurrent_transform_on_one_estimator(sample_paths):
    X, _ = sample_paths
    fe = _fe(".").set_params(memory=None, cache=False).fit(X[:2])
    expected = fe.transform(X)
    out, errors = [None] * 4, []

    def work(i):
        try:
            out[i] = fe.transform(X)
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for o in out:
        np.testing.assert_array_equal(o, expected)


# --------------------------------------------------------------------------- datasets


def test_nih_csv_with_an_empty_path_cell(tmp_path):
    from skcxr import load_nih_csv

    csv = tmp_path / "labels.csv"
    pd.DataFrame({"path": ["a.png", None, "c.png"],
                  "finding_labels": ["Mass", "No Finding", "Nodule"]}).to_csv(csv, index=False)
    Raises(ValueError, ["'path'", "empty", "1 row", "[3]"]).check(lambda: load_nih_csv(csv))


def test_entry_header_is_json_with_what_the_entry_must_be():
    blob = encode_entry("ns", np.arange(6, dtype=np.float32).reshape(2, 3))
    start = len(b"skcxr-entry") + 5
    n = int.from_bytes(blob[len(b"skcxr-entry") + 1:start], "little")
    assert json.loads(blob[start:start + n]) == {"namespace": "ns", "dtype": "<f4",
                                                 "shape": [2, 3]}
    np.testing.assert_array_equal(decode_entry(blob, "ns", np.float32, (2, 3)),
                                  np.arange(6).reshape(2, 3))
    assert decode_entry(blob, "ns", np.float32, (3, 2)) is None
    assert decode_entry(blob, "other") is None


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_unreachable_hub_fails_at_once(name, monkeypatch):
    import socket
    import time

    from skcxr import WeightsUnavailableError, load_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", os.devnull + "-none")  # no torchvision file cached

    def unreachable(*a, **k):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    Raises(WeightsUnavailableError, ["cannot be reached", "checked once"]).check(
        lambda: load_backbone(name, "imagenet"))
    assert time.perf_counter() - start < 5


def test_the_decode_counter_counts(sample_paths, decodes):
    """The control for every "0 decoded" assertion above."""
    X, y = sample_paths
    PretrainedCNNClassifier(**TINY).fit(X, y)
    assert len(decodes) == len(X)


@pytest.mark.parametrize("memory", [False, True], ids=["in memory", "on disk"])
@pytest.mark.parametrize("estimator", ["transformer", "augmented classifier"])
def test_an_image_rewritten_during_a_call_never_poisons_another_files_entry(
        tmp_path, sample_paths, monkeypatch, memory, estimator):
    """The file is hashed when the call starts and rewritten before it is decoded: its new
    pixels must not be stored under the old bytes' hash, where an untouched file holding the
    old bytes (a copy of it) would find them later."""
    X, y = sample_paths
    racy, copy, other = tmp_path / "racy.jpeg", tmp_path / "copy.jpeg", X[-1]
    racy.write_bytes(Path(X[1]).read_bytes())
    copy.write_bytes(racy.read_bytes())
    batch = np.array([X[0], str(racy)], dtype=object)
    store = str(tmp_path / "cache") if memory else None
    if estimator == "transformer":
        fe = _fe(store).set_params(memory=store, batch_size=1).fit(X[:2])

        def run(paths):
            return fe.transform(paths)

        truth = FeatureExtractorTransformer(**fe.get_params()).set_params(
            cache=False, memory=None).fit(X[:2])

        def true_output(paths):
            return truth.transform(paths)
    else:
        params = {**TINY, "augment": "flip", "memory": store, "max_epochs": 1}

        def run(paths):  # decoded images are cached (augmentation): train on them
            clf = PretrainedCNNClassifier(**params).fit(np.r_[paths, X[2:]],
                                                        np.r_[y[:2], y[2:]])
            return clf.predict_proba(np.r_[paths, X[2:]])

        def true_output(paths):
            clear_cache()
            params["memory"] = None
            return run(paths)

    real = images_module.read_image
    rewritten = []

    def rewrite_when_the_first_is_decoded(path, data=None):
        if not rewritten and path == X[0]:
            rewritten.append(1)  # another program writes racy.jpeg now
            racy.write_bytes(Path(other).read_bytes())
        return real(path, data)

    monkeypatch.setattr(images_module, "read_image", rewrite_when_the_first_is_decoded)
    with pytest.raises(ImageReadError, match="racy.jpeg' changed while skcxr was reading it"):
        run(batch)
    monkeypatch.setattr(images_module, "read_image", real)
    assert rewritten
    got = run(np.array([X[0], str(copy)], dtype=object))  # the old bytes, untouched
    np.testing.assert_allclose(got, true_output(np.array([X[0], str(copy)], dtype=object)),
                               rtol=1e-5, atol=1e-6)

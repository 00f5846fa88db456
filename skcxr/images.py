"""Image inputs: what ``X`` may be, reading PNG/JPEG/DICOM, preprocessing and batched streaming.

Every estimator in skcxr accepts the same ``X``:

* a 1-D array-like of file paths (``str`` or :class:`os.PathLike`), a pandas Series of
  paths, or a 2-D ``(n, 1)`` array / one-column DataFrame of paths (the form that
  imbalanced-learn samplers and ``ColumnTransformer`` hand over);
* a numpy array of images, ``(n, H, W)`` grayscale or ``(n, H, W, C)`` with ``C`` in
  {1, 3} (channels last).

Pixel value convention (the same for arrays and files): ``uint8`` and ``uint16`` are scaled
by the maximum of their *type* (255, 65535; never by the values present, so an image's
pixels never depend on the other images of a call, and a 12-bit image stored in ``uint16``
looks dark: rescale it yourself or save it with its full range); ``bool`` is 0 or 255;
floating-point pixels must already lie in ``[0, 1]``. Other integer types (signed, 32/64-bit)
have no defined scale and are rejected with the conversion to use. DICOM files go through
the modality LUT (rescale slope/intercept) and the VOI LUT or window, are scaled to
``[0, 1]`` and MONOCHROME1 images are inverted so that bone is bright in every input.
Files are turned upright by their EXIF orientation tag.

Shape rule for arrays: 3-D arrays are ``(n, H, W)`` batches of grey images, 4-D arrays
``(n, H, W, C)``. A single image must get its batch axis (``X[None]``): a 3-D array whose
last axis has at most 4 entries (``(H, W, 3)``, an image 3 pixels wide is no image) or
whose first axis is 3 (``(3, H, W)``: one channels-first RGB image or three grey ones
cannot be told apart) is rejected with the fix for each reading. Images must be at least
2x2 pixels, files and arrays alike.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ._files import SUPPORTED_EXTENSIONS, check_path, read_bytes, read_image
from ._validation import NONE, Check, ImageReadError, Interval, Options, validate

__all__ = [
    "DataConfig",
    "ImageDataset",
    "ImageReadError",
    "ImageSource",
    "Preprocessing",
    "SUPPORTED_EXTENSIONS",
    "VIEWS",
    "apply_view",
    "check_images",
    "make_loader",
    "make_preprocessing",
    "read_image",
]

RESIZE_MODES = ("stretch", "pad", "crop")
#: The largest ``image_size`` side: a batch of 32 RGB float images of 4096^2 is 6 GiB already.
MAX_IMAGE_SIZE = 4096
NORMALIZATIONS = ("backbone", "imagenet", "centered", "unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, eq=False)
class ImageSource:
    """Validated images: either an object array of paths or a numeric image array."""

    kind: str  # "paths" or "arrays"
    data: np.ndarray
    _keys: list = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.data)

    def subset(self, indices) -> ImageSource:
        indices = np.asarray(indices, dtype=int)
        keys = [self._keys[i] for i in indices] if self._keys else []
        return ImageSource(self.kind, self.data[indices], keys)

    def keys(self) -> list[str]:
        """A content hash per image, for caches: equal keys mean identical pixels in."""
        if not self._keys:
            if self.kind == "paths":
                self._keys.extend(_file_digest(p) for p in self.data)
            else:
                self._keys.extend(_array_digest(a) for a in self.data)
        return self._keys

    def read(self, i: int) -> np.ndarray:
        """Image ``i``'s pixels; a file is decoded from one read of its bytes.

        Once this source's content hashes were taken (:meth:`keys`: what the caches key
        each image's results by), those bytes must still hash to key ``i``: a file rewritten
        since raises :class:`ImageReadError`, so a result is never stored under the hash of
        bytes it was not computed from.
        """
        if self.kind != "paths":
            return self.data[i]
        path = self.data[i]
        data = read_bytes(path)
        if self._keys and _bytes_digest(data) != self._keys[i]:
            raise ImageReadError(
                f"Image file {path!r} changed while skcxr was reading it (its content is not "
                "what it was when this call started): nothing was computed or cached from "
                "it. Run again once nothing is writing to it.")
        return read_image(path, data)


def data_fingerprint(source: ImageSource, y) -> str:
    """sha256 of a training set's content: the pixels' hashes (:meth:`ImageSource.keys`) and
    labels, as a multiset (the same images and labels in any order, under any paths, give
    the same fingerprint)."""
    labels = np.asarray(y)
    lines = sorted(f"{k}\t{np.asarray(labels[i]).tolist()!r}"
                   for i, k in enumerate(source.keys()))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bytes_digest(data: bytes) -> str:  # the same digest as _file_digest of those bytes
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _array_digest(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def check_images(X, *, check_files: bool = True) -> ImageSource:
    """Validate ``X`` and return it as an :class:`ImageSource`.

    Everything that can be checked without decoding pixels is checked here, so that a bad
    input fails before any long computation: empty input, wrong shapes, NaN pixels,
    missing, empty or unsupported files, and (``check_files=True``) files whose header
    cannot be read.
    """
    if X is None:
        raise ValueError("X is None; expected file paths or an array of images.")
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # DataFrame
        if X.shape[1] != 1:
            raise ValueError(
                f"A DataFrame X must have exactly one column of image paths; got {X.shape[1]} "
                f"columns {list(X.columns)[:5]}. Select the path column, e.g. X[['path']]."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # Series
        X = X.to_numpy()
    if isinstance(X, (str, os.PathLike)):
        raise ValueError(
            f"X is a single path {str(X)!r}; pass a list of paths, e.g. [{str(X)!r}]."
        )
    if not isinstance(X, np.ndarray):
        X = list(X)
        is_path = [isinstance(x, (str, os.PathLike)) for x in X]
        if X and all(is_path):
            X = np.array([os.fspath(x) for x in X], dtype=object)
        elif any(is_path):
            first = is_path.index(False)
            raise ValueError(
                f"X mixes file paths and other items (X[{first}] is a "
                f"{type(X[first]).__name__}); pass only paths, or only images of one size "
                "stacked into an (n, H, W[, C]) array."
            )
        else:
            try:
                X = np.asarray(X)
            except ValueError:
                raise ValueError(
                    "X is a list of images of different shapes; pass file paths, or resize "
                    "the images to one size and stack them into an (n, H, W[, C]) array."
                ) from None
    if X.size == 0 or len(X) == 0:
        raise ValueError("X is empty: found 0 images; at least 1 is required.")
    if X.dtype.kind in "OUS":
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise ValueError(
                f"Paths must be given as a 1-D sequence or a (n, 1) column; got shape {X.shape}."
            )
        paths = np.array([check_path(p, check_files) for p in X], dtype=object)
        return ImageSource("paths", paths)
    if X.dtype.kind not in "uif" and X.dtype != np.bool_:
        raise ValueError(f"Image arrays must be numeric; got dtype {X.dtype}.")
    return ImageSource("arrays", _check_array(X))


def _check_array(X: np.ndarray) -> np.ndarray:
    shape = X.shape
    if X.ndim == 3 and shape[-1] <= 4:
        raise ValueError(
            f"X has shape {shape}: that is one (H, W, C) image, not {shape[0]} images "
            f"{shape[2]} pixel(s) wide. Add the batch axis: X[None] (shape (1, {shape[0]}, "
            f"{shape[1]}, {shape[2]}))."
        )
    if X.ndim == 3 and shape[0] == 3:
        raise ValueError(
            f"X has shape {shape}: one channels-first RGB image or 3 grey images? Say which: "
            "X.transpose(1, 2, 0)[None] for one RGB image, X[..., None] for 3 grey images."
        )
    if X.ndim == 4 and shape[-1] not in (1, 3) and shape[1] in (1, 3):
        raise ValueError(
            f"Image arrays must be channels-last (n, H, W, C); got shape {shape}, which looks "
            "channels-first. Use X.transpose(0, 2, 3, 1)."
        )
    if X.ndim == 4 and shape[-1] == 4:
        raise ValueError(
            "Image arrays of shape (n, H, W, C) must have C in {1, 3}; got C=4 (RGBA?). "
            "Drop or composite the alpha channel, e.g. X[..., :3]."
        )
    if X.ndim == 4 and shape[-1] not in (1, 3):
        raise ValueError(
            f"Image arrays of shape (n, H, W, C) must have C in {{1, 3}}; got C={shape[-1]}."
        )
    if X.ndim not in (3, 4):
        raise ValueError(
            f"Image arrays must have shape (n, H, W) or (n, H, W, C); got {X.ndim}-D array of "
            f"shape {shape}. For a single image use X[None]."
        )
    if shape[1] < 2 or shape[2] < 2:
        raise ValueError(f"Images must be at least 2x2 pixels; got shape {shape}.")
    if X.dtype.kind == "f":
        if X.dtype.itemsize > 8:
            X = X.astype(np.float64)
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
            raise ValueError(
                f"Image array contains NaN or infinite pixels in {len(bad)} image(s) "
                f"(first indices {bad[:5].tolist()})."
            )
        lo, hi = float(X.min()), float(X.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"Float image arrays must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]. "
                "Pass uint8/uint16 arrays as they are, or scale floats, e.g. X / 255."
            )
    elif X.dtype.kind in "iu" and X.dtype not in (np.uint8, np.uint16):
        lo, hi = int(X.min()), int(X.max())
        raise ValueError(
            f"Integer image arrays must be uint8 or uint16 (scaled by 255 or 65535, their "
            f"type's maximum); got {X.dtype} with values in [{lo}, {hi}], which has no defined "
            f"scale. {_integer_fix(lo, hi)}"
        )
    elif X.dtype == np.bool_:
        X = X.astype(np.uint8) * 255
    return X


def _integer_fix(lo: int, hi: int) -> str:
    if lo < 0:
        return ("Negative values are not pixel intensities: map them to [0, 1] yourself, "
                "e.g. (X - X.min()) / (X.max() - X.min()) with a fixed window per data set.")
    if hi <= 255:
        return "If 0..255 is the full range, pass X.astype(np.uint8)."
    if hi <= 65535:
        return "If 0..65535 is the full range, pass X.astype(np.uint16)."
    return ("Values above 65535 do not fit 16 bits: scale to floats in [0, 1] with a fixed "
            "maximum, e.g. X / max_value.")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W)`` / ``(H, W, C)`` numpy image -> ``(C, H, W)`` tensor (uint8 or float32 [0, 1])."""
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype.kind == "f" and img.dtype != np.float32:
        img = img.astype(np.float32)
    if not img.flags.writeable or not img.flags.c_contiguous:
        img = np.array(img, order="C")  # torch wants writable, contiguous memory
    t = torch.from_numpy(img)
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class DataConfig:
    """What a backbone expects of its input images (timm's ``PretrainedCfg``, the input part).

    Every backbone resolves to one of these (:class:`skcxr.backbones.Backbone`); the
    defaults are the ImageNet conventions used where a backbone says nothing.
    """

    image_size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875

    def __post_init__(self):
        interp = self.interpolation if self.interpolation in ("nearest", "bilinear",
                                                               "bicubic") else "bilinear"
        object.__setattr__(self, "interpolation", interp)  # others resize as bilinear
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a decoded image into the backbone's input tensor.

    Per image (in the data loader): resize to ``size`` and convert to ``in_chans``
    channels, keeping ``uint8`` where the source is 8-bit. Per batch (on the compute
    device): scale to ``[0, 1]`` and normalise with ``mean``/``std``.
    """

    size: tuple[int, int]
    in_chans: int = 3
    resize: str = "stretch"
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    view: str = "none"  # a test-time augmentation view (VIEWS), applied after channels

    def load(self, source: ImageSource, i: int) -> torch.Tensor:
        return self.channels(self.decode(source, i))

    def decode(self, source: ImageSource, i: int) -> torch.Tensor:
        """Image ``i`` decoded and resized, channels as stored: what the decoded cache keeps."""
        return self._resize(to_tensor(source.read(i)))

    def decode_description(self) -> dict:
        """Everything :meth:`decode` depends on besides the pixels (a cache namespace)."""
        return {"size": self.size, "resize": self.resize, "interpolation": self.interpolation,
                "crop_pct": self.crop_pct}

    def transform(self, t: torch.Tensor) -> torch.Tensor:
        """Resize and set channels of one ``(C, H, W)`` image tensor."""
        return self.channels(self._resize(t))

    def channels(self, t: torch.Tensor) -> torch.Tensor:
        """Convert a resized ``(C, H, W)`` image to ``in_chans`` channels, contiguous."""
        c = t.shape[0]
        if c == 1 and self.in_chans == 3:
            t = t.expand(3, -1, -1)
        elif c == 3 and self.in_chans == 1:
            # CXR stored as RGB are grey; the channel mean is the grey level either way
            g = t.float().mean(0, keepdim=True)
            t = g.round().to(torch.uint8) if t.dtype == torch.uint8 else g
        if self.view != "none":
            t = apply_view(t, self.view)
        return t.contiguous()

    def _resize(self, t: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        ih, iw = t.shape[-2:]
        interp = TF.InterpolationMode(self.interpolation)
        if self.resize == "stretch":
            if (ih, iw) == (h, w):
                return t
            return TF.resize(t, [h, w], interpolation=interp, antialias=True)
        if self.resize == "crop":
            scale = (int(h / self.crop_pct), int(w / self.crop_pct))
            ratio = max(scale[0] / ih, scale[1] / iw)
            t = TF.resize(t, [round(ih * ratio), round(iw * ratio)], interpolation=interp,
                          antialias=True)
            return TF.center_crop(t, [h, w])
        # pad: fit inside (h, w) keeping the aspect ratio, pad the rest with black
        ratio = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * ratio)), max(1, round(iw * ratio))
        if (nh, nw) != (ih, iw):
            t = TF.resize(t, [nh, nw], interpolation=interp, antialias=True)
        top, left = (h - nh) // 2, (w - nw) // 2
        return TF.pad(t, [left, top, w - nw - left, h - nh - top], fill=0)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Scale a batch to [0, 1] floats and normalise with mean/std."""
        return normalize_batch(batch, self.mean, self.std)


#: Test-time augmentation views: the identity, a horizontal flip, and shifts by
#: ``SHIFT`` of the image size with black filling in (exact, deterministic, cacheable).
VIEWS = ("none", "hflip", "shift_left", "shift_right", "shift_up", "shift_down")
SHIFT = 0.04


#: ``tta=`` presets: the views whose probabilities are averaged.
TTA_PRESETS = {"flip": ("none", "hflip"), "shift": ("none",) + VIEWS[2:], "flip+shift": VIEWS}


def tta_views(tta) -> tuple[str, ...]:
    """The views of a (validated) ``tta`` value: None -> ("none",)."""
    if tta is None:
        return ("none",)
    return TTA_PRESETS[tta] if isinstance(tta, str) else tuple(tta)


def _tta(value):
    if isinstance(value, str):
        return None if value in TTA_PRESETS else ""
    ok = (isinstance(value, (tuple, list)) and len(value) > 0
          and all(isinstance(v, str) and v in VIEWS for v in value)
          and len(set(value)) == len(value))
    return None if ok else ""


#: The allowed values of the classifier's ``tta``.
TTA_CONSTRAINT = [NONE, Check(_tta, f"one of {tuple(TTA_PRESETS)} or a tuple of views from "
                                    f"{VIEWS}")]


def apply_view(t: torch.Tensor, view: str) -> torch.Tensor:
    """One ``(C, H, W)`` image as seen in ``view`` (see :data:`VIEWS`)."""
    if view == "none":
        return t
    if view == "hflip":
        return t.flip(-1)
    h, w = t.shape[-2:]
    dy, dx = {"shift_left": (0, -1), "shift_right": (0, 1), "shift_up": (-1, 0),
              "shift_down": (1, 0)}[view]
    dy, dx = dy * max(1, round(SHIFT * h)), dx * max(1, round(SHIFT * w))
    out = torch.zeros_like(t)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        t[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def normalize_batch(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """``(batch / 255 if uint8 else batch - mean) / std`` per channel, as float32.

    The one normalisation of the package (preprocessing, the network's frozen prefix), so that
    every path computes the same numbers. ``mean``/``std``: sequences or tensors.
    """
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    c = x.shape[1]
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(-1)[:c]
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(-1)[:c]
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _size_pair(value):
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(Interval("int", 8, MAX_IMAGE_SIZE).reason(v) is None for v in value))
    return None if ok else ""


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


#: The preprocessing parameters' allowed values (both estimators, :func:`make_preprocessing`).
PREPROCESSING_CONSTRAINTS = {
    "image_size": [NONE, Interval("int", 8, MAX_IMAGE_SIZE),
                   Check(_size_pair, f"a (height, width) pair of ints in [8, {MAX_IMAGE_SIZE}]")],
    "in_chans": [Options(1, 3)],
    "resize": [Options(*RESIZE_MODES)],
    "normalize": [Options(*NORMALIZATIONS), Check(_mean_std, "a (mean, std) pair")],
}


def make_preprocessing(
    data_config: DataConfig,
    *,
    image_size=None,
    in_chans: int = 3,
    resize: str = "stretch",
    normalize="backbone",
) -> Preprocessing:
    """Build :class:`Preprocessing` from a backbone's :class:`DataConfig` plus user overrides.

    The arguments are the estimators' parameters of the same names, checked against the same
    constraint table.
    """
    validate({"image_size": image_size, "in_chans": in_chans, "resize": resize,
              "normalize": normalize}, PREPROCESSING_CONSTRAINTS, "make_preprocessing")
    if image_size is None:
        size = data_config.image_size
    elif isinstance(image_size, (tuple, list)):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        size = (int(image_size), int(image_size))
    if isinstance(normalize, str):
        mean, std = {
            "backbone": (data_config.mean, data_config.std),
            "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
            "centered": ((0.5,) * 3, (1.0,) * 3),  # x / 255 - 0.5, as in study 000
            "unit": ((0.0,) * 3, (1.0,) * 3),
        }[normalize]
    else:
        mean, std = (np.broadcast_to(np.asarray(v, dtype=float), (3,)) for v in normalize)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(size=size, in_chans=int(in_chans), resize=resize,
                         interpolation=data_config.interpolation,
                         crop_pct=data_config.crop_pct, mean=mean, std=std)


# --------------------------------------------------------------------------- streaming


class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset that decodes and preprocesses one image per item.

    With ``decoded`` (a :class:`skcxr.cache.DecodedImages`), decoded and resized images come
    from that cache and are decoded only on a miss.
    """

    def __init__(self, source: ImageSource, preprocessing: Preprocessing, decoded=None):
        self.source = source
        self.preprocessing = preprocessing
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.decoded is not None:
            return self.preprocessing.channels(self.decoded.get(i))
        return self.preprocessing.load(self.source, i)


def collate_images(items: list[torch.Tensor]) -> torch.Tensor:
    """Stack images, keeping uint8 (4x less to move between processes) when all are 8-bit."""
    if all(t.dtype == torch.uint8 for t in items):
        return torch.stack(items)
    return torch.stack([t.float() / 255.0 if t.dtype == torch.uint8 else t for t in items])


def _worker_init(_):
    torch.set_num_threads(1)


def make_loader(
    source: ImageSource,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    pin_memory: bool = False,
    decoded=None,
) -> torch.utils.data.DataLoader:
    """A DataLoader that streams preprocessed batches of ``source`` in order."""
    return torch.utils.data.DataLoader(
        ImageDataset(source, preprocessing, decoded),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        # a private generator: iterating must not consume the global RNG, or a fit that
        # finds its inputs cached would shuffle differently from one that computes them
        generator=torch.Generator(),
    )

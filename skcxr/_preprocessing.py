"""One description of "decoded image -> network input", which every path derives from.

:class:`Preprocessing` is the description (public as :class:`skcxr.images.Preprocessing`).
Its :attr:`~Preprocessing.steps` run in this order:

=====  ============  ==========================================  =====================
step   class         what it does                                where (torch path)
=====  ============  ==========================================  =====================
1      `Resize`      to ``size``: stretch, pad or centre crop    per image, loader
1b     `Intensity`   histogram equalisation or CLAHE (optional)  per image, loader
2      `Channels`    stored 1 or 3 channels -> ``in_chans``      per image, loader
3      `View`        a test-time view (flip, 4% shifts)          per image, loader
4      `Scale`       uint8 -> floats in [0, 1]                   per batch, device
5      `Normalize`   ``(x - mean) / std`` per channel            per batch, device
=====  ============  ==========================================  =====================

Every path is built from these step objects, never from its own copy of the arithmetic:

* torch (fit, predict, transform): the loader runs steps 1-3 on each image (uint8 stays
  uint8: 4x less to move), :meth:`Preprocessing.normalize` runs 4-5 on the batch;
* OpenVINO: the loader runs 1-3, the compiled graph 4-5 (:meth:`Step.openvino` adds each
  to OpenVINO's ``PrePostProcessor``; a batch step without an OpenVINO form makes the
  engine run the batch steps in torch and feed floats);
* ONNX export: :class:`InputGraph` runs 2-5 inside the exported graph (its input is the
  uint8 image already resized and intensity-standardised: steps 1 and 1b are the
  deployment's, as the model card says, and :func:`skcxr.images.decode_image` is them);
* Grad-CAM: the loader runs 1-3, the explained model 4-5, and :meth:`Resize.invert` maps a
  heatmap back onto the image as it was given.

The steps are classes of :mod:`skcxr._steps`. A new step is one class there, added to
:attr:`Preprocessing.steps`: each path then runs it, or (its ``openvino`` form missing)
falls back to one that can, or refuses it with an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ._steps import Channels, Intensity, Normalize, Resize, Scale, Step, View, to_tensor
from ._validation import INVALID, NONE, VALID, Check, Interval, Options, invalid, validate

RESIZE_MODES = ("stretch", "pad", "crop")
#: The largest ``image_size`` side: a batch of 32 RGB float images of 4096^2 is 6 GiB already.
MAX_IMAGE_SIZE = 4096
NORMALIZATIONS = ("backbone", "imagenet", "centered", "unit")
#: Intensity standardisations at decode time (after the resize, per image).
INTENSITIES = ("none", "equalize", "clahe")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """What a backbone expects of its input images (timm's ``PretrainedCfg``, the input part).

    Every backbone resolves to one of these (:class:`skcxr.backbones.Backbone`); the
    defaults are the ImageNet conventions used where a backbone says nothing.

    Parameters
    ----------
    image_size : (int, int), default=(224, 224)
        Input height and width.
    interpolation : str, default="bilinear"
        Resize interpolation: "nearest", "bilinear" or "bicubic" (others resize as
        bilinear).
    mean, std : tuple of float, default=ImageNet's
        Per-channel normalisation of ``[0, 1]`` pixels (RGB order).
    crop_pct : float, default=0.875
        Fraction of the resized image that ``resize="crop"`` keeps (timm's convention).
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


# --------------------------------------------------------------------------- the description


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a decoded image into the backbone's input tensor.

    Per image (in the data loader): resize to ``size`` and convert to ``in_chans``
    channels, keeping ``uint8`` where the source is 8-bit, then the test-time ``view``. Per
    batch (on the compute device): scale to ``[0, 1]`` and normalise with ``mean``/``std``.
    :attr:`steps` lists them as objects (see :mod:`skcxr._preprocessing`): the torch path,
    the OpenVINO graph, the ONNX graph and Grad-CAM's overlays are all made of them.
    Made by :func:`make_preprocessing`; fitted estimators report theirs as
    ``preprocessing_``.

    Parameters
    ----------
    size : (int, int)
        Input height and width.
    in_chans : {1, 3}, default=3
        Channels the backbone takes.
    resize : {"stretch", "pad", "crop"}, default="stretch"
        How an image reaches ``size`` (the estimators' ``resize``).
    interpolation : str, default="bilinear"
        Resize interpolation.
    crop_pct : float, default=0.875
        Fraction kept by ``resize="crop"``.
    mean, std : tuple of float, default=(0, 0, 0) and (1, 1, 1)
        Per-channel normalisation of ``[0, 1]`` pixels, one value per channel.
    view : str, default="none"
        A test-time augmentation view (:data:`VIEWS`), applied after the channels.
    intensity : {"none", "equalize", "clahe"}, default="none"
        Intensity standardisation after the resize, cached with the decoded image.
    """

    size: tuple[int, int]
    in_chans: int = 3
    resize: str = "stretch"
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    view: str = "none"  # a test-time augmentation view (VIEWS), applied after channels
    intensity: str = "none"  # INTENSITIES: after the resize, cached with the decoded image

    @property
    def geometry(self) -> Resize:
        """The resize step (and its inverse, :meth:`Resize.invert`, for overlays)."""
        return Resize(tuple(self.size), self.resize, self.interpolation, self.crop_pct)

    @property
    def decode_steps(self) -> tuple[Step, ...]:
        """What :meth:`decode` runs after decoding: the resize, then the intensity step."""
        return (self.geometry, Intensity(self.intensity))

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step in order: :attr:`decode_steps`, then :attr:`image_steps`, then
        :attr:`batch_steps`."""
        return (*self.decode_steps, *self.image_steps, *self.batch_steps)

    @property
    def image_steps(self) -> tuple[Step, ...]:
        """The per-image steps after the resize (what the loader runs on each image)."""
        return (Channels(self.in_chans), View(self.view))

    @property
    def batch_steps(self) -> tuple[Step, ...]:
        """The per-batch steps (what runs on the compute device, or in a compiled graph)."""
        return (Scale(), Normalize(tuple(self.mean), tuple(self.std)))

    def with_view(self, view: str) -> Preprocessing:
        """Return this preprocessing with test-time view ``view``.

        Parameters
        ----------
        view : str
            One of :data:`VIEWS`.

        Returns
        -------
        Preprocessing
            ``self`` when the view is already ``view``, else a copy with it.
        """
        return self if view == self.view else dataclasses.replace(self, view=view)

    def decode(self, source, i: int) -> torch.Tensor:
        """Decode, resize and intensity-standardise image ``i`` of ``source``.

        Parameters
        ----------
        source : skcxr.images.ImageSource
            The images.
        i : int
            Which one.

        Returns
        -------
        torch.Tensor of shape (C, H, W)
            Channels as stored, ``uint8`` for 8-bit sources: what the decoded-image cache
            keeps.
        """
        return self.after_read(to_tensor(source.read(i)))

    def after_read(self, t: torch.Tensor) -> torch.Tensor:
        """Run the decode steps (resize, intensity) on one decoded image.

        Parameters
        ----------
        t : torch.Tensor of shape (C, H, W)
            The decoded image (:func:`to_tensor`).

        Returns
        -------
        torch.Tensor of shape (C, *size)
            The resized, intensity-standardised image.
        """
        for step in self.decode_steps:
            t = step.apply(t)
        return t

    def decode_description(self) -> dict:
        """Describe everything :meth:`decode` depends on besides the pixels.

        Returns
        -------
        dict
            Size, resize mode, interpolation, crop_pct and intensity: a cache namespace.
        """
        g = self.geometry
        return {"size": g.size, "resize": g.mode, "interpolation": g.interpolation,
                "crop_pct": g.crop_pct, "intensity": self.intensity}

    def after_decode(self, t: torch.Tensor) -> torch.Tensor:
        """Run the per-image steps after the resize (channels, view) on one image.

        Parameters
        ----------
        t : torch.Tensor of shape (C, H, W)
            A decoded, resized image (:meth:`decode`).

        Returns
        -------
        torch.Tensor of shape (in_chans, *size)
            Contiguous.
        """
        for step in self.image_steps:
            t = step.apply(t)
        return t.contiguous()

    def load(self, source, i: int) -> torch.Tensor:
        """Read image ``i`` through every per-image step (what the loader yields).

        Parameters
        ----------
        source : skcxr.images.ImageSource
            The images.
        i : int
            Which one.

        Returns
        -------
        torch.Tensor of shape (in_chans, *size)
            Not yet scaled or normalised (:meth:`normalize` does that per batch).
        """
        return self.after_decode(self.decode(source, i))

    def transform(self, t: torch.Tensor) -> torch.Tensor:
        """Run every per-image step on one image tensor.

        Parameters
        ----------
        t : torch.Tensor of shape (C, H, W)
            A decoded image (:func:`to_tensor`).

        Returns
        -------
        torch.Tensor of shape (in_chans, *size)
            Not yet scaled or normalised.
        """
        return self.after_decode(self.after_read(t))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the batch steps: scale to ``[0, 1]`` floats, normalise with mean/std.

        Parameters
        ----------
        batch : torch.Tensor of shape (n, in_chans, H, W)
            Images as the loader yields them (uint8 or float).

        Returns
        -------
        torch.Tensor
            Floats, ready for the backbone.
        """
        for step in self.batch_steps:
            batch = step.apply(batch)
        return batch

    def batch_key(self) -> str:
        """Describe what the batch steps compute.

        Returns
        -------
        str
            Their repr: part of compiled models' keys.
        """
        return repr(self.batch_steps)


class InputGraph(torch.nn.Module):
    """Steps of a :class:`Preprocessing` as one module, for a graph (ONNX export) or a model
    that takes images (Grad-CAM): ``stages`` picks which ("image": the per-image steps after
    the resize, "batch": the batch steps). ``layout="NHWC"`` takes ``(n, H, W, C)`` images
    (what ``numpy.asarray(PIL.Image)`` stacks to)."""

    def __init__(self, preprocessing: Preprocessing, stages=("image", "batch"),
                 layout: str = "NCHW"):
        super().__init__()
        self.steps = [s for stage in stages
                      for s in (preprocessing.image_steps if stage == "image"
                                else preprocessing.batch_steps)]
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        for step in self.steps:
            x = step.apply(x)
        return x


def openvino_form(steps) -> bool:
    """Whether OpenVINO's ``PrePostProcessor`` has a form of every one of ``steps``."""
    return all(type(s).openvino is not Step.openvino for s in steps)


# --------------------------------------------------------------------------- parameters


def _size_pair(value):
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(Interval("int", 8, MAX_IMAGE_SIZE).verdict(v).ok for v in value))
    return VALID if ok else INVALID


def _mean_std(value):
    try:
        mean, std = value
        std = np.broadcast_to(np.asarray(std, dtype=float), (3,))
        np.broadcast_to(np.asarray(mean, dtype=float), (3,))
    except (TypeError, ValueError):
        return INVALID
    if not np.isfinite(std).all() or (std <= 0).any():
        return invalid(f"its std {std.tolist()} must be positive")
    return VALID


def _intensity(value):
    if not isinstance(value, str) or value not in INTENSITIES:
        return INVALID
    if value != "none":
        try:
            import skimage.exposure  # noqa: F401
        except ImportError:
            return invalid("it needs scikit-image: pip install scikit-image (or the "
                           "'intensity' extra: pip install 'skcxr[intensity]')")
    return VALID


#: The preprocessing parameters' allowed values (both estimators, :func:`make_preprocessing`).
PREPROCESSING_CONSTRAINTS = {
    "image_size": [NONE, Interval("int", 8, MAX_IMAGE_SIZE),
                   Check(_size_pair, f"a (height, width) pair of ints in [8, {MAX_IMAGE_SIZE}]")],
    "in_chans": [Options(1, 3)],
    "resize": [Options(*RESIZE_MODES)],
    "normalize": [Options(*NORMALIZATIONS), Check(_mean_std, "a (mean, std) pair")],
    "intensity": [Check(_intensity, f"one of {INTENSITIES}")],
}


def make_preprocessing(
    data_config: DataConfig,
    *,
    image_size=None,
    in_chans: int = 3,
    resize: str = "stretch",
    normalize="backbone",
    intensity: str = "none",
) -> Preprocessing:
    """Build :class:`Preprocessing` from a backbone's :class:`DataConfig` plus user overrides.

    The arguments are the estimators' parameters of the same names, checked against the same
    constraint table.

    Parameters
    ----------
    data_config : DataConfig
        What the backbone expects (its size, mean, std, interpolation, crop_pct).
    image_size : int, (int, int) or None, default=None
        Input size; None uses ``data_config.image_size``.
    in_chans : {1, 3}, default=3
        Channels the backbone takes (1: mean and std are averaged over RGB).
    resize : {"stretch", "pad", "crop"}, default="stretch"
        How an image reaches the input size.
    normalize : {"backbone", "imagenet", "centered", "unit"} or (mean, std), default="backbone"
        The normalisation (the estimators' ``normalize``).
    intensity : {"none", "equalize", "clahe"}, default="none"
        Intensity standardisation after the resize.

    Returns
    -------
    Preprocessing
        The description the estimators, exports and Grad-CAM run.
    """
    validate({"image_size": image_size, "in_chans": in_chans, "resize": resize,
              "normalize": normalize, "intensity": intensity}, PREPROCESSING_CONSTRAINTS,
             "make_preprocessing")
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
    return Preprocessing(size=tuple(size), in_chans=int(in_chans), resize=resize,
                         interpolation=data_config.interpolation,
                         crop_pct=data_config.crop_pct, mean=mean, std=std,
                         intensity=intensity)

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

A new step is one class here, added to :attr:`Preprocessing.steps`: each path then runs it,
or (its ``openvino`` form missing) falls back to one that can, or refuses it with an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ._validation import INVALID, NONE, VALID, Check, Interval, Options, invalid, validate
from ._views import apply_view

RESIZE_MODES = ("stretch", "pad", "crop")
#: The largest ``image_size`` side: a batch of 32 RGB float images of 4096^2 is 6 GiB already.
MAX_IMAGE_SIZE = 4096
NORMALIZATIONS = ("backbone", "imagenet", "centered", "unit")
#: Intensity standardisations at decode time (after the resize, per image).
INTENSITIES = ("none", "equalize", "clahe")
#: CLAHE's parameters (scikit-image's ``equalize_adapthist``): contrast clip limit and
#: tiles of 1/8 of the image side (its defaults), 256 histogram bins.
CLAHE_CLIP_LIMIT = 0.01
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



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


# --------------------------------------------------------------------------- the steps


class Step:
    """One step of the preprocessing: ``apply`` works on one ``(C, H, W)`` image or on a
    ``(n, C, H, W)`` batch alike (torch, and traceable into an ONNX graph); ``stage`` says
    where the torch path runs it ("image": in the loader, "batch": on the compute device)."""

    stage = "image"

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def openvino(self, steps) -> None:
        """Add this step to an OpenVINO ``PrePostProcessor``'s preprocess steps; raises
        NotImplementedError where OpenVINO has no form of it (the engine then runs the
        batch steps in torch)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Resize(Step):
    """To ``size``: ``"stretch"`` (ignore the aspect ratio), ``"pad"`` (keep it, pad with
    black) or ``"crop"`` (resize by ``1 / crop_pct``, take the centre crop)."""

    size: tuple[int, int]
    mode: str = "stretch"
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        ih, iw = t.shape[-2:]
        interp = TF.InterpolationMode(self.interpolation)
        if self.mode == "stretch":
            if (ih, iw) == (h, w):
                return t
            return TF.resize(t, [h, w], interpolation=interp, antialias=True)
        if self.mode == "crop":
            rh, rw = self._crop_resized(ih, iw)
            t = TF.resize(t, [rh, rw], interpolation=interp, antialias=True)
            return TF.center_crop(t, [h, w])
        nh, nw, top, left = self._pad_box(ih, iw)
        if (nh, nw) != (ih, iw):
            t = TF.resize(t, [nh, nw], interpolation=interp, antialias=True)
        return TF.pad(t, [left, top, w - nw - left, h - nh - top], fill=0)

    def _crop_resized(self, ih: int, iw: int) -> tuple[int, int]:
        """The size an ``(ih, iw)`` image is resized to before its centre crop."""
        h, w = self.size
        scale = (int(h / self.crop_pct), int(w / self.crop_pct))
        ratio = max(scale[0] / ih, scale[1] / iw)
        return round(ih * ratio), round(iw * ratio)

    def _pad_box(self, ih: int, iw: int) -> tuple[int, int, int, int]:
        """Where an ``(ih, iw)`` image lies in the padded input: its size, top, left."""
        h, w = self.size
        ratio = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * ratio)), max(1, round(iw * ratio))
        return nh, nw, (h - nh) // 2, (w - nw) // 2

    def invert(self, m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A map at the input size (a heatmap) -> the same map on the ``shape`` image it was
        made from, pixel for pixel: the resize, padding or crop undone (cropped margins 0)."""
        import torch.nn.functional as F

        h, w = self.size
        ih, iw = shape
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]

        def resize(t, size):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        if self.mode == "stretch":
            t = resize(t, (ih, iw))
        elif self.mode == "pad":
            nh, nw, top, left = self._pad_box(ih, iw)
            t = resize(t[..., top:top + nh, left:left + nw], (ih, iw))
        else:  # crop: the map covers the central crop only
            rh, rw = self._crop_resized(ih, iw)
            canvas = torch.zeros(1, 1, rh, rw)
            top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
            canvas[..., top:top + h, left:left + w] = t
            t = resize(canvas, (ih, iw))
        return t[0, 0].numpy()

    def describe(self) -> dict:
        return {"size": list(self.size), "mode": self.mode,
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}


@dataclass(frozen=True)
class Intensity(Step):
    """Intensity standardisation of one decoded, resized image: ``"equalize"``
    (global histogram equalisation) or ``"clahe"`` (contrast-limited adaptive histogram
    equalisation, Zuiderveld 1994), each channel on its own, by scikit-image
    (``skimage.exposure.equalize_hist`` / ``equalize_adapthist``). 8-bit images stay uint8
    (rounded), others float32 in [0, 1]. Per image only: there is no batch, graph or
    OpenVINO form, so it runs where decoding runs and is cached with the decoded image."""

    mode: str = "none"

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return t
        if t.dim() != 3:
            raise ValueError("Intensity applies to one (C, H, W) image at a time")
        from skimage import exposure

        a = t.numpy()
        scale = 255.0 if a.dtype == np.uint8 else 1.0
        out = np.empty(a.shape, dtype=np.float64)
        for c in range(a.shape[0]):
            x = a[c].astype(np.float64) / scale
            if self.mode == "equalize":
                out[c] = exposure.equalize_hist(x, nbins=256)
            else:
                out[c] = exposure.equalize_adapthist(x, clip_limit=CLAHE_CLIP_LIMIT, nbins=256)
        if a.dtype == np.uint8:
            return torch.from_numpy(np.rint(out * 255).clip(0, 255).astype(np.uint8))
        return torch.from_numpy(out.astype(np.float32))

    def describe(self) -> dict:
        """How to apply it outside skcxr (the model card's recipe)."""
        if self.mode == "none":
            return {"method": "none"}
        call = ("skimage.exposure.equalize_hist(x, nbins=256)" if self.mode == "equalize" else
                f"skimage.exposure.equalize_adapthist(x, clip_limit={CLAHE_CLIP_LIMIT}, "
                "nbins=256)")
        return {"method": self.mode, "call": call,
                "recipe": "after the resize, on each channel of the image on its own: "
                          "x = channel / 255 (8-bit) as float64; y = " + call +
                          "; 8-bit images: round(y * 255) as uint8"}


@dataclass(frozen=True)
class Channels(Step):
    """Stored channels (1 grey, 3 RGB) -> ``in_chans``: grey is repeated; RGB becomes the
    channel mean (chest X-rays stored as RGB are grey), rounded where the image is uint8."""

    in_chans: int

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        c = t.shape[-3]
        if c == 1 and self.in_chans == 3:
            return t.expand(*t.shape[:-3], 3, *t.shape[-2:])
        if c == 3 and self.in_chans == 1:
            g = t.float().mean(-3, keepdim=True)
            return g.round().to(torch.uint8) if t.dtype == torch.uint8 else g
        return t


@dataclass(frozen=True)
class View(Step):
    """One of :data:`VIEWS`: the image itself, left-right flipped, or shifted by
    :data:`SHIFT` of its size with black filling in."""

    view: str = "none"

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return apply_view(t, self.view)


@dataclass(frozen=True)
class Scale(Step):
    """uint8 (0..255) -> float32 in [0, 1]; float images (16-bit sources, DICOM) already
    are."""

    stage = "batch"

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()

    def openvino(self, steps) -> None:
        import openvino as ov

        steps.convert_element_type(ov.Type.f32).scale(255.0)


@dataclass(frozen=True)
class Normalize(Step):
    """``(x - mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    stage = "batch"

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        c = t.shape[-3]
        shape = (c, 1, 1)
        mean = torch.as_tensor(self.mean[:c], dtype=torch.float32, device=t.device)
        std = torch.as_tensor(self.std[:c], dtype=torch.float32, device=t.device)
        return (t - mean.view(shape)) / std.view(shape)

    def openvino(self, steps) -> None:
        steps.mean(list(self.mean)).scale(list(self.std))


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

"""The steps of the preprocessing (:mod:`skcxr._preprocessing` is their one description,
its table their order): one class per step, each with ``apply`` on an image or a batch
alike, ``openvino`` where OpenVINO has a form of it, and what the model card says of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ._views import apply_view

#: CLAHE's parameters (scikit-image's ``equalize_adapthist``): contrast clip limit and
#: tiles of 1/8 of the image side (its defaults), 256 histogram bins.
CLAHE_CLIP_LIMIT = 0.01


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

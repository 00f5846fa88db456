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

from ._files import SUPPORTED_EXTENSIONS, check_path, read_bytes, read_image
from ._preprocessing import DataConfig, Preprocessing, make_preprocessing
from ._validation import ImageReadError
from ._views import VIEWS, apply_view

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

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, eq=False)
class ImageSource:
    """Validated images: either an object array of paths or a numeric image array.

    Made by :func:`check_images`.

    Parameters
    ----------
    kind : {"paths", "arrays"}
        What ``data`` holds.
    data : ndarray
        An object array of paths, or an ``(n, H, W[, C])`` image array.
    _keys : list of str, default=[]
        Content hashes already taken (:meth:`keys` fills it).
    verify : bool, default=False
        Reads check each file's bytes against its key (:meth:`read`): what a source whose
        results are stored under those keys does (:meth:`verified`).
    """

    kind: str  # "paths" or "arrays"
    data: np.ndarray
    _keys: list = field(default_factory=list, repr=False)
    verify: bool = False

    def __len__(self) -> int:
        return len(self.data)

    def subset(self, indices) -> ImageSource:
        """Select the images at ``indices``.

        Parameters
        ----------
        indices : array-like of int
            Positions in this source.

        Returns
        -------
        ImageSource
            Those images, with their content hashes when already taken.
        """
        indices = np.asarray(indices, dtype=int)
        keys = [self._keys[i] for i in indices] if self._keys else []
        return ImageSource(self.kind, self.data[indices], keys, self.verify)

    def verified(self) -> ImageSource:
        """Return these images, to be read only from bytes that hash to their keys.

        Returns
        -------
        ImageSource
            The same images with ``verify=True`` (see :meth:`read`): for computing results
            stored under those keys.
        """
        return ImageSource(self.kind, self.data, self.keys(), verify=True)

    def keys(self) -> list[str]:
        """Hash each image's content, for caches: equal keys mean identical pixels in.

        Returns
        -------
        list of str
            One hex digest per image (of a file's bytes, or of an array image's dtype,
            shape and pixels), computed once.
        """
        if not self._keys:
            if self.kind == "paths":
                self._keys.extend(_file_digest(p) for p in self.data)
            else:
                self._keys.extend(_array_digest(a) for a in self.data)
        return self._keys

    def read(self, i: int) -> np.ndarray:
        """Read image ``i``'s pixels; a file is decoded from one read of its bytes.

        For a :meth:`verified` source (the caches compute their entries from one), those
        bytes must still hash to key ``i`` (:meth:`keys`: what the caches key each image's
        results by): a file rewritten since raises :class:`ImageReadError`, so a result is
        never stored under the hash of bytes it was not computed from. Elsewhere nothing is
        hashed (no cost on uncached reads).

        Parameters
        ----------
        i : int
            Which image.

        Returns
        -------
        ndarray of shape (H, W) or (H, W, C)
            The pixels as stored in the array, or as :func:`read_image` decodes the file.
        """
        if self.kind != "paths":
            return self.data[i]
        path = self.data[i]
        data = read_bytes(path)
        if self.verify and _bytes_digest(data) != self.keys()[i]:
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

    Parameters
    ----------
    X : array-like of paths, (n, 1) column of paths, or array of images
        Any form the estimators accept (see the module docstring): paths (a list, an array,
        a pandas Series, an ``(n, 1)`` column or a one-column DataFrame), or an
        ``(n, H, W)`` / ``(n, H, W, C)`` numeric array.
    check_files : bool, default=True
        Also read each file's header (its format and size), without decoding the pixels.

    Returns
    -------
    ImageSource
        The validated images.
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
    if type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"X is a sparse {type(X).__name__}; sparse input is not supported: images are "
            "dense. Pass file paths, or a dense (n, H, W[, C]) array (X.toarray() reshaped "
            "to images)."
        )
    if not isinstance(X, np.ndarray) and hasattr(X, "__array__") \
            and not hasattr(X, "__iter__"):  # array-likes that only convert
        X = np.asarray(X)
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
    if len(X) == 0:
        raise ValueError("X is empty: found 0 images; at least 1 is required.")
    if X.size == 0:
        raise ValueError(
            f"X has {len(X)} images with no pixels (shape {X.shape}); every image needs at "
            "least one pixel."
        )
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


# --------------------------------------------------------------------------- streaming


class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset that decodes and preprocesses one image per item.

    Parameters
    ----------
    source : ImageSource
        The images.
    preprocessing : Preprocessing
        What each item goes through (:meth:`Preprocessing.load`).
    decoded : skcxr.cache.DecodedImages or None, default=None
        A cache of decoded, resized images: items come from it, decoded only on a miss.
    """

    def __init__(self, source: ImageSource, preprocessing: Preprocessing, decoded=None):
        self.source = source
        self.preprocessing = preprocessing
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.decoded is not None:
            return self.preprocessing.after_decode(self.decoded.get(i))
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
    """Make a DataLoader that streams preprocessed batches of ``source`` in order.

    Parameters
    ----------
    source : ImageSource
        The images.
    preprocessing : Preprocessing
        The per-image steps each image goes through (the batch steps are left to the
        caller: :meth:`Preprocessing.normalize`).
    batch_size : int, default=32
        Images per batch.
    num_workers : int, default=0
        Worker processes that decode images (0: in this process).
    pin_memory : bool, default=False
        Page-locked batches, for faster copies to a GPU.
    decoded : skcxr.cache.DecodedImages or None, default=None
        A cache of decoded, resized images to read from (see :class:`ImageDataset`).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields ``(n, in_chans, H, W)`` batches, ``uint8`` when every image is 8-bit.
    """
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

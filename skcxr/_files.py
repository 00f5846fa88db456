"""Image files: the supported formats, the checks made on a path before any pixel is
decoded, and decoding a file to an array with the same pixel rules as arrays.

Every error names the file and its real cause (missing, a directory, a broken symbolic link
or a loop, permission denied, empty, not an image, truncated, damaged, a decompression
bomb). The rules themselves are listed in docs/checks.md; :mod:`skcxr.images` is the public
home of :func:`read_image` and ``SUPPORTED_EXTENSIONS``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ._validation import ImageReadError

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED_EXTENSIONS = PIL_EXTENSIONS + DICOM_EXTENSIONS


def check_path(p, check_files: bool) -> str:
    """One path of ``X``, checked before any pixel is decoded: a supported extension, a
    readable, non-empty regular file and (``check_files``) a header that parses, a size of
    at least 2x2 and, for JPEG/PNG, its end marker (not truncated)."""
    if not isinstance(p, (str, os.PathLike)):
        raise ValueError(f"Expected a file path, got {type(p).__name__} {p!r}.")
    p = os.fspath(p)
    ext = os.path.splitext(p)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"Unsupported image file extension {ext!r} for {p!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}."
        )
    if not os.path.isfile(p):
        raise FileNotFoundError(f"Image file {p!r} {_why_not_a_file(p)} "
                                f"(working directory {os.getcwd()!r}).")
    if os.path.getsize(p) == 0:
        raise ImageReadError(f"Image file {p!r} is empty (0 bytes).")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"Image file {p!r} is not readable by this user (permission "
                              "denied); fix its permissions or run as a user who can read it.")
    if check_files:
        if ext in DICOM_EXTENSIONS:
            pydicom = _import_pydicom(p)
            try:
                pydicom.dcmread(p, stop_before_pixels=True)
            except Exception as exc:
                raise ImageReadError(f"Cannot read DICOM file {p!r}: {exc}") from exc
        else:
            with _pil_errors(p, "read"):
                with Image.open(p) as im:
                    size, fmt = im.size, im.format
            if min(size) < 2:
                raise ImageReadError(f"Image file {p!r} is {size[0]}x{size[1]} pixels; images "
                                     "must be at least 2x2 (as arrays must).")
            _check_end_marker(p, fmt)
    return p


#: The marker each format's last bytes hold, and how far from the end it is looked for
#: (a few bytes of trailing data after it are common, e.g. from cameras).
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
_TAIL = 4096


def _check_end_marker(path: str, fmt: str | None) -> None:
    """A cheap check for truncation (the usual way a copy or download goes wrong): a JPEG
    ends with its EOI marker, a PNG with its IEND chunk. One read of the last 4 KiB."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    if marker not in tail:
        raise ImageReadError(
            f"Image file {path!r} is truncated: this {fmt} file ({size:,} bytes) ends before "
            f"its end marker. Copy or download it again, or remove it from X."
        )


def _why_not_a_file(p: str) -> str:
    if os.path.islink(p):
        try:
            os.stat(p)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link loop"
            return f"is a broken symbolic link (to {os.readlink(p)!r})"
    if os.path.isdir(p):
        return "is a directory, not an image file"
    return "does not exist"


@contextlib.contextmanager
def _pil_errors(path: str, what: str):
    """PIL's errors as ImageReadError naming the file, the real cause kept."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"Image file {path!r} is larger than PIL's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS:,} pixels x 2): {exc}. If the file is trusted, raise "
            "the limit: PIL.Image.MAX_IMAGE_PIXELS = None (or a larger number)."
        ) from exc
    except PermissionError as exc:
        raise PermissionError(f"Image file {path!r} is not readable: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        problem = ("not a valid PNG/JPEG/BMP/TIFF" if what == "read"
                   else "corrupt or truncated")
        raise ImageReadError(f"Cannot {what} image file {path!r}: {problem} ({exc}).") from exc


def _import_pydicom(path: str):
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError(
            f"Reading DICOM file {path!r} needs pydicom: pip install 'skcxr[dicom]'."
        ) from exc
    return pydicom


def read_bytes(path: str) -> bytes:
    """A file's bytes, in one read (what is hashed and what is decoded must be the same)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError as exc:
        raise PermissionError(f"Image file {path!r} is not readable: {exc}") from exc
    except OSError as exc:
        raise ImageReadError(f"Cannot read image file {path!r}: {exc.strerror or exc} "
                             "(it was there when the call started).") from exc


def read_image(path: str, data: bytes | None = None) -> np.ndarray:
    """Decode one image file to a writable ``(H, W)`` or ``(H, W, 3)`` array.

    8-bit images come back as ``uint8``; 16-bit PNG/TIFF, float TIFF and DICOM as
    ``float32`` in ``[0, 1]``. Alpha is composited onto black; palettes are expanded;
    the EXIF orientation is applied. A float file outside ``[0, 1]`` or a 32-bit integer
    file beyond 16 bits is rejected, as the same pixels in an array would be.

    Parameters
    ----------
    path : str
        The image file; it names the file in errors and gives its format (extension).
    data : bytes or None, default=None
        The file's bytes, already read: decoded instead of reading ``path`` again.

    Returns
    -------
    ndarray of shape (H, W) or (H, W, 3)
        The pixels: ``uint8``, or ``float32`` in ``[0, 1]`` (above).
    """
    ext = os.path.splitext(path)[1].lower()
    source = io.BytesIO(data) if data is not None else path
    try:
        if ext in DICOM_EXTENSIONS:
            return _read_dicom(path, source)
        with _pil_errors(path, "decode"):
            img = _read_pil(path, source)
        if min(img.shape[:2]) < 2:
            raise ImageReadError(f"Image file {path!r} is {img.shape[1]}x{img.shape[0]} "
                                 "pixels; images must be at least 2x2 (as arrays must).")
        return img
    except (ImageReadError, ImportError, PermissionError):
        raise
    except Exception as exc:
        raise ImageReadError(f"Cannot decode image file {path!r}: {exc}") from exc


def _read_pil(path: str, source) -> np.ndarray:
    with Image.open(source) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # a photo of a film taken sideways stands up
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.array(im, dtype=np.float32 if mode == "F" else np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            if mode == "F":
                if not np.isfinite(arr).all() or lo < 0.0 or hi > 1.0:
                    raise ImageReadError(
                        f"Float image file {path!r} has values in [{lo:.4g}, {hi:.4g}]; float "
                        "pixels must lie in [0, 1] (as in arrays). Window or rescale it first "
                        "(e.g. save as 16-bit PNG), or pass the pixels as an array in [0, 1]."
                    )
                return arr
            if lo < 0 or hi > 65535:
                raise ImageReadError(
                    f"Integer image file {path!r} (PIL mode {mode}) has values in "
                    f"[{lo:.0f}, {hi:.0f}], beyond 16 bits; only 0..65535 has a defined scale. "
                    "Rescale it to 16 bits, or pass the pixels as floats in [0, 1]."
                )
            return (arr / 65535.0).astype(np.float32)
        if mode in ("1", "L"):
            return np.array(im.convert("L"))
        if mode == "P":
            im = im.convert("RGBA")
            mode = "RGBA"
        if mode in ("RGBA", "LA", "PA"):
            im = im.convert("RGBA")
            black = Image.new("RGBA", im.size, (0, 0, 0, 255))
            return np.array(Image.alpha_composite(black, im).convert("RGB"))
        return np.array(im.convert("RGB"))


def _read_dicom(path: str, source) -> np.ndarray:
    pydicom = _import_pydicom(path)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(source)
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    if "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds).astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        # DICOM PS3.3 C.11.2.1.2.1 linear window
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    else:
        lo, hi = float(arr.min()), float(arr.max())
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)

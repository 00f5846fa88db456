"""The on-disk store of the per-image caches (the ``memory`` parameter), and the keys.

A directory that several processes share: one self-verifying ``.entry`` file per entry
(:func:`encode_entry`: format version, namespace digest, dtype, shape, BLAKE2b checksum),
written to a temporary name and renamed into place (:func:`write_atomic`), so readers never
see half a file. A root this process cannot write to is used read-only; a write that fails
mid-run (disk full, remounted read-only) is warned once and ends the writing, not the work
(:func:`write_failed`). Compiled OpenVINO blobs are kept in the same entry format
(:class:`skcxr._openvino.Blob`). :func:`namespace_digest` turns a description of what an
output depends on into the short key everything is stored under.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from ._state import CACHE_ROOTS, warn_once
from ._validation import INVALID, NONE, VALID, Check, invalid


def _memory(value):  # a joblib.Memory: what counts is its location
    location = getattr(value, "location", False)
    if location is False:
        return INVALID
    if location is None or isinstance(location, (str, os.PathLike)):
        return VALID
    return invalid(f"its location {location!r} is not a directory path")


def _directory(value):
    if not isinstance(value, (str, os.PathLike)):
        return INVALID
    return VALID if os.fspath(value).strip() else invalid("an empty path would cache into "
                                                          "the cwd")


#: The allowed values of ``memory``.
MEMORY_CONSTRAINT = [NONE, Check(_directory, "a directory path"),
                     Check(_memory, "a joblib.Memory")]


def resolve_location(memory) -> Path | None:
    """The (validated) ``memory`` parameter: None, a path or a joblib.Memory -> a directory.

    Checked before any work: a path that is a file, or a directory that cannot be created,
    raises; one this process cannot write to is used read-only (warned).
    """
    location = getattr(memory, "location", memory)  # joblib.Memory
    if location is None:
        return None
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise ValueError(f"memory={os.fspath(location)!r} is a file, not a directory: give a "
                         "directory path for the disk cache, or memory=None.")
    if not path.exists():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"memory={os.fspath(location)!r} cannot be created ({exc.strerror or exc}): "
                "give a directory path this process can write to, or memory=None."
            ) from exc
    location_writable(path)  # warns now, before any work, when it is read-only
    return path


def namespace_digest(description: dict) -> str:
    """A short stable digest of a JSON-serialisable description."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


# --------------------------------------------------------------------------- disk


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:  # numpy has no bf16: store the bits
        return t.view(torch.int16).numpy()
    return t.numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


#: Bumped whenever what an entry holds or how it is encoded changes: older entries are misses.
ENTRY_VERSION = 2
_MAGIC = b"skcxr-entry"
_PREFIX = struct.Struct("<BI")  # version, header length


def encode_entry(namespace: str, row: np.ndarray) -> bytes:
    """An entry file's bytes: magic, version, a JSON header (namespace digest, dtype, shape),
    a BLAKE2b checksum of header and data, then the raw data."""
    row = np.ascontiguousarray(row)
    header = json.dumps({"namespace": namespace, "dtype": row.dtype.str,
                         "shape": list(row.shape)}).encode()
    body = row.tobytes()
    digest = hashlib.blake2b(header + body, digest_size=16).digest()
    return _MAGIC + _PREFIX.pack(ENTRY_VERSION, len(header)) + header + digest + body


def decode_entry(blob: bytes, namespace: str, dtype=None, shape=None) -> np.ndarray | None:
    """The row an entry holds, or None when anything does not verify: magic, version,
    namespace, dtype and shape (when given), size, checksum."""
    start = len(_MAGIC) + _PREFIX.size
    if len(blob) < start or not blob.startswith(_MAGIC):
        return None
    version, n = _PREFIX.unpack_from(blob, len(_MAGIC))
    if version != ENTRY_VERSION or len(blob) < start + n + 16:
        return None
    header_bytes = blob[start:start + n]
    digest, body = blob[start + n:start + n + 16], blob[start + n + 16:]
    if hashlib.blake2b(header_bytes + body, digest_size=16).digest() != digest:
        return None
    try:
        header = json.loads(header_bytes)
        got = np.dtype(header["dtype"])
        got_shape = tuple(int(d) for d in header["shape"])
    except (ValueError, KeyError, TypeError):
        return None
    if header.get("namespace") != namespace or (dtype is not None and got != dtype) \
            or (shape is not None and got_shape != tuple(shape)) \
            or len(body) != got.itemsize * int(np.prod(got_shape, dtype=np.int64)):
        return None
    return np.frombuffer(body, dtype=got).reshape(got_shape).copy()


class DiskStore:
    """Per-image arrays under ``<root>/skcxr-features/<namespace digest>/``: frozen outputs
    or decoded images, one self-verifying file per entry.

    Each entry is one file that carries what it must be (see :func:`encode_entry`); one that
    does not verify (another version, another namespace, dtype or row shape, a wrong size,
    a checksum mismatch: truncated, tampered, bit rot) is a miss, counted as ``"rejected"``
    by :func:`cache_info`, and the recomputed entry replaces it. With ``fixed_shape`` every
    row of the namespace has one shape, recorded in ``meta.json`` by the first write.

    A root this process cannot write to is used read-only: entries are read, new ones are
    not stored (warned once per root). A write that fails (disk full, a file system
    remounted read-only) is warned once and ends the writing, not the work.
    """

    def __init__(self, root: Path, namespace: dict, *, fixed_shape: bool = True):
        self.root = Path(root)
        self.namespace = namespace
        self.digest = namespace_digest(namespace)
        self.dir = self.root / "skcxr-features" / self.digest
        self.dtype = _numpy_dtype(namespace.get("dtype"))
        self.fixed_shape = fixed_shape
        self.rejected: set[str] = set()  # keys whose entry did not verify
        self._shape = None

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.entry"

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    @property
    def writable(self) -> bool:
        return location_writable(self.root)

    def row_shape(self):
        if self.fixed_shape and self._shape is None:
            try:
                self._shape = tuple(json.loads((self.dir / "meta.json").read_text())["row_shape"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return self._shape

    def get_many(self, keys: list[str]) -> tuple[dict[int, np.ndarray], list[int]]:
        """Return (found rows by position, positions not in the store or not verified)."""
        found, missing = {}, []
        shape = self.row_shape()
        for i, key in enumerate(keys):
            try:
                blob = self._path(key).read_bytes()
            except OSError:
                missing.append(i)
                continue
            row = decode_entry(blob, self.digest, self.dtype, shape)
            if row is None:
                self.rejected.add(key)
                missing.append(i)
            else:
                found[i] = row
        return found, missing

    def put_many(self, keys: list[str], rows) -> None:
        """Store rows (atomically, each); on a failed write, warn once and stop writing."""
        rows = [np.ascontiguousarray(r) for r in rows]
        if not rows or not self.writable:
            return
        try:
            self._put_many(keys, rows)
        except OSError as exc:
            write_failed(self.root, exc)

    def _put_many(self, keys, rows) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "namespace.json").exists():
            write_atomic(self.dir / "namespace.json", json.dumps(
                self.namespace, sort_keys=True, indent=1, default=str).encode())
        if self.fixed_shape and self.row_shape() != rows[0].shape:  # first write, or stale
            self._shape = rows[0].shape
            write_atomic(self.dir / "meta.json", json.dumps(
                {"entry_version": ENTRY_VERSION, "row_shape": list(rows[0].shape)}).encode())
        for key, row in zip(keys, rows):
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, encode_entry(self.digest, row))


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename into place (readers never see half a file).

    The file is created with mode 0666 less the umask, like any file the user writes, so a
    cache shared by a group (umask 002) is readable and replaceable by the group.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _numpy_dtype(name):
    if name is None:
        return None
    if name == "bfloat16":  # stored as its bits
        return np.dtype(np.int16)
    return np.dtype(getattr(np, name, None) or name)


def location_writable(root: Path) -> bool:
    """Whether this process can create files under ``root``: probed once per root, and
    False from the first failed write on (a full disk, a file system remounted read-only)."""
    key = os.fspath(root)
    known = CACHE_ROOTS.get(key)
    if known is not None:
        return known
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".skcxr-probe-")
        os.close(fd)
        os.unlink(probe)
        writable = True
    except OSError as exc:
        writable = False
        warn_once(("unwritable", key),
                  f"memory={key!r} is not writable by this process ({exc.strerror or exc}): "
                  "cached entries there are read, new results are not stored. Give a "
                  "writable directory to cache them.", stacklevel=3)
    CACHE_ROOTS.put(key, writable)
    return writable


def write_failed(root: Path, exc: OSError) -> None:
    """A write under ``root`` failed (disk full, read-only, quota): the cache is an
    optimisation, so the work goes on from memory; warned once per root, and nothing more is
    written there by this process (until ``clear_cache``)."""
    key = os.fspath(root)
    CACHE_ROOTS.put(key, False)
    warn_once(("write-failed", key),
              f"Writing to the disk cache memory={key!r} failed ({exc.strerror or exc}): the "
              "work goes on from memory and nothing more is stored there by this process. "
              "Free space or give another directory to cache the results.", stacklevel=4)

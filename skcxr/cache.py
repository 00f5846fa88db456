"""Per-image caches shared by estimator clones and processes.

What is cached (``cache=True``, the default of both estimators): the outputs of frozen
networks, computed by one path for both estimators (pooled features of
``FeatureExtractorTransformer``, frozen-prefix outputs of ``PretrainedCNNClassifier`` where
that is exact), and decoded, resized images (``DecodedImages``, wherever images must be read
again: augmented or ``batchnorm="train"`` fits, whose every epoch would otherwise decode
every file again).

Every entry is keyed by a *namespace* (everything that determines the output: backbone,
weights digest, part of the network, preprocessing, precision, engine) and a per-image
content hash, so a
cross-validation or a grid search computes each image's result once, whatever subset of
images each fold asks for, and a change of weights, preprocessing or pixels never hits a stale
entry.

Two stores:

* in-process LRU stores with byte budgets (:func:`set_cache_budget`), living outside
  estimator instances, so the clones that ``cross_val_score`` and ``GridSearchCV`` make share
  it;
* an optional on-disk store (a directory: the ``memory`` parameter), one self-verifying
  ``.entry`` file per entry (:func:`encode_entry`) written to a temporary name and renamed
  into place, so several joblib worker processes can share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ._validation import NONE, Check, ImageReadError

__all__ = [
    "cache_info",
    "clear_cache",
    "set_cache_budget",
]


def _memory(value):  # a joblib.Memory: what counts is its location
    location = getattr(value, "location", False)
    if location is False:
        return ""
    if location is None or isinstance(location, (str, os.PathLike)):
        return None
    return f"its location {location!r} is not a directory path"


def _directory(value):
    if not isinstance(value, (str, os.PathLike)):
        return ""
    return None if os.fspath(value).strip() else "an empty path would cache into the cwd"


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


class FeatureStore:
    """Per-image arrays under ``<root>/skcxr-features/<namespace digest>/``.

    Each entry is one file that carries what it must be (see :func:`encode_entry`); one that
    does not verify (another version, another namespace, dtype or row shape, a wrong size,
    a checksum mismatch: truncated, tampered, bit rot) is a miss, counted as ``"rejected"``
    by :func:`cache_info`, and the recomputed entry replaces it. With ``fixed_shape`` every
    row of the namespace has one shape, recorded in ``meta.json`` by the first write.

    A root this process cannot write to is used read-only: entries are read, new ones are
    not stored (warned once per root).
    """

    def __init__(self, root: Path, namespace: dict, *, fixed_shape: bool = True):
        self.namespace = namespace
        self.digest = namespace_digest(namespace)
        self.dir = Path(root) / "skcxr-features" / self.digest
        self.dtype = _numpy_dtype(namespace.get("dtype"))
        self.fixed_shape = fixed_shape
        self.rejected: set[str] = set()  # keys whose entry did not verify
        self._shape = None

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.entry"

    @property
    def writable(self) -> bool:
        return location_writable(self.dir.parent.parent)

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
        rows = [np.ascontiguousarray(r) for r in rows]
        if not rows or not self.writable:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "namespace.json").exists():
            _write(self.dir / "namespace.json", json.dumps(
                self.namespace, sort_keys=True, indent=1, default=str).encode())
        if self.fixed_shape and self.row_shape() != rows[0].shape:  # first write, or stale
            self._shape = rows[0].shape
            _write(self.dir / "meta.json", json.dumps(
                {"entry_version": ENTRY_VERSION, "row_shape": list(rows[0].shape)}).encode())
        for key, row in zip(keys, rows):
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            _write(path, encode_entry(self.digest, row))


def _write(path: Path, data: bytes) -> None:
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
        tmp.unlink(missing_ok=True)
        raise


def _numpy_dtype(name):
    if name is None:
        return None
    if name == "bfloat16":  # stored as its bits
        return np.dtype(np.int16)
    return np.dtype(getattr(np, name, None) or name)


def location_writable(root: Path) -> bool:
    """Whether this process can create files under ``root`` (probed once per root)."""
    key = os.fspath(root)
    if key not in _WRITABLE:
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=root, prefix=".skcxr-probe-")
            os.close(fd)
            os.unlink(probe)
            _WRITABLE[key] = True
        except OSError:
            _WRITABLE[key] = False
            warnings.warn(  # once per root: the answer is kept
                f"memory={key!r} is not writable by this process: cached entries there are "
                "read, new results are not stored. Give a writable directory to cache them.",
                UserWarning, stacklevel=3)
    return _WRITABLE[key]


_WRITABLE: dict[str, bool] = {}


# --------------------------------------------------------------------------- memory


class _MemoryLRU:
    """Process-wide LRU of tensors, bounded in bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self.entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "computed": 0, "derived": 0, "disk_hits": 0,
                      "rejected": 0, "evicted": 0}

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.stats[name] += n

    def get(self, key):
        with self.lock:
            t = self.entries.get(key)
            if t is not None:
                self.entries.move_to_end(key)
            return t

    def put(self, key, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.budget:
            return
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = t
            self.nbytes += size
            self._shrink()

    def _shrink(self) -> None:
        while self.nbytes > self.budget:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
            self.stats["evicted"] += 1

    def set_budget(self, budget: int) -> None:
        with self.lock:
            self.budget = budget
            self._shrink()

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.nbytes = 0
            for k in self.stats:
                self.stats[k] = 0


_MEMORY = _MemoryLRU(int(os.environ.get("SKCXR_CACHE_BYTES", 2 * 1024**3)))
_DECODED = _MemoryLRU(int(os.environ.get("SKCXR_DECODED_CACHE_BYTES", 1024**3)))


def _check_budget(name, nbytes) -> int:
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"{name} must be an int >= 0 (bytes); got {nbytes!r}.")
    return int(nbytes)


def set_cache_budget(nbytes: int | None = None, *, decoded: int | None = None) -> None:
    """Bound the in-process caches, in bytes; least recently used entries go first.

    Parameters
    ----------
    nbytes : int, optional
        Features and frozen-prefix outputs (default 2 GiB, or ``$SKCXR_CACHE_BYTES``).
    decoded : int, optional
        Decoded, resized images (default 1 GiB, or ``$SKCXR_DECODED_CACHE_BYTES``); 0 turns
        the decoded-image cache off.
    """
    if nbytes is not None:
        _MEMORY.set_budget(_check_budget("nbytes", nbytes))
    if decoded is not None:
        _DECODED.set_budget(_check_budget("decoded", decoded))


def cache_info() -> dict:
    """Entries, bytes, budget and counters of the in-process caches.

    The top-level keys describe the features / frozen-prefix store: ``"computed"`` counts
    entries computed from images, ``"derived"`` frozen-prefix outputs derived from the
    cached outputs of a shallower cut (see :mod:`skcxr._frozen`). ``"decoded"`` holds the
    same for the decoded-image store (``"computed"`` there counts images decoded).
    """
    return {"entries": len(_MEMORY.entries), "bytes": _MEMORY.nbytes,
            "budget": _MEMORY.budget, **_MEMORY.stats,
            "decoded": {"entries": len(_DECODED.entries), "bytes": _DECODED.nbytes,
                        "budget": _DECODED.budget, **_DECODED.stats}}


def clear_cache() -> None:
    """Empty the in-process caches and reset their counters (disk stores are untouched)."""
    _MEMORY.clear()
    _DECODED.clear()


class DecodedImages:
    """Decoded, resized images of one source, from memory, then disk, else decoded.

    Entries are the output of :meth:`skcxr.images.Preprocessing.decode` (before channel
    conversion and augmentation: grey images stay one channel, a third of the bytes), keyed
    by the decode settings and the image's content hash, so folds, epochs and grid points
    decode each file once. With ``location``, entries also go to
    ``<location>/skcxr-features/<namespace>/`` (shared by worker processes; with
    ``num_workers > 0`` each DataLoader worker has its own in-process store, so the disk
    store is what carries entries from one epoch's workers to the next).
    """

    def __init__(self, source, preprocessing, location: Path | None = None):
        self.source = source
        self.preprocessing = preprocessing
        namespace = {"kind": "decoded", **preprocessing.decode_description()}
        self.ns = namespace_digest(namespace)
        self.keys = source.keys()
        self.store = (FeatureStore(location, namespace, fixed_shape=False)
                      if location is not None else None)

    def get(self, i: int) -> torch.Tensor:
        key = (self.ns, self.keys[i])
        t = _DECODED.get(key)
        if t is not None:
            _DECODED.count("hits")
            return t.clone()  # a user's augmentation may work in place
        _DECODED.count("misses")
        if self.store is not None:
            found, _ = self.store.get_many([self.keys[i]])
            _DECODED.count("rejected", len(self.store.rejected))
            self.store.rejected.clear()
            if found:
                _DECODED.count("disk_hits")
                t = torch.from_numpy(found[0])
                _DECODED.put(key, t)
                return t.clone()
        t = self.preprocessing.decode(self.source, i).contiguous()
        _DECODED.count("computed")
        _DECODED.put(key, t)
        if self.store is not None:
            self.store.put_many([self.keys[i]], [t.numpy()])
        return t.clone()


def cached_rows(namespace: dict, keys: list[str], compute, *, location: Path | None = None,
                counter: str = "computed") -> list[torch.Tensor]:
    """One tensor per key, from memory, then disk, then ``compute(missing_positions)``.

    ``compute`` receives the positions (into ``keys``) still missing and returns a tensor
    whose first dimension runs over them. New results go to memory and, when ``location``
    is set, to disk. They are counted under ``counter`` in :func:`cache_info`:
    ``"computed"`` (from the images) or ``"derived"`` (from other cached outputs).

    Each entry is computed once, also when several threads or processes ask for it at the
    same time: threads of one process take turns per namespace; processes sharing
    ``location`` claim the entries they compute (:class:`_Claims`) and wait for the ones
    another process has claimed, so two workers of a grid search split the work instead of
    doing it twice.
    """
    ns = namespace_digest(namespace)
    out: list[torch.Tensor | None] = [_MEMORY.get((ns, k)) for k in keys]
    missing = [i for i, t in enumerate(out) if t is None]
    _MEMORY.count("hits", len(keys) - len(missing))
    _MEMORY.count("misses", len(missing))
    if not missing:
        return out
    store = FeatureStore(location, namespace) if location is not None else None
    dtype = getattr(torch, namespace.get("dtype", "float32"))

    def from_disk(positions: list[int]) -> list[int]:
        """Fill ``out`` from the disk store; return the positions still missing."""
        found, still = store.get_many([keys[i] for i in positions])
        for j, arr in found.items():
            i = positions[j]
            out[i] = _from_numpy(arr, dtype)
            _MEMORY.put((ns, keys[i]), out[i])
        _MEMORY.count("disk_hits", len(found))
        return [positions[j] for j in still]

    done = 0  # entries computed (and kept) by this call

    def compute_and_store(positions: list[int]) -> None:
        nonlocal done
        try:
            computed = compute(positions)
        except ImageReadError as exc:
            if not done:
                raise
            where = "in memory" + (f" and in {location}" if store is not None and store.writable
                                   else "")
            raise ImageReadError(
                f"{exc} The {done} image(s) computed before it are cached {where}: "
                "fix or remove that file and run again to resume from them.") from exc
        _MEMORY.count(counter, len(positions))
        for j, i in enumerate(positions):
            out[i] = computed[j].clone()
            _MEMORY.put((ns, keys[i]), out[i])
        if store is not None:
            store.put_many([keys[i] for i in positions], [_to_numpy(out[i]) for i in positions])
        done += len(positions)

    def in_chunks(positions: list[int]) -> None:
        # a chunk at a time, so that what was computed before a bad file is kept
        for start in range(0, len(positions), _CHUNK):
            compute_and_store(positions[start:start + _CHUNK])

    try:
        with _namespace_lock(ns):
            for i in missing:  # another thread may have computed some while this one waited
                out[i] = _MEMORY.get((ns, keys[i]))
            missing = [i for i in missing if out[i] is None]
            if missing and store is not None:
                missing = from_disk(missing)
            if store is None or not store.writable:
                in_chunks(missing)
                return out
            claims = _Claims(store) if missing else None
            while missing:
                # a chunk at a time, so that processes asking for the same entries split them
                mine = claims.claim([keys[i] for i in missing], limit=_Claims.chunk)
                try:
                    # another process may have stored one between our look and our claim
                    todo = from_disk([i for i in missing if keys[i] in mine]) if mine else []
                    if todo:
                        compute_and_store(todo)
                finally:
                    claims.release(mine)
                missing = [i for i in missing if keys[i] not in mine]
                if missing:  # claimed by another process: wait for its entries to land
                    claims.wait([keys[i] for i in missing])
                    missing = from_disk(missing)
    finally:  # each entry that did not verify counts once, however often it was read
        if store is not None:
            _MEMORY.count("rejected", len(store.rejected))
    return out


#: Entries computed per call of ``compute`` without a shared store (with one, a claim's worth).
_CHUNK = 512


_NS_LOCKS: dict[str, threading.Lock] = {}
_NS_LOCKS_GUARD = threading.Lock()


def _namespace_lock(ns: str) -> threading.Lock:
    with _NS_LOCKS_GUARD:
        return _NS_LOCKS.setdefault(ns, threading.Lock())


class _Claims:
    """Which process computes which entries of a shared disk store.

    A claim is a file ``<key>.claim`` beside the entry's ``.entry`` file, created atomically
    (``O_CREAT | O_EXCL``, which works on local and network file systems) before the entry
    is computed and removed after it is stored. A claim whose holder stopped updating it for
    ``stale`` seconds (the holder died) is taken over; holders claim at most ``chunk``
    entries at a time (minutes of work at most), so a live claim does not go stale.
    """

    stale = 600.0
    chunk = 64

    def __init__(self, store: FeatureStore):
        self.store = store
        store.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.store._path(key).with_suffix(".claim")

    def claim(self, keys: list[str], limit: int | None = None) -> set[str]:
        """Claim up to ``limit`` keys that nobody holds (or whose holder went stale)."""
        mine = set()
        for key in keys:
            if limit is not None and len(mine) >= limit:
                break
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            for _ in range(2):
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    mine.add(key)
                    break
                except FileExistsError:
                    try:
                        age = time.time() - path.stat().st_mtime
                    except FileNotFoundError:  # released meanwhile: try again
                        continue
                    if age < self.stale:
                        break
                    path.unlink(missing_ok=True)  # a dead holder's claim
        return mine

    def release(self, keys) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def wait(self, keys: list[str]) -> None:
        """Until every key is on disk or no longer claimed (its holder failed or released
        it without storing: the caller then claims it itself)."""
        delay = 0.01
        pending = list(keys)
        while pending:
            pending = [k for k in pending
                       if not self.store._path(k).exists() and self._path(k).exists()]
            if pending:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

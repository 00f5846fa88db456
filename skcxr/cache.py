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
* an optional on-disk store (a directory: the ``memory`` parameter), one ``.npy`` file per
  entry written to a temporary name and renamed into place, so several joblib worker
  processes can share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ._validation import NONE, Check

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
    """The (validated) ``memory`` parameter: None, a path or a joblib.Memory -> a directory."""
    location = getattr(memory, "location", memory)  # joblib.Memory
    return None if location is None else Path(location)


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


class FeatureStore:
    """Per-image arrays under ``<root>/skcxr-features/<namespace digest>/``."""

    def __init__(self, root: Path, namespace: dict):
        self.namespace = namespace
        self.dir = Path(root) / "skcxr-features" / namespace_digest(namespace)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get_many(self, keys: list[str]) -> tuple[dict[int, np.ndarray], list[int]]:
        """Return (found rows by position, positions not in the store)."""
        found, missing = {}, []
        for i, key in enumerate(keys):
            try:
                found[i] = np.load(self._path(key))
            except (FileNotFoundError, ValueError, OSError):
                missing.append(i)
        return found, missing

    def put_many(self, keys: list[str], rows) -> None:
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "namespace.json").write_text(
                json.dumps(self.namespace, sort_keys=True, indent=1, default=str)
            )
        for key, row in zip(keys, rows):
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, row)
            os.replace(tmp, path)


# --------------------------------------------------------------------------- memory


class _MemoryLRU:
    """Process-wide LRU of tensors, bounded in bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self.entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "computed": 0, "disk_hits": 0, "evicted": 0}

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

    The top-level keys describe the features / frozen-prefix store; ``"decoded"`` holds the
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
        self.store = FeatureStore(location, namespace) if location is not None else None

    def get(self, i: int) -> torch.Tensor:
        key = (self.ns, self.keys[i])
        t = _DECODED.get(key)
        if t is not None:
            _DECODED.count("hits")
            return t.clone()  # a user's augmentation may work in place
        _DECODED.count("misses")
        if self.store is not None:
            found, _ = self.store.get_many([self.keys[i]])
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
                ) -> list[torch.Tensor]:
    """One tensor per key, from memory, then disk, then ``compute(missing_positions)``.

    ``compute`` receives the positions (into ``keys``) still missing and returns a tensor
    whose first dimension runs over them. New results go to memory and, when ``location``
    is set, to disk.

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

    def compute_and_store(positions: list[int]) -> None:
        computed = compute(positions)
        _MEMORY.count("computed", len(positions))
        for j, i in enumerate(positions):
            out[i] = computed[j].clone()
            _MEMORY.put((ns, keys[i]), out[i])
        if store is not None:
            store.put_many([keys[i] for i in positions], [_to_numpy(out[i]) for i in positions])

    with _namespace_lock(ns):
        for i in missing:  # another thread may have computed some while this one waited
            out[i] = _MEMORY.get((ns, keys[i]))
        missing = [i for i in missing if out[i] is None]
        if store is None:
            if missing:
                compute_and_store(missing)
            return out
        if missing:
            missing = from_disk(missing)
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
    return out


_NS_LOCKS: dict[str, threading.Lock] = {}
_NS_LOCKS_GUARD = threading.Lock()


def _namespace_lock(ns: str) -> threading.Lock:
    with _NS_LOCKS_GUARD:
        return _NS_LOCKS.setdefault(ns, threading.Lock())


class _Claims:
    """Which process computes which entries of a shared disk store.

    A claim is a file ``<key>.claim`` beside the entry's ``.npy``, created atomically
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

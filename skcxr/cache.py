"""Per-image caches shared by estimator clones and processes: features, frozen-prefix outputs.

Every entry is keyed by a *namespace* (everything that determines the output: backbone,
weights digest, preprocessing, precision, cut point) and a per-image content hash, so a
cross-validation or a grid search computes each image's result once, whatever subset of
images each fold asks for, and a change of weights, preprocessing or pixels never hits a stale
entry.

Two stores:

* an in-process LRU store with a byte budget (:func:`set_cache_budget`), living outside
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
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def resolve_location(memory) -> Path | None:
    """``memory`` parameter (None, a path or a joblib.Memory) -> cache directory or None."""
    if memory is None:
        return None
    location = getattr(memory, "location", memory)  # joblib.Memory
    if location is None:
        return None
    if not isinstance(location, (str, os.PathLike)):
        raise ValueError(
            f"memory must be None, a directory path or a joblib.Memory; got {memory!r}."
        )
    return Path(location)


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


def set_cache_budget(nbytes: int) -> None:
    """Bound the in-process cache to ``nbytes`` (default 2 GiB, or ``$SKCXR_CACHE_BYTES``)."""
    if not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0; got {nbytes!r}.")
    _MEMORY.set_budget(int(nbytes))


def cache_info() -> dict:
    """Entries, bytes, budget and hit/miss counters of the in-process cache."""
    return {"entries": len(_MEMORY.entries), "bytes": _MEMORY.nbytes,
            "budget": _MEMORY.budget, **_MEMORY.stats}


def clear_cache() -> None:
    """Empty the in-process cache and reset its counters (the disk store is untouched)."""
    _MEMORY.clear()


def cached_rows(namespace: dict, keys: list[str], compute, *, location: Path | None = None,
                ) -> list[torch.Tensor]:
    """One tensor per key, from memory, then disk, then ``compute(missing_positions)``.

    ``compute`` receives the positions (into ``keys``) still missing and returns a tensor
    whose first dimension runs over them. New results go to memory and, when ``location``
    is set, to disk.
    """
    ns = namespace_digest(namespace)
    out: list[torch.Tensor | None] = [_MEMORY.get((ns, k)) for k in keys]
    missing = [i for i, t in enumerate(out) if t is None]
    _MEMORY.stats["hits"] += len(keys) - len(missing)
    _MEMORY.stats["misses"] += len(missing)
    store = FeatureStore(location, namespace) if location is not None else None
    if missing and store is not None:
        dtype = getattr(torch, namespace.get("dtype", "float32"))
        found, still = store.get_many([keys[i] for i in missing])
        for j, arr in found.items():
            i = missing[j]
            out[i] = _from_numpy(arr, dtype)
            _MEMORY.put((ns, keys[i]), out[i])
        _MEMORY.stats["disk_hits"] += len(found)
        missing = [missing[j] for j in still]
    if missing:
        computed = compute(missing)
        _MEMORY.stats["computed"] += len(missing)
        for j, i in enumerate(missing):
            out[i] = computed[j].clone()
            _MEMORY.put((ns, keys[i]), out[i])
        if store is not None:
            store.put_many([keys[i] for i in missing], [_to_numpy(out[i]) for i in missing])
    return out

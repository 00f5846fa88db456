"""On-disk store of per-image arrays (pooled features), shared by clones and processes.

Entries are keyed by a *namespace* (everything that determines the output: backbone,
weights digest, preprocessing, precision) and a per-image content hash, so a cross-validation
or a grid search over the downstream model computes each image's features once, whatever
subset of images each fold asks for. One ``.npy`` file per entry, written to a temporary
name and renamed into place, so several joblib worker processes can share a directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


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


class FeatureStore:
    """Per-image arrays under ``<root>/skcxr-features/<namespace>/``."""

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

    def put_many(self, keys: list[str], rows: np.ndarray) -> None:
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

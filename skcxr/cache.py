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

Two kinds of store:

* in-process LRU stores with byte budgets (:func:`set_cache_budget`), living outside
  estimator instances, so the clones that ``cross_val_score`` and ``GridSearchCV`` make share
  them (the ``"features"`` and ``"decoded"`` stores of ``skcxr._state``, where every
  in-process store is declared; :func:`cache_info` shows them all, :func:`clear_cache`
  empties them all);
* an optional on-disk store (a directory: the ``memory`` parameter), one self-verifying
  ``.entry`` file per entry (:func:`encode_entry`) written to a temporary name and renamed
  into place, so several joblib worker processes can share it (``skcxr._disk``); the
  processes split the work by claims that die with their holder (:class:`_Claims`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ._disk import DiskStore, _from_numpy, _to_numpy, namespace_digest, write_failed
from ._state import DECODED, FEATURES, NAMESPACE_LOCKS, STORES, clear_stores, get_config
from ._validation import ImageReadError

__all__ = [
    "cache_info",
    "clear_cache",
    "set_cache_budget",
]


# --------------------------------------------------------------------------- memory


def _check_budget(name, nbytes) -> int:
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"{name} must be an int >= 0 (bytes); got {nbytes!r}.")
    return int(nbytes)


def set_cache_budget(nbytes: int | None = None, *, decoded: int | None = None) -> None:
    """Bound the in-process stores of tensors, in bytes; least recently used entries go first.

    Parameters
    ----------
    nbytes : int, optional
        Features and frozen-prefix outputs (the ``"features"`` store; default 2 GiB, or
        ``$SKCXR_CACHE_BYTES``).
    decoded : int, optional
        Decoded, resized images (the ``"decoded"`` store; default 1 GiB, or
        ``$SKCXR_DECODED_CACHE_BYTES``); 0 turns the decoded-image cache off.
    """
    if nbytes is not None:
        FEATURES.set_limit(_check_budget("nbytes", nbytes))
    if decoded is not None:
        DECODED.set_limit(_check_budget("decoded", decoded))


def cache_info() -> dict:
    """Every in-process store of skcxr, by name: its entries, its bound and its counters.

    Each store reports ``entries``, its bound (``budget`` and ``bytes`` for the two stores of
    tensors, ``max_entries`` for the others), ``hits``, ``misses`` and ``evicted``, plus
    counters of its own:

    * ``"features"``: outputs of frozen networks (transformer features, frozen-prefix
      outputs, a fitted classifier's logits); ``computed`` counts entries computed from
      images, ``derived`` frozen-prefix outputs derived from the cached outputs of a
      shallower cut, ``disk_hits`` entries read from ``memory=``, ``rejected`` disk entries
      that did not verify;
    * ``"decoded"``: decoded, resized images (``computed``: images decoded);
    * ``"backbones"``, ``"plans"``: loaded named backbones and their probe findings;
    * ``"conversions"``, ``"compiled"``: OpenVINO models (``blob_hits``: compiled models
      loaded from ``memory=``, ``blob_rejected``: blobs there that did not verify);
    * ``"network_digests"``, ``"file_digests"``: weights hashes;
    * ``"cache_roots"``, ``"warnings"``, ``"machine"``: what this process found out about
      its ``memory=`` directories, the warnings it gave, facts about the machine.

    The bounds are set in one place (``skcxr._state.SIZES``, documented in
    ``docs/design.md``).

    Returns
    -------
    dict
        ``{store name: {counter: value}}``, a snapshot (later calls do not change it).
    """
    return {name: store.info() for name, store in STORES.items()}


def clear_cache() -> None:
    """Empty every in-process store of skcxr and reset its counters.

    Frees the cached outputs and decoded images, the kept backbones and probe plans, the
    OpenVINO conversions and compiled models, the weights hashes, and forgets which
    ``memory=`` directories were found unwritable and which warnings were given. Disk stores
    (``memory=``) are untouched; fitted estimators keep working (what they need is rebuilt
    on demand).
    """
    clear_stores()


class DecodedImages:
    """Decoded, resized images of one source, from memory, then disk, else decoded.

    Entries are the output of :meth:`skcxr.images.Preprocessing.decode` (before channel
    conversion and augmentation: grey images stay one channel, a third of the bytes), keyed
    by the decode settings and the image's content hash, so folds, epochs and grid points
    decode each file once. With ``location``, entries also go to
    ``<location>/skcxr-features/<namespace digest>/`` (shared by worker processes; with
    ``num_workers > 0`` each DataLoader worker has its own in-process store, so the disk
    store is what carries entries from one epoch's workers to the next).
    """

    def __init__(self, source, preprocessing, location: Path | None = None):
        self.source = source.verified()  # entries are stored under the images' keys
        self.preprocessing = preprocessing
        namespace = {"kind": "decoded", **preprocessing.decode_description()}
        self.digest = namespace_digest(namespace)
        self.keys = source.keys()
        self.store = (DiskStore(location, namespace, fixed_shape=False)
                      if location is not None else None)

    def get(self, i: int) -> torch.Tensor:
        key = (self.digest, self.keys[i])
        t = DECODED.get(key)
        if t is not None:
            return t.clone()  # a user's augmentation may work in place
        if self.store is not None:
            found, _ = self.store.get_many([self.keys[i]])
            DECODED.count("rejected", len(self.store.rejected))
            self.store.rejected.clear()
            if found:
                DECODED.count("disk_hits")
                t = torch.from_numpy(found[0])
                DECODED.put(key, t)
                return t.clone()
        # decoded from the bytes whose hash is the key (a file rewritten meanwhile raises)
        t = self.preprocessing.decode(self.source, i).contiguous()
        DECODED.count("computed")
        DECODED.put(key, t)
        if self.store is not None:
            self.store.put_many([self.keys[i]], [t.numpy()])
        return t.clone()


def cached_rows(namespace: dict, keys: list[str], compute, *, location: Path | None = None,
                counter: str = "computed") -> list[torch.Tensor]:
    """One tensor per key, from memory, then disk, then ``compute(missing_positions)``.

    ``compute`` receives the positions (into ``keys``) still missing and returns a tensor
    whose first dimension runs over them; it must compute each from the content its key
    hashes (a :meth:`skcxr.images.ImageSource.verified` source raises when a file changed
    since). New
    results go to memory and, when ``location`` is set, to disk. They are counted under
    ``counter`` in :func:`cache_info`: ``"computed"`` (from the images) or ``"derived"``
    (from other cached outputs).

    Each entry is computed once, also when several threads or processes ask for it at the
    same time: threads of one process take turns per namespace; processes sharing
    ``location`` claim the entries they compute (:class:`_Claims`) and wait for the ones
    another process has claimed, so two workers of a grid search split the work instead of
    doing it twice. Entries are computed ``get_config()["cache_chunk"]`` at a time (a
    claim's worth with a shared store), so what was computed before a bad file stays.
    """
    digest = namespace_digest(namespace)
    out: list[torch.Tensor | None] = [FEATURES.get((digest, k)) for k in keys]
    missing = [i for i, t in enumerate(out) if t is None]
    if not missing:
        return out
    store = DiskStore(location, namespace) if location is not None else None
    dtype = getattr(torch, namespace.get("dtype", "float32"))

    def from_disk(positions: list[int]) -> list[int]:
        """Fill ``out`` from the disk store; return the positions still missing."""
        found, still = store.get_many([keys[i] for i in positions])
        for j, arr in found.items():
            i = positions[j]
            out[i] = _from_numpy(arr, dtype)
            FEATURES.put((digest, keys[i]), out[i])
        FEATURES.count("disk_hits", len(found))
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
        FEATURES.count(counter, len(positions))
        for j, i in enumerate(positions):
            out[i] = computed[j].clone()
            FEATURES.put((digest, keys[i]), out[i])
        if store is not None:
            store.put_many([keys[i] for i in positions], [_to_numpy(out[i]) for i in positions])
        done += len(positions)

    def in_chunks(positions: list[int]) -> None:
        chunk = get_config()["cache_chunk"]
        for start in range(0, len(positions), chunk):
            compute_and_store(positions[start:start + chunk])

    try:
        with NAMESPACE_LOCKS.hold(digest):
            for i in missing:  # another thread may have computed some while this one waited
                out[i] = FEATURES.peek((digest, keys[i]))
            missing = [i for i in missing if out[i] is None]
            if missing and store is not None:
                missing = from_disk(missing)
            claims = _Claims.open(store) if missing and store is not None else None
            if claims is None:  # no shared store (or one this process cannot write to)
                in_chunks(missing)
                return out
            try:
                while missing:
                    # a chunk at a time, so that processes asking for the same entries split
                    # them
                    mine = claims.claim([keys[i] for i in missing],
                                        limit=get_config()["claim_chunk"])
                    try:
                        # another process may have stored one between our look and our claim
                        todo = from_disk([i for i in missing if keys[i] in mine]) if mine \
                            else []
                        if todo:
                            compute_and_store(todo)
                    finally:
                        claims.release(mine)
                    missing = [i for i in missing if keys[i] not in mine]
                    if missing:  # claimed by another process: wait for its entries to land
                        claims.wait([keys[i] for i in missing])
                        missing = from_disk(missing)
                        if not store.writable:  # our writes failed meanwhile: no more claims
                            in_chunks(missing)
                            missing = []
            finally:
                claims.close()
    finally:  # each entry that did not verify counts once, however often it was read
        if store is not None:
            FEATURES.count("rejected", len(store.rejected))
    return out


class _Claims:
    """Which process computes which entries of a shared disk store.

    A claim is an exclusive ``flock`` on a file ``<key>.claim`` beside the entry's
    ``.entry`` file, held through an open descriptor for as long as the holder computes the
    entry. The kernel releases it when the holder closes the file or dies in any way
    (SIGKILL, SIGTERM from a scheduler, a crash, a killed loky worker), so a claim never
    outlives its holder: a process that finds a claim file it can lock takes it over at
    once. Holders remove their claim files after storing the entry. On network file
    systems, Linux implements ``flock`` with the NFS lock manager, which releases a dead
    client's locks when its lease ends.
    """

    def __init__(self, store: DiskStore):
        import fcntl

        self.store, self._fcntl = store, fcntl
        self._held: dict[str, int] = {}  # key -> descriptor holding the lock

    @classmethod
    def open(cls, store: DiskStore):
        """Claims on ``store``, or None where there can be none (not writable, no fcntl)."""
        if not store.writable:
            return None
        try:
            claims = cls(store)
        except ImportError:  # no flock on this platform: each process computes its misses
            return None
        try:
            store.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            write_failed(store.root, exc)
            return None
        return claims

    def _path(self, key: str) -> Path:
        return self.store._path(key).with_suffix(".claim")

    def _lock(self, key: str) -> int | None:
        """A descriptor holding ``key``'s claim, or None when a live process holds it."""
        fcntl = self._fcntl
        path = self._path(key)
        for _ in range(3):
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:  # still the file at that path, not one its releaser just removed?
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        return None

    def claim(self, keys: list[str], limit: int | None = None) -> set[str]:
        """Claim up to ``limit`` keys that no live process holds."""
        mine = set()
        for key in keys:
            if limit is not None and len(mine) >= limit:
                break
            try:
                fd = self._lock(key)
            except OSError as exc:  # disk full (no inode for the claim file), read-only
                write_failed(self.store.root, exc)
                break
            if fd is not None:
                self._held[key] = fd
                mine.add(key)
        return mine

    def release(self, keys) -> None:
        for key in keys:
            fd = self._held.pop(key, None)
            if fd is None:
                continue
            try:
                self._path(key).unlink(missing_ok=True)  # removed while still locked
            except OSError:
                pass
            os.close(fd)

    def close(self) -> None:
        self.release(list(self._held))

    def held(self, key: str) -> bool:
        """Whether a live process holds ``key``'s claim."""
        fcntl = self._fcntl
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def wait(self, keys: list[str]) -> None:
        """Until every key is on disk or no live process holds its claim (its holder stored
        nothing, failed or died: the caller then claims it itself)."""
        delay = 0.01
        pending = list(keys)
        while pending:
            pending = [k for k in pending if not self.store.has(k) and self.held(k)]
            if pending:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

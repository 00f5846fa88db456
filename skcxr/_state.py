"""Process state: every store skcxr keeps in a process, declared here and nowhere else.

In the manner of ``sklearn/_config.py`` (one module owns the process-wide settings) and
``timm/_registry.py`` (one registry, looked up by name), each memo of the package is a named
:class:`Store` declared below, with its lock, its bound (:data:`SIZES`) and its counters.
:func:`skcxr.cache.cache_info` shows every store and :func:`skcxr.cache.clear_cache` empties
every one: the one public call that a user freeing memory and a test fixture both make.
Nothing in the package grows without bound: a store evicts its least recently used entry
when it is full, and the per-key locks (:class:`KeyedLocks`) exist only while a thread holds
or waits for one.

Besides the stores, three pieces of process state live here:

* :data:`RNG_LOCK`: torch has one global RNG per process, which dropout, augmentation and
  weight initialisation draw from; a fit's random sections hold this lock
  (:class:`skcxr._runtime.RandomStream`), so fits in threads of one process draw exactly what
  they would draw one after the other.
* :data:`GPU_LEASE`: the GPU this process leased (:func:`skcxr._runtime.process_gpu`), held
  for the life of the process; a resource, not a memo, so ``clear_cache`` leaves it.
* fork handling: a child started by ``os.fork`` (``multiprocessing``'s default start method
  on Linux) gets fresh locks (a lock another thread held at the fork would stay locked
  forever), drops the OpenVINO models (their threads stayed in the parent: using them hangs)
  and runs torch on one thread (GNU OpenMP's thread pool does not survive a fork either:
  torch's first parallel region in the child would hang).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict

_MISSING = object()


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} must be a number of bytes (an int).") from None


#: The bound of every store: a number of entries, or of bytes for the two stores of tensors
#: (``$SKCXR_CACHE_BYTES`` / ``$SKCXR_DECODED_CACHE_BYTES`` at import, then
#: :func:`skcxr.cache.set_cache_budget`). Why each number is what it is:
SIZES = {
    # frozen outputs (features, frozen-prefix activations): a grid over 5,000 images at
    # lite0's anchor (63 KB per image in bf16) is 0.3 GB per cut point
    "features": _env_bytes("SKCXR_CACHE_BYTES", 2 * 1024**3),
    # decoded, resized images: 5,000 grey 224 px images are 0.25 GB
    "decoded": _env_bytes("SKCXR_DECODED_CACHE_BYTES", 1024**3),
    # loaded named backbones (lite0: 19 MB each): a grid loads one backbone per fit
    "backbones": 2,
    # probe plans (layer order, chain, shapes): small; one per architecture and input size
    "plans": 16,
    # OpenVINO conversions of a backbone's chain (lite0: ~20 MB each): one per backbone
    "conversions": 4,
    # OpenVINO compiled models: a grid compiles the anchor and one segment per cut point
    "compiled": 8,
    # sha256 of fitted networks' weights (for the whole-network engine key)
    "network_digests": 64,
    # sha256 of weights files, by path and the file's identity (inode, size, times)
    "file_digests": 64,
    # cache directories: whether this process can write there
    "cache_roots": 64,
    # warnings given once per process (and per subject)
    "warnings": 64,
    # facts about this machine (native bf16, the OpenMP runtime)
    "machine": 8,
}


class Store:
    """A named, bounded, thread-safe memo: an LRU of entries with hit/miss counters.

    Bounded by ``SIZES[name]``: entries, or bytes (``sizeof`` gives an entry's size; an entry
    larger than the whole budget is not kept). ``counters`` adds counters of its own to the
    ``hits``, ``misses`` and ``evicted`` every store has.
    """

    def __init__(self, name: str, doc: str, *, sizeof=None, counters=(), describe=None):
        self.name, self.doc, self.sizeof, self.describe = name, doc, sizeof, describe
        self.limit = SIZES[name]
        self._entries: OrderedDict = OrderedDict()
        self.nbytes = 0
        self._counts = dict.fromkeys(("hits", "misses", "evicted", *counters), 0)
        self._lock = threading.RLock()
        self._making = KeyedLocks()

    def keys(self) -> list:
        with self._lock:
            return list(self._entries)

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counts[counter] += n

    def get(self, key, default=None):
        """The entry (now the most recently used), counted as a hit; else ``default``, a miss."""
        with self._lock:
            value = self._entries.get(key, _MISSING)
            if value is _MISSING:
                self._counts["misses"] += 1
                return default
            self._entries.move_to_end(key)
            self._counts["hits"] += 1
            return value

    def peek(self, key, default=None):
        """The entry without counting or reordering (for checks)."""
        with self._lock:
            return self._entries.get(key, default)

    def put(self, key, value) -> bool:
        """Keep ``value`` under ``key`` (replacing an entry there) as the most recently used;
        False when it is larger than the whole budget (then nothing is kept)."""
        size = self.sizeof(value) if self.sizeof else 0
        if self.sizeof and size > self.limit:
            return False
        with self._lock:
            self.discard(key)
            self._entries[key] = value
            self.nbytes += size
            self._shrink()
        return True

    def get_or_make(self, key, make):
        """The entry, or ``make()``'s result kept under ``key``. One thread makes an entry;
        concurrent callers of the same key wait for it, other keys are made meanwhile."""
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        with self._making.hold(key):
            value = self.peek(key, _MISSING)
            if value is _MISSING:
                value = make()
                self.put(key, value)
            return value

    def discard(self, key) -> None:
        with self._lock:
            value = self._entries.pop(key, _MISSING)
            if value is not _MISSING and self.sizeof:
                self.nbytes -= self.sizeof(value)

    def _shrink(self) -> None:
        while self._entries and (self.nbytes if self.sizeof else len(self._entries)) > self.limit:
            _, old = self._entries.popitem(last=False)
            if self.sizeof:
                self.nbytes -= self.sizeof(old)
            self._counts["evicted"] += 1

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self.limit = limit
            self._shrink()

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0
            self._counts = dict.fromkeys(self._counts, 0)

    def info(self) -> dict:
        with self._lock:
            bound = {"budget": self.limit, "bytes": self.nbytes} if self.sizeof \
                else {"max_entries": self.limit}
            info = {"entries": len(self._entries), **bound, **self._counts}
            if self.describe is not None:
                info["contents"] = [self.describe(k, v) for k, v in self._entries.items()]
            return info

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        self._making._after_fork()

    def _abandon(self) -> None:
        """Forget every entry without destroying it (a forked child: destroying OpenVINO
        objects there waits for threads that stayed in the parent, forever)."""
        import ctypes

        # one reference that is never released, so not even the interpreter's shutdown
        # destroys them
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self._entries))
        self._entries = OrderedDict()
        self.nbytes = 0


class KeyedLocks:
    """One lock per key, existing only while a thread holds or waits for it (bounded by the
    keys in use, not by every key ever seen). Reentrant per thread."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict = {}  # key -> [lock, users]

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.contextmanager
    def hold(self, key):
        with self._guard:
            entry = self._locks.setdefault(key, [threading.RLock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]

    def _after_fork(self) -> None:
        self._guard = threading.Lock()
        self._locks = {}


def _tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


# --------------------------------------------------------------------------- the stores

FEATURES = Store(
    "features", "outputs of frozen networks per image (features, frozen-prefix activations, "
    "logits of fitted networks), keyed by namespace digest and image hash",
    sizeof=_tensor_bytes, counters=("computed", "derived", "disk_hits", "rejected"))
DECODED = Store(
    "decoded", "decoded, resized images per image (before channel conversion)",
    sizeof=_tensor_bytes, counters=("computed", "disk_hits", "rejected"))
BACKBONES = Store(
    "backbones", "loaded named backbones, by name, weights (a file by its sha256), channels, "
    "pooling, classifier and seed; each load_backbone call gets a copy")
PLANS = Store(
    "plans", "probe findings of an architecture at an input shape: parameterised layers in "
    "forward order, chain names, chain output shapes")
CONVERSIONS = Store(
    "conversions", "OpenVINO models converted from a backbone's chain (every element's "
    "output), by weights and input shape", counters=("converted",))
def _describe_compiled(key, compiled) -> dict:
    kind, _, shape, precision, uint8_steps, threads = key
    return {"kind": kind, "input_shape": list(shape), "precision": precision,
            "uint8_input": uint8_steps is not None, "threads": threads,
            "inference_num_threads": compiled.compiled.get_property("INFERENCE_NUM_THREADS")}


COMPILED = Store(
    "compiled", "OpenVINO compiled models, by part, input shape, precision, normalisation and "
    "thread count", counters=("compiled", "blob_hits", "blob_rejected"),
    describe=_describe_compiled)
NETWORK_DIGESTS = Store(
    "network_digests", "sha256 of a fitted network's weights, per network object (weakly "
    "referenced)")
FILE_DIGESTS = Store(
    "file_digests", "sha256 of weights files by path, inode, size, mtime and ctime (a file "
    "rewritten in place, even with its times preserved, has a new ctime)")
CACHE_ROOTS = Store(
    "cache_roots", "memory= directories: whether this process can write there (False after "
    "a failed write: disk full, read-only)")
WARNINGS = Store("warnings", "warnings already given in this process, by subject")
MACHINE = Store("machine", "facts about this machine and process (native bf16, the OpenMP "
                "runtime's controller)")

#: Every store, by name: what ``cache_info`` shows and ``clear_cache`` empties.
STORES = {s.name: s for s in (FEATURES, DECODED, BACKBONES, PLANS, CONVERSIONS, COMPILED,
                              NETWORK_DIGESTS, FILE_DIGESTS, CACHE_ROOTS, WARNINGS, MACHINE)}

#: Per-namespace locks of the per-image caches: threads computing one namespace take turns.
NAMESPACE_LOCKS = KeyedLocks()


def clear_stores() -> None:
    for store in STORES.values():
        store.clear()


def warn_once(subject, message: str, category=UserWarning, stacklevel: int = 2) -> None:
    """``warnings.warn`` once per process and ``subject`` (until ``clear_cache``)."""
    if WARNINGS.peek(subject) is None:
        WARNINGS.put(subject, True)
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def weak_memo(store: Store, obj, make):
    """``make()`` memoised in ``store`` per live object ``obj`` (held weakly: a new object
    at a reused address is a miss)."""
    hit = store.get(id(obj))
    if hit is not None and hit[0]() is obj:
        return hit[1]
    value = make()
    store.put(id(obj), (weakref.ref(obj), value))  # replaces a dead object's entry
    return value


# --------------------------------------------------------------------------- settings

#: Process-wide settings (:func:`skcxr.set_config`), each with its default and why.
_DEFAULTS = {
    # from this many images in one predict call (or once such a network is compiled), the
    # OpenVINO engine runs a fitted classifier whole, compiled once per fitted model and
    # process, instead of its compiled prefix and a torch suffix: the whole network is 1.25x
    # faster once compiled, and its ~4 s compile pays back from ~5,000 images after a fit in
    # the same process (benchmarks/bench_predict.py)
    "whole_network_min_images": 2048,
    # engine="auto" runs frozen parts in OpenVINO from this many images in a call, in torch
    # below: OpenVINO's conversion and compile (~3.5 s for lite0 on 2 cores) pays back from
    # about 500 images in a first call (benchmarks/bench_engine.py: torch took 0.19-0.40x
    # OpenVINO's time at 64 images, 0.89-1.14x at 512, 1.19-1.67x at 1024)
    "openvino_min_images": 512,
    # entries of the per-image caches computed and stored together: what a bad file or a
    # killed process loses at most
    "cache_chunk": 512,
    # entries a process claims at a time in a shared memory= directory (minutes of work at
    # most, so that workers asking for the same entries split them)
    "claim_chunk": 64,
    # seconds of training after which a classifier fit with memory= saves its state at the
    # end of an epoch (skcxr._resume): a save costs tens of milliseconds, as long as a whole
    # epoch of a head on cached prefix outputs, so fast fits are not slowed; a long fit
    # loses at most this and one epoch. 0: every epoch
    "checkpoint_interval": 10,
}
#: the least value of a setting (1 where not listed)
_MINIMUM = {"checkpoint_interval": 0}
_global_config = dict(_DEFAULTS)
_thread_config = threading.local()


def _config() -> dict:
    if not hasattr(_thread_config, "config"):
        _thread_config.config = _global_config.copy()
    return _thread_config.config


def get_config() -> dict:
    """Return skcxr's settings as they are in the calling thread.

    Returns
    -------
    dict
        Setting name -> value (a copy; see :func:`set_config` for the settings).
    """
    return _config().copy()


def _check_settings(settings: dict, caller: str) -> None:
    for name, value in settings.items():
        if name not in _DEFAULTS:
            raise TypeError(f"{caller}() got an unknown setting {name!r}; the settings are "
                            f"{sorted(_DEFAULTS)}.")
        least = _MINIMUM.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{caller}(): {name} must be an int >= {least}; got {value!r}.")


def set_config(**settings) -> None:
    """Change skcxr's settings (like :func:`sklearn.set_config`).

    In the calling thread, and as the defaults of threads that have not read them yet.

    Parameters
    ----------
    **settings : int
        Any of:

        - ``whole_network_min_images`` (int >= 1, default 2048): from this many images in
          one ``predict`` call (or once such a network is compiled), the OpenVINO engine
          runs a fitted classifier whole, compiled once per fitted model;
        - ``openvino_min_images`` (int >= 1, default 512): ``engine="auto"`` runs frozen
          parts in OpenVINO from this many images in a call, in torch below (its compile
          costs more than it saves on fewer);
        - ``cache_chunk`` (int >= 1, default 512): entries of the per-image caches
          computed and stored together: what a bad file or a killed process can lose at
          most;
        - ``claim_chunk`` (int >= 1, default 64): entries a process claims at a time in a
          shared ``memory=`` directory;
        - ``checkpoint_interval`` (int >= 0, default 10): seconds of training after which
          a classifier fit with ``memory=`` saves its state at the end of an epoch, to
          resume from if it is interrupted (0: every epoch).
    """
    _check_settings(settings, "set_config")
    _config().update(settings)
    _global_config.update(settings)


@contextlib.contextmanager
def config_context(**settings):
    """:func:`set_config` inside a ``with`` block, for the calling thread only.

    The settings are restored after it.

    Parameters
    ----------
    **settings : int
        As :func:`set_config`.

    Yields
    ------
    None
        The block runs with the settings.
    """
    _check_settings(settings, "config_context")
    local = _config()
    old = local.copy()
    local.update(settings)
    try:
        yield
    finally:
        local.clear()
        local.update(old)


# --------------------------------------------------------------------------- process state


class _ForkSafeLock:
    """An RLock replaced by a fresh one in a forked child."""

    def __init__(self):
        self._lock = threading.RLock()

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()

    def _after_fork(self):
        self._lock = threading.RLock()


#: Held while a fit draws from torch's global RNG (see the module docstring).
RNG_LOCK = _ForkSafeLock()

#: Held while a torch module is traced for OpenVINO: torch.jit's tracer checks its trace by
#: running the module again, and two traces at once in one process (a fit converting its
#: chain beside another fit's conversion) failed that check.
TRACE_LOCK = _ForkSafeLock()

#: The GPU this process leased: ``{"index": i, "file": open lock file}`` once leased.
GPU_LEASE: dict = {}
GPU_LEASE_LOCK = _ForkSafeLock()


def _after_fork_in_child() -> None:
    for store in STORES.values():
        store._after_fork()
    NAMESPACE_LOCKS._after_fork()
    RNG_LOCK._after_fork()
    TRACE_LOCK._after_fork()
    GPU_LEASE_LOCK._after_fork()
    # OpenVINO's compiled models and their thread pools belong to the parent: the child
    # compiles its own (destroying the parent's would hang: they are only forgotten)
    COMPILED._abandon()
    CONVERSIONS._abandon()
    MACHINE._abandon()
    if "torch" in sys.modules:
        # GNU OpenMP's threads do not survive a fork, but its pool thinks they do: the
        # child's first parallel region would wait for them forever. One thread needs none.
        sys.modules["torch"].set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)

"""Resumable fits: a classifier's training state after its epochs (one that ends 10 s or
more after the last save: the ``checkpoint_interval`` setting), on disk beside the caches
(``memory=``), so a fit that was interrupted (Ctrl-C, SIGTERM, a killed process, a
crash) goes on from its last completed epoch when run again with the same parameters and
data, and a fit that finished (a candidate of a grid search run again) is not trained again.

One file per fit, ``<memory>/skcxr-fits/<key>.entry``, where the key digests everything the
training depends on (:func:`fit_key`): the parameters that change what is trained, the
images in order (their content hashes), the fit's rows, labels and weights, the backbone's
weights identity, the seed, and the skcxr and torch versions. The file is the cache's
self-verifying entry (:func:`skcxr._disk.encode_entry`: magic, version, the key as
namespace, BLAKE2b checksum), written atomically, its payload read with
``torch.load(weights_only=True)`` (tensors and plain types only: loading runs no code). A
file that does not verify (another key, truncated, tampered) is ignored and replaced; a
payload from another layout is ignored too.

What a checkpoint holds (skorch's ``Checkpoint`` saves module, optimizer and history; a fit
resumes exactly only with the rest too): the trainable tensors of the network (head, the
planned backbone layers, every buffer; the frozen weights come from the backbone's weights,
which the key pins), whether the backbone was unfrozen, the optimizer's state, the history,
early stopping's counters and best weights, the LR scheduler's state, and torch's RNG state
at the end of the epoch (shuffling, dropout and augmentation draw from it). At fp32 on the
CPU a resumed fit ends with the weights of the uninterrupted one, bit for bit
(``tests/test_resume.py`` kills a fit with SIGKILL mid-epoch and compares). A user's own
``callbacks`` start afresh on resume (a logger logs the remaining epochs).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import joblib
import numpy as np
import torch

from ._disk import decode_entry, encode_entry, location_writable, write_atomic, write_failed
from ._version import __version__

#: bumped whenever what a checkpoint holds changes: older files are ignored
LAYOUT = 1

#: parameters that change nothing a fit trains: left out of the key
_NOT_IN_KEY = ("verbose", "memory", "callbacks")


def fit_key(params: dict, *, image_keys: list[str], rows, weights: dict, seed: int) -> str | None:
    """The digest that names a fit's checkpoint, or None when a parameter cannot be digested
    (a lambda as ``augment``: such fits are not checkpointed)."""
    try:
        digest = joblib.hash({k: v for k, v in params.items() if k not in _NOT_IN_KEY})
    except Exception:  # an object pickle cannot take: no stable identity, no checkpoints
        return None
    h = hashlib.sha256()
    for part in (LAYOUT, digest, __version__, torch.__version__, seed,
                 json.dumps(weights, sort_keys=True, default=str), rows.task):
        h.update(f"{part}\n".encode())
    h.update("\n".join(image_keys).encode())
    for a in (rows.y, rows.train, rows.valid, rows.weights, rows.classes, rows.pos_weight):
        a = np.asarray(a if a is not None else [])
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes() if a.dtype != object else repr(a).encode())
    return h.hexdigest()[:32]


class FitCheckpoints:
    """The checkpoint file of one fit (under ``<root>/skcxr-fits/``). The skorch callback
    that fills it each epoch is :class:`skcxr._callbacks.EpochCheckpoint` (skorch stays
    in that module and :mod:`skcxr._training`)."""

    def __init__(self, root: Path, key: str):
        self.root = Path(root)
        self.key = key
        self.path = self.root / "skcxr-fits" / f"{key}.entry"

    @classmethod
    def of(cls, location, params, **key_parts) -> FitCheckpoints | None:
        """The checkpoints of a fit under the ``memory=`` directory, or None without one (or
        when the fit has no key)."""
        if location is None:
            return None
        key = fit_key(params, **key_parts)
        return None if key is None else cls(location, key)

    def load(self) -> dict | None:
        """The saved state, or None when there is none or it does not verify."""
        try:
            blob = self.path.read_bytes()
        except OSError:
            return None
        payload = decode_entry(blob, self.key, dtype=np.dtype(np.uint8))
        if payload is None:
            return None
        try:
            state = torch.load(io.BytesIO(payload.tobytes()), map_location="cpu",
                               weights_only=True)
        except Exception:  # not a payload this layout wrote: ignored, replaced
            return None
        if not isinstance(state, dict) or state.get("layout") != LAYOUT \
                or state.get("key") != self.key:
            return None
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` atomically; a failed write is warned once and ends the writing,
        not the fit (as the cache's)."""
        if not location_writable(self.root):
            return
        buffer = io.BytesIO()
        torch.save(_plain({**state, "layout": LAYOUT, "key": self.key}), buffer)
        payload = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, encode_entry(self.key, payload))
        except OSError as exc:
            write_failed(self.root, exc)

    # ------------------------------------------------------------------ network state

    @staticmethod
    def trainable_state(module) -> dict:
        """The tensors a fit can change: the head, the planned backbone layers, every
        buffer (copies)."""
        planned = tuple(f"backbone.{name}." for name in module.planned_layers)
        buffers = {name for name, _ in module.named_buffers()}
        return {k: v.detach().clone() for k, v in module.state_dict().items()
                if k.startswith("head.") or k.startswith(planned) or k in buffers}

    def finished(self) -> dict | None:
        state = self.load()
        return state if state is not None and state.get("finished") else None

    def save_finished(self, module, history: list, kept_epoch: int) -> None:
        """The trained network and its history: a rerun of this fit trains nothing."""
        self.save({"finished": True, "module": self.trainable_state(module),
                   "unfrozen": bool(module.backbone_unfrozen),
                   "history": history_json(history), "kept_epoch": int(kept_epoch)})



def _plain(value):
    """``value`` with numpy scalars as Python numbers (what ``weights_only`` loading reads:
    a scheduler's state can hold numpy floats)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def history_json(history: list) -> str:
    """A skorch history (a list of dicts) as JSON: numpy scalars as Python numbers."""
    return json.dumps(list(history),
                      default=lambda o: o.item() if hasattr(o, "item") else str(o))


def restore_module(module, state: dict) -> None:
    """Give ``module`` the trainable tensors and unfreeze state of a checkpoint."""
    if state["unfrozen"] and not module.backbone_unfrozen:
        module.unfreeze()
    missing = set(state["module"]) - set(module.state_dict())
    if missing:  # the key pins the architecture: a mismatch is a bug, never loaded blindly
        raise RuntimeError(f"A fit checkpoint does not fit its network ({sorted(missing)[:3]}).")
    module.load_state_dict(state["module"], strict=False)

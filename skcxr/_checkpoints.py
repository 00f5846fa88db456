"""Checkpoint files: reading a state dict from any of the usual containers, matching its
key names to an architecture (wrapper prefixes, old DenseNet names, published CXR layouts),
and loading it with every mismatch reported or explained.

:mod:`skcxr.backbones` uses these for ``weights=PATH`` and the offline weights packages;
:func:`read_state_dict` is public there.
"""

from __future__ import annotations

import hashlib
import os
import re

import torch
from torch import nn

from ._state import FILE_DIGESTS

CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")


def file_sha256(path: str) -> str:
    """sha256 of a file, memoised (the ``"file_digests"`` store) on its path and identity:
    device, inode, size, modification and change time. A file replaced at the same path
    has another inode or ctime (a copy tool can preserve size and mtime, but setting them
    changes the ctime, which no program can set), so it is hashed again."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def digest() -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    return FILE_DIGESTS.get_or_make(key, digest)


def read_state_dict(path: str) -> dict:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict.

    A ``.safetensors`` file is read by safetensors, anything else by
    ``torch.load(weights_only=True)`` (no code runs). A pickled module gives its state
    dict; a dict that wraps one (under ``state_dict``, ``model_state_dict``, ``model`` or
    ``module``) is unwrapped, and a prefix every key shares (``module.``, ``model.``,
    ``backbone.``) is dropped.

    Parameters
    ----------
    path : str
        The checkpoint file.

    Returns
    -------
    dict
        ``{name: torch.Tensor}``, on the CPU.
    """
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device="cpu")
        except Exception as exc:  # a header safetensors cannot parse, a truncated file
            raise ValueError(f"Cannot read checkpoint {path!r}: not a valid safetensors "
                             f"file ({type(exc).__name__}: {exc}).") from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"Cannot read checkpoint {path!r}: {exc}") from exc
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    for wrapper in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"Checkpoint {path!r} does not hold a state dict of tensors.")
    for prefix in ("module.", "model.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str, *, order_fallback: bool) -> dict:
    """Load a checkpoint into ``model``; report or fail clearly on mismatched keys.

    Keys are matched by name; when no name matches and ``order_fallback`` is set, tensors
    are matched in order (shapes must agree), which is how checkpoints from other
    implementations of the same architecture (e.g. EfficientNet-PyTorch) load. Extra
    trailing tensors in the checkpoint (its classifier) are dropped and reported.
    """
    sd = read_state_dict(path)
    target = model.state_dict()
    sd = _match_layout(sd, target)
    named = set(sd) & set(target)
    if len(named) < len(target) // 2 and order_fallback:
        mapped, dropped = _map_by_order(sd, target, path)
    else:
        mapped = {k: sd[k] for k in named}
        dropped = sorted(set(sd) - named)
        # BatchNorm step counters are bookkeeping that checkpoints of torch < 0.4.1 lack
        missing = sorted(k for k in set(target) - named
                         if not k.endswith("num_batches_tracked"))
        for k in set(target) - named - set(missing):
            mapped[k] = target[k]
        if missing:
            raise ValueError(
                f"Checkpoint {path!r} does not fit this backbone: {len(missing)} missing "
                f"key(s) (e.g. {missing[:5]}); {len(dropped)} unexpected key(s) "
                f"(e.g. {dropped[:5]}). Check that the architecture matches the checkpoint."
            )
    for k, v in list(mapped.items()):
        if v.shape != target[k].shape:
            if v.ndim == 4 and target[k].shape[1] == 1 and v.shape[1] == 3:
                from timm.models._manipulate import adapt_input_conv

                mapped[k] = adapt_input_conv(1, v)
            else:
                raise ValueError(
                    f"Checkpoint {path!r}: tensor {k!r} has shape {tuple(v.shape)} but the "
                    f"backbone expects {tuple(target[k].shape)}."
                )
    bad = [k for k, v in mapped.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"Checkpoint {path!r} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. "
            f"{bad[:5]}): it is corrupt, or was saved after training diverged. Use another "
            "checkpoint (an earlier epoch)."
        )
    model.load_state_dict(mapped, strict=True)
    return {
        "weights_origin": "local checkpoint",
        "weights_file": os.path.abspath(path),
        "weights_sha256": file_sha256(path),
        "ignored_keys": dropped,
    }


_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _match_layout(sd: dict, target: dict) -> dict:
    """Key names of a checkpoint saved in another layout, renamed to the backbone's.

    * wrapper prefixes, nested (``module.densenet121.``: CheXNet's ``DataParallel`` around
      its own module; ``model.``): the number of leading dotted components, shared by every
      key, whose removal matches most of the backbone's names;
    * DenseNet names of torch < 0.4 (``norm.1`` for ``norm1``: the rule torchvision's own
      DenseNet loader applies).
    """
    def strip(keys, n):
        return {".".join(k.split(".")[n:]): v for k, v in keys.items()}

    common = 0
    parts = [k.split(".") for k in sd]
    while parts and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    best = max(range(common + 1), key=lambda n: (len(set(strip(sd, n)) & set(target)), -n))
    sd = strip(sd, best)
    renamed = {}
    for k, v in sd.items():
        m = _OLD_DENSENET.match(k)
        new = m.group(1) + m.group(2) if m and k not in target else k
        renamed[new if new in target else k] = v
    return renamed


def _map_by_order(sd: dict, target: dict, path: str) -> tuple[dict, list]:
    src = list(sd.items())
    if len(src) < len(target):
        raise ValueError(
            f"Checkpoint {path!r} has {len(src)} tensors with names unlike the backbone's and "
            f"the backbone needs {len(target)}; it is not a checkpoint of this architecture."
        )
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src):
        ok = sv.shape == tv.shape or (sv.ndim == 4 and tv.shape[1] == 1 and sv.shape[1] == 3
                                       and sv.shape[0] == tv.shape[0])
        if not ok:
            raise ValueError(
                f"Checkpoint {path!r}: matching tensors in order, {sk!r} {tuple(sv.shape)} does "
                f"not fit {tk!r} {tuple(tv.shape)}; it is not a checkpoint of this architecture."
            )
        mapped[tk] = sv
    return mapped, [k for k, _ in src[len(target):]]

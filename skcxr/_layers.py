"""Which layers of a backbone train: parameterised layers in forward order, and BatchNorm policy.

The studies count a backbone's *c last layers* over the layers that own parameters (a ReLU or
a pooling layer does not count), in the order the forward pass runs them. This module finds
those layers with a probe forward pass and turns ``n_trainable_layers`` (an int, ``-1`` /
``"all"``, or a module name such as ``"blocks.5"``) into the set of layer names that train.
"""

from __future__ import annotations

import torch
from torch import nn

BATCHNORM_POLICIES = ("frozen", "eval", "train")


def parameterised_layers(module: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the leaf modules that own parameters, in the order forward() runs them.

    Layers that the probe forward pass never reaches come last, in registration order.
    """
    owners = {
        name: m for name, m in module.named_modules()
        if name and any(True for _ in m.parameters(recurse=False))
    }
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name))
        for name, m in owners.items()
    ]
    was_training = module.training
    try:
        module.eval()
        with torch.inference_mode():
            module(example)
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    seen: dict[str, None] = dict.fromkeys(order)  # first call wins (shared layers)
    return list(seen) + [n for n in owners if n not in seen]


def select_trainable(layers: list[str], n_trainable_layers) -> list[str]:
    """The layer names that train for a given ``n_trainable_layers``.

    Parameters
    ----------
    layers : list of str
        Parameterised layers in forward order (:func:`parameterised_layers`).
    n_trainable_layers : int, "all" or str
        ``0``: none (head only); ``k > 0``: the last ``k``; ``-1`` or ``"all"``: every layer;
        a module name: every layer from the first one inside that module on.
    """
    n = len(layers)
    if isinstance(n_trainable_layers, str) and n_trainable_layers != "all":
        prefix = n_trainable_layers.rstrip(".")
        for i, name in enumerate(layers):
            if name == prefix or name.startswith(prefix + "."):
                return layers[i:]
        tops = sorted({name.split(".")[0] for name in layers})
        raise ValueError(
            f"n_trainable_layers={n_trainable_layers!r} names no parameterised module of this "
            f"backbone. Top-level modules: {tops}; pass e.g. {layers[-1].rsplit('.', 1)[0]!r}."
        )
    if n_trainable_layers in ("all", -1):
        return list(layers)
    k = int(n_trainable_layers)  # validated: an int >= -1
    if k < -1 or k > n:
        raise ValueError(
            f"n_trainable_layers={k} is out of range: this backbone has {n} parameterised "
            f"layers, so use 0..{n}, -1 or 'all'."
        )
    return layers[n - k:] if k else []


def set_trainable(module: nn.Module, names, trainable: bool = True) -> None:
    """Set ``requires_grad`` of the parameters owned directly by the named layers."""
    for name in names:
        for p in module.get_submodule(name).parameters(recurse=False):
            p.requires_grad_(trainable)


def apply_batchnorm_policy(module: nn.Module, policy: str) -> None:
    """Put BatchNorm layers in eval mode as ``policy`` says; call after every ``.train()``.

    ``"frozen"``: BN layers whose parameters do not train keep their running statistics
    (eval mode); trainable BN layers train. ``"eval"``: every BN layer is in eval mode and its
    affine parameters are fixed, even in unfrozen layers (study 000). ``"train"``: every BN
    layer updates its running statistics in training mode, frozen or not (what a plain
    ``requires_grad=False`` freeze does; offered for comparison).
    """
    if policy == "train" or not module.training:
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if policy == "eval":
                m.eval()
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
            elif not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def sequential_chain(module: nn.Module, example: torch.Tensor, atol: float = 1e-4):
    """Split a backbone into an ordered chain of sub-modules whose composition is its forward.

    Children are taken in registration order, descending into ``nn.Sequential`` containers
    (timm's EfficientNet stages and blocks, ResNet layers). The chain is accepted only if
    running it reproduces ``module(example)`` in eval mode; otherwise None is returned and
    callers fall back to running the module whole (e.g. torchvision DenseNet, whose forward
    applies a functional ReLU that no child holds).

    Returns
    -------
    chain : list of (name, module) or None
    shapes : list of tuple or None
        Each element's output shape for ``example`` (without the batch dimension), from the
        same verifying pass.
    """

    def unroll(prefix: str, m: nn.Module):
        for name, child in m.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Sequential) and len(child):
                yield from unroll(full + ".", child)
            else:
                yield full, child

    chain = list(unroll("", module))
    if not chain:
        return None, None
    was_training = module.training
    module.eval()
    shapes = []
    try:
        with torch.inference_mode():
            want = module(example)
            got = example
            for _, m in chain:
                got = m(got)
                shapes.append(tuple(got.shape[1:]))
        ok = (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)
              and got.shape == want.shape and torch.allclose(got, want, atol=atol, rtol=1e-4))
    except Exception:  # a chain that cannot even run is simply not a chain
        ok = False
    finally:
        module.train(was_training)
    return (chain, shapes) if ok else (None, None)


def anchor_index(shapes, image_size) -> int | None:
    """Where a chain's frozen outputs are cached for every cut point to start from.

    The anchor is the end of the first chain stage (a run of elements with one spatial size)
    whose outputs hold at most 3/4 as many numbers per image as the image has pixels: deep
    enough that what comes before it is most of a prefix's cost (the high-resolution
    stages; 81% of EfficientNet-Lite0 in bf16, whose anchor is the end of ``blocks.2``:
    40x28x28 at 224 px, 63 KB per image in bf16), small enough to keep per image. Returns
    the number of chain elements before it (a cut point), or None when no output is small
    enough (e.g. ResNet-50 at stride 8), or the anchor would be the whole chain.
    """
    h, w = image_size
    limit = 0.75 * h * w
    for i, shape in enumerate(shapes):
        if len(shape) == 3 and shape[0] * shape[1] * shape[2] <= limit:
            while i + 1 < len(shapes) and len(shapes[i + 1]) == 3 \
                    and shapes[i + 1][1:] == shape[1:]:
                i += 1
            return i + 1 if i + 1 < len(shapes) else None
    return None


def cut_index(chain, trainable_layers) -> int:
    """Index of the first chain element that holds a trainable layer (len(chain) if none).

    Everything before it is the frozen prefix, whose output can be computed once.
    """
    for i, (name, _) in enumerate(chain):
        if any(t == name or t.startswith(name + ".") for t in trainable_layers):
            return i
    return len(chain)

"""The network a PretrainedCNNClassifier trains: normalise -> frozen prefix -> suffix -> head.

The backbone's parameterised layers split into a *frozen prefix* (everything before the
first trainable layer) and a *trainable suffix*; the new *head* always trains. The split is
kept explicit (``frozen_layers``, ``trainable_layers``) so that the frozen prefix's output
can be computed once and cached (see the performance engine).
"""

from __future__ import annotations

import torch
from torch import nn

from . import _runtime
from .layers import apply_batchnorm_policy, set_trainable


def make_head(in_features: int, n_outputs: int, hidden_units=(), dropout: float = 0.0,
              ) -> nn.Sequential:
    """Dense head: [Dropout, Linear, ReLU] per hidden layer, then Dropout, Linear."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden_units:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, int(units)), nn.ReLU(inplace=True)]
        width = int(units)
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


class CXRNet(nn.Module):
    """``head(suffix(prefix(x)))``: a backbone split at a cut point, a freezing plan, a BN policy.

    ``prefix`` normalises the images and runs the backbone's chain up to ``cut`` (the frozen
    prefix, in eval mode even while training); ``suffix`` runs the rest of the backbone (the
    trainable suffix); ``head`` maps pooled features to logits. When the backbone cannot be
    split into a chain (``chain_names=None``), the prefix is the normalisation alone.

    Parameters
    ----------
    backbone : nn.Module
        Maps a normalised image batch to pooled features ``(n, num_features)``.
    head : nn.Module
        Maps pooled features to logits.
    mean, std : sequence of float
        Per-channel normalisation; inputs are uint8 (0..255) or float in [0, 1].
    trainable_layers : list of str
        Backbone layers (names inside ``backbone``) that train once unfrozen.
    batchnorm : {"frozen", "eval", "train"}
        See :func:`skcxr.layers.apply_batchnorm_policy`.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the forward pass; logits are returned in float32.
    chain_names : list of str or None
        The backbone as a chain of sub-modules (:func:`skcxr.layers.sequential_chain`).
    cut : int or None
        Chain elements ``[:cut]`` form the frozen prefix.
    """

    def __init__(self, backbone, head, mean, std, trainable_layers=(), batchnorm="frozen",
                 precision="fp32", chain_names=None, cut=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.trainable_layers = list(trainable_layers)
        self.batchnorm = batchnorm
        self.precision = precision
        self.chain_names = list(chain_names) if chain_names is not None else None
        self.cut = (cut if cut is not None else 0) if self.chain_names is not None else 0
        #: True while training on cached prefix outputs instead of images
        self.input_is_prefix = False
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_unfrozen = False

    @property
    def prefix_dtype(self) -> torch.dtype:
        """dtype of the prefix output, cached or not (the compute dtype halves its memory)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def _chain(self, start, stop):
        return [self.backbone.get_submodule(n) for n in self.chain_names[start:stop]]

    def unfreeze(self) -> None:
        """Let the planned backbone layers train (the head always does)."""
        set_trainable(self.backbone, self.trainable_layers, True)
        self.backbone_unfrozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.cut and self.batchnorm != "train":
            for m in self._chain(0, self.cut):  # frozen layers compute as at inference
                m.eval()
        apply_batchnorm_policy(self.backbone, self.batchnorm)
        return self

    def prefix_module(self) -> nn.Sequential:
        """The frozen prefix as a module of its own (sharing weights), in eval mode."""
        return nn.Sequential(*self._chain(0, self.cut)).eval()

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> output of the frozen prefix (what the activation cache stores)."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with _runtime.autocast(x.device, self.precision):
            for m in self._chain(0, self.cut) if self.cut else ():
                x = m(x)
        return x.to(self.prefix_dtype)

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        """Frozen-prefix output -> pooled features."""
        with _runtime.autocast(h.device, self.precision):
            if self.chain_names is None:
                return self.backbone(h)
            for m in self._chain(self.cut, None):
                h = m(h)
            return h

    def forward(self, x, sample_weight=None):
        h = x if self.input_is_prefix else self.prefix(x)
        with _runtime.autocast(h.device, self.precision):
            return self.head(self.suffix(h)).float()

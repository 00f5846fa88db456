"""The network a PretrainedCNNClassifier trains: normalise -> backbone -> head.

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
    """``head(backbone(normalise(x)))`` with a freezing plan and a BatchNorm policy.

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
    """

    def __init__(self, backbone, head, mean, std, trainable_layers=(), batchnorm="frozen",
                 precision="fp32"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.trainable_layers = list(trainable_layers)
        self.batchnorm = batchnorm
        self.precision = precision
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_unfrozen = False

    def unfreeze(self) -> None:
        """Let the planned backbone layers train (the head always does)."""
        set_trainable(self.backbone, self.trainable_layers, True)
        self.backbone_unfrozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        apply_batchnorm_policy(self.backbone, self.batchnorm)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with _runtime.autocast(x.device, self.precision):
            return self.backbone(x)

    def forward(self, x, sample_weight=None):
        with _runtime.autocast(x.device, self.precision):
            return self.head(self.features(x)).float()

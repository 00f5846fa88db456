import pytest
import torch
from torch import nn

from skcxr.layers import apply_batchnorm_policy, parameterised_layers, select_trainable


class OutOfOrder(nn.Module):
    """Registers `late` before `early` but runs `early` first; ReLU/pool own no parameters."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(4, 2)
        self.early = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.early(x))))
        return self.late(x.flatten(1))


def test_layers_are_parameterised_leaves_in_forward_order():
    layers = parameterised_layers(OutOfOrder(), torch.zeros(1, 3, 8, 8))
    assert layers == ["early", "bn", "late"]  # act and pool own no parameters


def test_select_trainable_semantics():
    layers = ["stem", "blocks.0.conv", "blocks.0.bn", "blocks.1.conv", "blocks.1.bn", "head_conv"]
    assert select_trainable(layers, 0) == []
    assert select_trainable(layers, 2) == ["blocks.1.bn", "head_conv"]
    assert select_trainable(layers, -1) == layers
    assert select_trainable(layers, "all") == layers
    assert select_trainable(layers, 6) == layers
    assert select_trainable(layers, "blocks.1") == ["blocks.1.conv", "blocks.1.bn", "head_conv"]
    assert select_trainable(layers, "blocks.1.") == ["blocks.1.conv", "blocks.1.bn", "head_conv"]
    with pytest.raises(ValueError, match="has 6 parameterised layers, so use 0..6"):
        select_trainable(layers, 7)
    with pytest.raises(ValueError, match="out of range"):
        select_trainable(layers, -2)
    with pytest.raises(ValueError, match="names no parameterised module"):
        select_trainable(layers, "blocks.9")
    with pytest.raises(ValueError, match="must be an int"):
        select_trainable(layers, 2.5)


def test_batchnorm_policies_survive_train_calls():
    m = OutOfOrder()
    m.bn.weight.requires_grad_(False)
    m.bn.bias.requires_grad_(False)
    m.train()
    apply_batchnorm_policy(m, "frozen")
    assert not m.bn.training  # frozen BN keeps its statistics
    m.bn.weight.requires_grad_(True)
    m.bn.bias.requires_grad_(True)
    m.train()
    apply_batchnorm_policy(m, "frozen")
    assert m.bn.training  # trainable BN trains
    apply_batchnorm_policy(m, "eval")
    assert not m.bn.training and not m.bn.weight.requires_grad  # study 000: BN fixed
    m.train()
    apply_batchnorm_policy(m, "train")
    assert m.bn.training

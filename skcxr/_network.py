"""The network a PretrainedCNNClassifier trains, and the plan that builds it.

``images -> normalise -> frozen prefix -> trainable suffix -> head -> logits``. The backbone
is cut, where it can be, at the first element of its chain of sub-modules that holds a
trainable layer: everything before the cut is the *frozen prefix*, whose outputs depend on
the image alone (so they can be computed once and cached: :mod:`skcxr._frozen`), the rest
is the *trainable suffix*, and the new dense *head* always trains.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _runtime
from ._layers import (
    anchor_index,
    apply_batchnorm_policy,
    cut_index,
    parameterised_layers,
    select_trainable,
    sequential_chain,
    set_trainable,
)
from ._preprocessing import InputGraph, Preprocessing
from ._state import PLANS


def build_network(backbone, prep, n_trainable_layers, *, n_outputs: int, hidden_units=(),
                  dropout: float = 0.0, batchnorm: str = "frozen", precision: str = "fp32",
                  ) -> CXRNet:
    """The plan of a fit: which backbone layers train, where the backbone is cut, the head.

    Parameters
    ----------
    backbone : skcxr.backbones.Backbone
    prep : skcxr.images.Preprocessing
        Gives the probe's shape and the normalisation.
    n_trainable_layers : int, "all" or str
        The validated parameter; its range is checked here, against this backbone (the one
        parameter check that needs the loaded network).
    n_outputs, hidden_units, dropout :
        The head (:func:`make_head`), initialised from the global torch RNG: seed it first.
    batchnorm, precision : str
        See :class:`CXRNet`.
    """
    layers, chain_names, shapes = _plan(backbone, prep)
    trainable = select_trainable(layers, n_trainable_layers)
    chain = ([(n, backbone.module.get_submodule(n)) for n in chain_names]
             if chain_names is not None else None)
    head = make_head(backbone.num_features, n_outputs, tuple(hidden_units), float(dropout))
    return CXRNet(backbone.module, head, prep, trainable, batchnorm=batchnorm,
                  precision=precision, chain_names=chain_names,
                  cut=cut_index(chain, trainable) if chain is not None else None,
                  anchor=anchor_index(shapes, prep.size) if chain is not None else None)


def _plan(backbone, prep):
    """The probe's findings for a backbone at an input shape: its parameterised layers in
    forward order, its chain (names) and the chain's output shapes.

    They depend on the architecture alone, so for a named timm/torchvision backbone they are
    kept per process (a grid search builds the same backbone for every fit; the probe
    forward passes cost ~0.1 s per fit for lite0), keyed by the name, the input shape and
    every parameter's name and shape. A user's own module is probed every time.
    """
    probe = torch.rand(1, prep.in_chans, *prep.size, generator=torch.Generator().manual_seed(0))
    key = None
    if backbone.provenance.get("source") in ("timm", "torchvision"):
        key = (backbone.provenance.get("backbone"), backbone.provenance.get("pooling"),
               tuple(probe.shape), type(backbone.module).__qualname__,
               tuple((k, tuple(v.shape)) for k, v in backbone.module.state_dict().items()))

    def probe_plan():
        layers = parameterised_layers(backbone.module, probe)
        chain, shapes = sequential_chain(backbone.module, prep.normalize(probe))
        # tuples: a kept plan is shared by every fit of the process and never changed
        return (tuple(layers), tuple(name for name, _ in chain) if chain is not None else None,
                tuple(shapes) if shapes is not None else None)

    if key is None:
        return probe_plan()
    return PLANS.get_or_make(key, probe_plan)


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

    ``prefix`` runs the preprocessing's batch steps (scale, normalise) on the images and the
    backbone's chain up to ``cut`` (the frozen prefix, in eval mode even while training);
    ``suffix`` runs the rest of the backbone (the trainable suffix); ``head`` maps pooled
    features to logits. When the backbone cannot be split into a chain
    (``chain_names=None``), the prefix is the batch steps alone.

    The forward pass takes either images (``x``) or frozen-prefix outputs (``h``, e.g.
    from the cache): skorch passes the keys of the dataset's dict items as keyword
    arguments, so what a batch holds decides the path, and no flag is toggled on the module.

    Parameters
    ----------
    backbone : nn.Module
        Maps a normalised image batch to pooled features ``(n, num_features)``.
    head : nn.Module
        Maps pooled features to logits.
    preprocessing : skcxr.images.Preprocessing
        Its batch steps (:attr:`~skcxr.images.Preprocessing.batch_steps`) turn the images
        (uint8 0..255, or float in [0, 1]) into the backbone's input.
    planned_layers : list of str
        Backbone layers (names inside ``backbone``) that train once unfrozen.
    batchnorm : {"frozen", "eval", "train"}
        See :func:`skcxr._layers.apply_batchnorm_policy`.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of training; logits are returned in float32.
    chain_names : list of str or None
        The backbone as a chain of sub-modules (:func:`skcxr._layers.sequential_chain`).
    cut : int or None
        Chain elements ``[:cut]`` form the frozen prefix.
    anchor : int or None
        The cut point whose cached outputs every deeper prefix is derived from
        (:func:`skcxr._layers.anchor_index`, :func:`skcxr._frozen.prefix_part`).
    """

    def __init__(self, backbone, head, preprocessing: Preprocessing, planned_layers=(),
                 batchnorm="frozen", precision="fp32", chain_names=None, cut=None, anchor=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input = InputGraph(preprocessing, ("batch",))
        self.planned_layers = list(planned_layers)
        self.batchnorm = batchnorm
        self.precision = precision
        self.chain_names = list(chain_names) if chain_names is not None else None
        self.cut = (cut or 0) if self.chain_names is not None else 0
        self.anchor = anchor if self.chain_names is not None else None
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_unfrozen = False
        #: images -> frozen-prefix outputs by another engine while a fit trains on new
        #: pixels every epoch (:func:`skcxr._training.prefix_engine`); None otherwise
        self.prefix_engine = None

    @property
    def prefix_is_fixed(self) -> bool:
        """Whether the frozen prefix is a fixed function of the image: there is one, and its
        BatchNorm statistics do not move while training (any policy but "train")."""
        return self.cut > 0 and self.batchnorm != "train"

    def _chain(self, start, stop):
        return [self.backbone.get_submodule(n) for n in self.chain_names[start:stop]]

    @property
    def unfrozen_layers(self) -> list[str]:
        """Planned backbone layers whose parameters train now: none before the unfreeze,
        and never a BatchNorm layer that ``batchnorm="eval"`` keeps fixed."""
        if not self.backbone_unfrozen:
            return []
        return [n for n in self.planned_layers
                if any(p.requires_grad
                       for p in self.backbone.get_submodule(n).parameters(recurse=False))]

    def unfreeze(self) -> None:
        """Let the planned backbone layers train (the head always does)."""
        set_trainable(self.backbone, self.planned_layers, True)
        self.backbone_unfrozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.cut and self.batchnorm != "train":
            for m in self._chain(0, self.cut):  # frozen layers compute as at inference
                m.eval()
        apply_batchnorm_policy(self.backbone, self.batchnorm)
        return self

    def chain_modules(self) -> list[nn.Module]:
        """Every element of the backbone's chain (sharing weights): what a frozen prefix of
        any cut point is the start of."""
        return self._chain(0, None)

    def frozen_prefix(self, cut: int | None = None) -> nn.Sequential:
        """The frozen prefix (or the chain up to ``cut``) as a module of its own (sharing
        weights), in eval mode."""
        return nn.Sequential(*self._chain(0, self.cut if cut is None else cut)).eval()

    def whole(self) -> nn.Sequential:
        """The whole network after the normalisation (normalised images -> logits) as one
        module of its own (sharing weights), in eval mode: what a fast engine compiles."""
        body = self.chain_modules() if self.chain_names is not None else [self.backbone]
        return nn.Sequential(*body, self.head).eval()

    def prefix(self, x: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """Images -> output of the frozen prefix, in the compute dtype (what the cache holds).

        Computed by the same functions as :class:`skcxr._frozen.FrozenPart` (the
        preprocessing's batch steps, then :func:`skcxr._runtime.frozen_forward`), so that a
        cached fit and an uncached one see the same numbers.
        """
        if self.prefix_engine is not None:
            return self.prefix_engine(x)
        # the chain as it is: in eval mode while training, unless batchnorm="train"
        chain = nn.Sequential(*self._chain(0, self.cut)) if self.cut else nn.Identity()
        return _runtime.frozen_forward(chain, self.input(x), precision or self.precision)

    def suffix_modules(self) -> list[nn.Module]:
        """The modules after the frozen prefix (the whole backbone without a chain)."""
        return [self.backbone] if self.chain_names is None else self._chain(self.cut, None)

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        """Frozen-prefix output -> pooled features."""
        for m in self.suffix_modules():
            out = m(h)
            if h.dim() == 4 and out.dim() != 4:  # the global pool
                _runtime.channels_last_grad(h)
            h = out
        return h

    def forward(self, x=None, h=None, sample_weight=None):
        """Logits (float32) of images ``x``, or of frozen-prefix outputs ``h``.

        ``sample_weight`` rides along in the batch for the loss and is ignored here.
        """
        return self.logits(x=x, h=h)

    def logits(self, x=None, h=None, precision: str | None = None) -> torch.Tensor:
        """Like ``forward``, at ``precision`` (default: the training precision)."""
        precision = precision or self.precision
        if h is None:
            h = self.prefix(x, precision)
        elif h.dim() == 4:  # cached prefix outputs: the layout the prefix computed them in
            h = h.contiguous(memory_format=torch.channels_last)
        with _runtime.autocast(h.device, precision), \
                _runtime.fp32_depthwise(self.suffix_modules(), h.device, precision):
            return self.head(self.suffix(h)).float()

"""What a fitted estimator saves: arrays and plain types, never a pickled torch object.

Both estimators save through ``__getstate__`` / ``__setstate__`` (:class:`skcxr._base.
CXREstimator`), so pickle, joblib and ``skops.io`` all see the same state:

* every network is a *recipe* and its weights: the backbone's registry name (rebuilt by
  :func:`skcxr.backbones.load_backbone` with ``weights=None``, which needs no weights file
  and no network), the head's layers, the training plan (planned layers, BatchNorm policy,
  chain, cut, anchor, which parameters train), its mode and memory format, and its
  ``state_dict`` as numpy arrays (dtypes numpy lacks, such as bfloat16, as float32 with
  the dtype recorded);
* ``pandas.DataFrame`` attributes (``history_``) as their columns;
* skcxr's records (:class:`~skcxr._preprocessing.Preprocessing`,
  :class:`~skcxr._preprocessing.DataConfig`, :class:`~skcxr.protocol.FitRows`) as their
  fields, rebuilt from a fixed registry (never a type named by the file).

So ``skops.io.load`` asks a user to trust the skcxr estimator types and nothing else, and
a saved model is about the size of its weights. One exception: a backbone given as the
user's own ``nn.Module`` has no name to rebuild it from; its fitted network stays a module
(pickle and joblib save it; skops cannot, and says so at ``dumps``).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._network import CXRNet
from ._preprocessing import DataConfig, Preprocessing
from .protocol import FitRows

#: the state format this version writes and reads
FORMAT = 1

_MODULE, _FRAME, _RECORD = "__skcxr_module__", "__skcxr_frame__", "__skcxr_record__"
#: the only types a saved record may name
RECORDS = {cls.__name__: cls for cls in (Preprocessing, DataConfig, FitRows)}


class SavedStateError(ValueError):
    """A saved state that this skcxr cannot rebuild (unknown record, foreign weights)."""


# --------------------------------------------------------------------------- saving

def saved_state(state: dict) -> dict:
    """``state`` (an estimator's ``__dict__``) with every network, frame and record encoded."""
    provenance = state.get("provenance_") or {}
    prep = state.get("preprocessing_")
    out = {}
    for key, value in state.items():
        if isinstance(value, nn.Module):
            out[key] = _encode_module(value, provenance, prep)
        else:
            out[key] = _encode(value)
    return out


def _encode(value):
    if isinstance(value, pd.DataFrame):
        return {_FRAME: 1, "columns": [str(c) for c in value.columns],
                "data": [value[c].tolist() for c in value.columns],
                "index": value.index.tolist()}
    if type(value) in RECORDS.values():
        return {_RECORD: type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name))
                           for f in dataclasses.fields(value)}}
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _rebuildable(provenance: dict) -> bool:
    return provenance.get("source") in ("timm", "torchvision") and isinstance(
        provenance.get("backbone"), str)


def _encode_module(module: nn.Module, provenance: dict, prep):
    """A network as its recipe and arrays; a user's module (no name to rebuild it from) on
    the CPU as it is."""
    if not _rebuildable(provenance) or prep is None:
        # on the CPU, so that a model fitted on a GPU loads on a machine without one
        # (skorch #70, #1096); a copy: saving never moves the live model
        return copy.deepcopy(module).to("cpu") if _on_gpu(module) else module
    backbone = module.backbone if isinstance(module, CXRNet) else module
    recipe = {_MODULE: "CXRNet" if isinstance(module, CXRNet) else "backbone",
              "format": FORMAT,
              "backbone": {"name": provenance["backbone"], "in_chans": int(prep.in_chans),
                           "pooling": provenance.get("pooling", "avg")},
              "training": bool(module.training),
              "channels_last": _channels_last(backbone),
              "requires_grad": [n for n, p in module.named_parameters() if p.requires_grad],
              **_arrays(module.state_dict())}
    if isinstance(module, CXRNet):
        recipe.update(
            head=[_layer(m) for m in module.head], preprocessing=_encode(prep),
            planned_layers=list(module.planned_layers), batchnorm=module.batchnorm,
            precision=module.precision, chain_names=module.chain_names, cut=module.cut,
            anchor=module.anchor, backbone_unfrozen=bool(module.backbone_unfrozen))
    return recipe


def _on_gpu(module: nn.Module) -> bool:
    return any(t.device.type != "cpu" for t in module.state_dict().values())


def _channels_last(module: nn.Module) -> bool:
    for p in module.parameters():
        if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return (p.is_contiguous(memory_format=torch.channels_last)
                    and not p.is_contiguous())
    return False


def _arrays(state_dict: dict) -> dict:
    arrays, dtypes = {}, {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            dtypes[name] = str(t.dtype).removeprefix("torch.")
            t = t.float()
        arrays[name] = t.contiguous().numpy()
    return {"state": arrays, "dtypes": dtypes}


def _layer(m: nn.Module) -> list:
    """A head layer as plain values (the head is made of these three kinds)."""
    if isinstance(m, nn.Linear):
        return ["linear", m.in_features, m.out_features]
    if isinstance(m, nn.Dropout):
        return ["dropout", float(m.p)]
    if isinstance(m, nn.ReLU):
        return ["relu"]
    raise TypeError(f"cannot save a head layer of type {type(m).__name__}.")


# --------------------------------------------------------------------------- loading

def loaded_state(state: dict) -> dict:
    """The inverse of :func:`saved_state`."""
    return {key: _decode(value) for key, value in state.items()}


def _decode(value):
    if isinstance(value, dict):
        if _MODULE in value:
            return _decode_module(value)
        if _FRAME in value:
            return pd.DataFrame(dict(zip(value["columns"], value["data"])),
                                columns=value["columns"], index=value["index"])
        if _RECORD in value:
            cls = RECORDS.get(value[_RECORD])
            if cls is None:
                raise SavedStateError(f"unknown record {value[_RECORD]!r} in a saved state; "
                                      f"this skcxr knows {sorted(RECORDS)}.")
            fields = {k: _decode(v) for k, v in value["fields"].items()}
            return cls(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in fields.items()})
        return {k: _decode(v) for k, v in value.items()}
    return value


def _decode_module(recipe: dict) -> nn.Module:
    from .backbones import load_backbone

    if recipe.get("format") != FORMAT:
        raise SavedStateError(f"a saved network of format {recipe.get('format')!r}; this "
                              f"skcxr reads format {FORMAT}.")
    b = recipe["backbone"]
    backbone = load_backbone(b["name"], None, in_chans=b["in_chans"], pooling=b["pooling"],
                             random_state=0).module
    if recipe[_MODULE] == "CXRNet":
        module = CXRNet(backbone, _head(recipe["head"]), _decode(recipe["preprocessing"]),
                        recipe["planned_layers"], batchnorm=recipe["batchnorm"],
                        precision=recipe["precision"], chain_names=recipe["chain_names"],
                        cut=recipe["cut"], anchor=recipe["anchor"])
        module.backbone_unfrozen = recipe["backbone_unfrozen"]
    else:
        module = backbone
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in recipe["state"].items()}
    for name, dtype in recipe["dtypes"].items():
        state[name] = state[name].to(getattr(torch, dtype))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SavedStateError(f"the saved weights do not fit {b['name']!r} as this skcxr "
                              f"builds it: {exc}") from None
    trains = set(recipe["requires_grad"])
    for name, p in module.named_parameters():
        p.requires_grad_(name in trains)
    if recipe["channels_last"]:
        (module.backbone if isinstance(module, CXRNet) else module).to(
            memory_format=torch.channels_last)
    return module.train(recipe["training"])


def _head(layers: list) -> nn.Sequential:
    make = {"linear": lambda i, o: nn.Linear(int(i), int(o)),
            "dropout": lambda p: nn.Dropout(float(p)),
            "relu": lambda: nn.ReLU(inplace=True)}
    return nn.Sequential(*[make[kind](*args) for kind, *args in layers])

"""Outputs of a frozen network, computed once per image: one path for both estimators.

A frozen network is a fixed function of the image: the transformer's whole backbone (pooled
features), the classifier's frozen prefix (the backbone up to its cut point) and a fitted
classifier's whole network (logits) are each one. :class:`FrozenPart` says what the network
is, builds every key its outputs and compiled models are stored under (one key builder),
runs it (torch, or OpenVINO compiled on the CPU) and serves its outputs per image from the
stores of :mod:`skcxr.cache` (the in-process LRU shared by all clones, then the optional disk
store), computing only the images that miss.

Every cut point from one pass: a classifier's prefix deeper than its chain's *anchor*
(:func:`skcxr._layers.anchor_index`; for EfficientNet-Lite0 the end of ``blocks.2``, 81% of
the prefix's cost) is derived from the anchor's cached outputs by running only the chain
elements between the two, so a grid over c decodes and runs the expensive high-resolution
stages once per image, whatever order its cut points come in.

Whether a classifier's frozen prefix comes from these stores at all is decided in one place,
:func:`prefix_from_cache`, which training and predicting both ask.
"""

from __future__ import annotations

import torch

from . import _runtime
from ._augment import RandomView
from ._disk import location_writable, namespace_digest
from ._preprocessing import Preprocessing, openvino_form
from ._runtime import CallOptions, Execution
from ._state import NETWORK_DIGESTS, weak_memo
from ._threads import thread_budget
from .cache import cached_rows
from .images import ImageSource, make_loader


def prefix_from_cache(net, *, cache: bool, augment=None) -> bool:
    """Whether a classifier network's frozen-prefix outputs come from the per-image caches:
    the one place this is decided (training and predict both ask it).

    They do where the prefix is a fixed function of the image
    (:attr:`skcxr._network.CXRNet.prefix_is_fixed`: the backbone splits into a chain, the cut
    leaves a prefix, and its BatchNorm statistics do not move), ``cache`` is on, and the
    network sees the images as they are: no augmentation, or ``augment="views"``
    (:class:`skcxr._augment.RandomView`), whose exact views are cached like the original.
    """
    return bool(cache) and (augment is None or isinstance(augment, RandomView)) \
        and net.prefix_is_fixed


class FrozenPart:
    """A frozen network applied to preprocessed images.

    Parameters
    ----------
    module : nn.Module
        Maps a normalised image batch to outputs; in eval mode, no parameter trains. Never
        written to: a call on a GPU runs on a copy.
    preprocessing : skcxr.images.Preprocessing
    weights : dict
        What identifies the weights: ``{"backbone": name, "state_sha256": digest}``.
    part : dict
        What part of the network this is, e.g. ``{"kind": "pooled-features", "pooling":
        "avg"}``, ``{"kind": "frozen-prefix", "cut": [chain names]}`` or ``{"kind":
        "logits"}``.
    quantized : dict, optional
        The module quantized to int8 (:func:`skcxr._openvino.quantize`): what runs under
        ``precision="int8"`` (OpenVINO only).
    output_dtype : {"float32", "compute"}
        The dtype outputs are returned and cached in: float32, or the compute dtype (bf16
        under bf16: half the memory; the classifier's uncached forward casts the prefix
        output the same way, so cached and uncached fits see the same numbers).
    chain : (list of nn.Module, int), optional
        Every element of the backbone's chain and the cut this part ends at (a frozen
        prefix): OpenVINO converts the chain once for all cut points.
    base : FrozenPart, optional
        A shallower prefix of the same chain (the anchor): with the cache on, this part's
        missing outputs are derived from its cached outputs by ``chain[base cut:cut]``.
    """

    def __init__(self, module, preprocessing: Preprocessing, weights: dict, part: dict, *,
                 output_dtype: str = "float32", quantized: dict | None = None, chain=None,
                 base: FrozenPart | None = None):
        self.module = module
        self.chain = chain
        self.base = base
        self.preprocessing = preprocessing
        self.identity = {"backbone": weights.get("backbone"),
                         "state_sha256": weights["state_sha256"], **part}
        if quantized is not None:
            self.identity["int8_sha256"] = quantized["sha256"]
        self.output_dtype = output_dtype
        self.quantized = quantized

    def dtype(self, execution: Execution) -> torch.dtype:
        return torch.float32 if self.output_dtype == "float32" else execution.dtype

    # ----------------------------------------------------------------- keys (all of them)

    def namespace(self, execution: Execution) -> dict:
        """Everything the outputs depend on besides the image: the cache namespace."""
        return {**self.identity, "preprocessing": repr(self.preprocessing),
                "precision": execution.precision, "device_type": execution.device.type,
                "engine": execution.engine,
                "dtype": str(self.dtype(execution)).replace("torch.", "")}

    def compile_key(self) -> str:
        """What a compiled model of this part depends on. The view is applied to the pixels
        by the loader, not in the graph: one compiled model serves every tta /
        ``augment="views"`` view."""
        return namespace_digest({**self.identity,
                                 "preprocessing": repr(self.preprocessing.with_view("none"))})

    def segment_key(self) -> str:
        """The compiled chain segment from the base's cut to this part's."""
        return namespace_digest({"compile": self.compile_key(), "from": self.base.chain[1]})

    def chain_key(self) -> str:
        """The chain's one conversion, shared by every cut point of these weights."""
        return namespace_digest({"backbone": self.identity["backbone"],
                                 "state_sha256": self.identity["state_sha256"],
                                 "chain": len(self.chain[0])})

    # ----------------------------------------------------------------- outputs

    def outputs(self, source: ImageSource, execution: Execution,
                options: CallOptions) -> torch.Tensor:
        """Outputs for every image of ``source``, ``(n, ...)``, in :meth:`dtype`.

        With ``options.cache``, each image is looked up by its content hash under
        :meth:`namespace` in memory, then on disk (``options.location``), and only the
        missing ones are computed (and stored): from the pixels, or, with a ``base``, from
        the base's outputs (themselves looked up first). Without, all are computed from the
        pixels.
        """
        if not options.cache:
            return self._compute(source, execution, options)

        def compute(missing):
            src = source.subset(missing).verified()  # stored under these keys
            if self.base is None:
                return self._compute(src, execution, options)
            # the base's (cached) outputs, then the chain elements between the two cuts
            return self._derive(self.base.outputs(src, execution, options), execution,
                                options)

        rows = cached_rows(self.namespace(execution), source.keys(), compute,
                           location=options.location,
                           counter="computed" if self.base is None else "derived")
        return torch.stack(rows)

    def _derive(self, h: torch.Tensor, execution: Execution,
                options: CallOptions) -> torch.Tensor:
        """This prefix's outputs from its base's outputs ``h``: the chain elements between
        the two cuts, in torch or compiled by OpenVINO (a cut of the chain's one conversion,
        taking the base's outputs as its input)."""
        from tqdm.auto import tqdm

        modules, cut = self.chain
        start = self.base.chain[1]
        dtype = self.dtype(execution)
        batch_size = max(options.batch_size, 64)  # small tensors: larger batches cost nothing
        if execution.engine == "openvino":
            from ._openvino import ChainCut, compile_frozen, run_pipelined

            prep = self.preprocessing
            module = ChainCut(modules, cut, self.chain_key(), start=start,
                              image_shape=(prep.in_chans, *prep.size))
            compiled = compile_frozen(module, tuple(h.shape[1:]), execution.precision,
                                      self.segment_key(), kind="segment",
                                      threads=thread_budget(),
                                      cache_dir=self._compiled_dir(options.location))
            items = ((compiled, b.float()) for b in h.split(batch_size))
            with tqdm(total=len(h), disable=not options.verbose, unit="img",
                      desc=options.desc) as bar:
                return torch.from_numpy(run_pipelined(items, len(h), bar)).to(dtype)
        segment = _runtime.on_device(torch.nn.Sequential(*modules[start:cut]).eval(),
                                     execution.device)
        out = _runtime.run_batches(
            lambda b: _runtime.frozen_forward(segment, b, execution.precision, dtype),
            h.split(batch_size), len(h), device=execution.device, verbose=options.verbose,
            desc=options.desc)
        _runtime.release(execution.device)
        return out

    @staticmethod
    def _compiled_dir(location):
        return (location / "skcxr-openvino"
                if location is not None and location_writable(location) else None)

    def _compute(self, source, execution: Execution, options: CallOptions) -> torch.Tensor:
        prep, dtype = self.preprocessing, self.dtype(execution)
        loader = make_loader(source, prep, batch_size=options.batch_size,
                             num_workers=options.num_workers,
                             pin_memory=execution.device.type == "cuda")
        if execution.engine == "openvino":
            return self._openvino(loader, execution, len(source), options).to(dtype)
        module = _runtime.on_device(self.module, execution.device)
        out = _runtime.run_batches(
            lambda batch: _runtime.frozen_forward(module, prep.normalize(batch),
                                                  execution.precision, dtype),
            loader, len(source), device=execution.device, verbose=options.verbose,
            desc=options.desc)
        _runtime.release(execution.device)
        return out

    def run_batch(self, batch: torch.Tensor, execution: Execution,
                  options: CallOptions) -> torch.Tensor:
        """This part's outputs on one batch of images (uint8, or floats in [0, 1]) compiled
        by OpenVINO, uncached: for a fixed prefix that sees new pixels every epoch (pixel
        augmentation), which OpenVINO computes ~3x faster than eager torch (the torch
        engine runs the network's own forward instead)."""
        return self._openvino([batch], execution, len(batch), options).to(self.dtype(execution))

    def is_compiled(self) -> bool:
        """Whether this process holds an OpenVINO compilation of this part."""
        from ._openvino import has_compiled

        return has_compiled(self.compile_key())

    def _openvino(self, loader, execution: Execution, n: int,
                  options: CallOptions) -> torch.Tensor:
        """The module compiled by OpenVINO: uint8 images in, the preprocessing's batch steps
        in the graph, on the cores this call was given; compiled blobs go beside the disk
        cache."""
        from tqdm.auto import tqdm

        from ._openvino import ChainCut, compile_frozen, run_pipelined

        prep = self.preprocessing
        key = self.compile_key()
        precision, module = execution.precision, self.module
        if self.chain is not None:
            modules, cut = self.chain
            module = ChainCut(modules, cut, self.chain_key())
        if precision == "int8":
            if self.quantized is None:
                raise ValueError("precision='int8' needs the network quantized at fit: refit "
                                 "with precision='int8'.")
            module = self.quantized
            precision = "int8+bf16" if _runtime.cpu_has_native_bf16() else "int8+f32"
        shape = (prep.in_chans, *prep.size)
        compile_options = {"kind": self.identity["kind"], "threads": thread_budget(),
                           "cache_dir": self._compiled_dir(options.location)}
        # the batch steps inside the graph where OpenVINO has a form for each of them
        in_graph = prep.batch_steps if openvino_form(prep.batch_steps) else None

        def items():  # 8-bit batches go in raw; 16-bit/DICOM ones are normalised here
            for b in loader:
                if b.dtype == torch.uint8 and in_graph is not None:
                    yield compile_frozen(module, shape, precision, key, uint8_steps=in_graph,
                                         **compile_options), b
                else:
                    yield compile_frozen(module, shape, precision, key, **compile_options), \
                        prep.normalize(b)

        with tqdm(total=n, disable=not options.verbose, unit="img", desc=options.desc) as bar:
            return torch.from_numpy(run_pipelined(items(), n, bar))


def prefix_part(net, preprocessing: Preprocessing, weights: dict,
                cut: int | None = None) -> FrozenPart:
    """A classifier network's frozen prefix (everything before its cut, or before ``cut``)
    as a FrozenPart.

    Its outputs are kept in the compute dtype, as the network's own uncached forward casts
    them (see :meth:`skcxr._network.CXRNet.prefix`). A prefix deeper than the network's
    anchor is derived from the anchor's cached outputs (the anchor's namespace is the one
    a network cut at the anchor has, so such a fit shares it).
    """
    cut = net.cut if cut is None else cut
    base = (prefix_part(net, preprocessing, weights, net.anchor)
            if net.anchor is not None and 0 < net.anchor < cut else None)
    return FrozenPart(net.frozen_prefix(cut), preprocessing, weights,
                      {"kind": "frozen-prefix", "cut": list(net.chain_names[:cut])},
                      output_dtype="compute", chain=(net.chain_modules(), cut), base=base)


def network_part(fitted) -> FrozenPart:
    """A fitted classifier's whole network (images -> logits, :class:`skcxr._fitted.
    FittedNetwork`) as a FrozenPart: after ``fit`` it is a fixed function of the image too,
    so an engine can compile it (once per fitted model: the key is a hash of its trained
    weights) and its logits can be cached.

    The hash is computed once per network object (a fitted ``module_`` is not trained
    again; a network changed in place after ``fit`` keeps its first hash).
    """
    from .backbones import state_dict_digest

    digest = weak_memo(NETWORK_DIGESTS, fitted.source_module,
                       lambda: state_dict_digest(fitted.source_module))
    return FrozenPart(fitted.body, fitted.preprocessing,
                      {"backbone": fitted.weights.get("backbone"), "state_sha256": digest},
                      {"kind": "logits"})


def networks_compiled() -> bool:
    """Whether this process holds a compiled whole network (a cheap test before hashing one)."""
    from ._openvino import has_compiled_kind

    return has_compiled_kind("logits")

"""Outputs of a frozen network, computed once per image: one path for both estimators.

A frozen network is a fixed function of the image: the transformer's whole backbone (pooled
features) and the classifier's frozen prefix (the backbone up to its cut point) are both
one. :class:`FrozenPart` says what the network is (one namespace builder: everything its
outputs depend on), runs it (torch, or OpenVINO compiled on the CPU) and serves its outputs
per image from the caches of :mod:`skcxr.cache` (the in-process LRU shared by all clones,
then the optional disk store), computing only the images that miss.

Every cut point from one pass: a classifier's prefix deeper than its chain's *anchor*
(:func:`skcxr._layers.anchor_index`; for EfficientNet-Lite0 the end of ``blocks.2``, 81% of
the prefix's cost) is derived from the anchor's cached outputs by running only the chain
elements between the two, so a grid over c decodes and runs the expensive high-resolution
stages once per image, whatever order its cut points come in.
"""

from __future__ import annotations

import dataclasses

import torch

from . import _runtime
from ._state import NETWORK_DIGESTS, weak_memo
from ._threads import thread_budget
from .cache import cached_rows, location_writable, namespace_digest
from .images import ImageSource, Preprocessing, make_loader


class FrozenPart:
    """A frozen network applied to preprocessed images.

    Parameters
    ----------
    module : nn.Module
        Maps a normalised image batch to outputs; in eval mode, no parameter trains. Never
        written to: a call on a GPU runs on a copy.
    preprocessing : skcxr.images.Preprocessing
    provenance : dict
        The backbone's provenance (its name and ``state_sha256`` identify the weights).
    part : dict
        What part of the backbone this is, e.g. ``{"kind": "pooled-features", "pooling":
        "avg"}`` or ``{"kind": "frozen-prefix", "cut": [chain names]}``.
    quantized : dict, optional
        The module quantized to int8 (:func:`skcxr._openvino.quantize`): what runs under
        ``precision="int8"`` (OpenVINO only).
    keep : {"float32", "compute"}
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

    def __init__(self, module, preprocessing: Preprocessing, provenance: dict, part: dict,
                 keep: str = "float32", quantized: dict | None = None, chain=None,
                 base: FrozenPart | None = None):
        self.module = module
        self.chain = chain
        self.base = base
        self.preprocessing = preprocessing
        self.identity = {"backbone": provenance.get("backbone"),
                         "state_sha256": provenance["state_sha256"], **part}
        if quantized is not None:
            self.identity["int8_sha256"] = quantized["sha256"]
        self.keep = keep
        self.quantized = quantized

    def dtype(self, run: _runtime.Execution) -> torch.dtype:
        return torch.float32 if self.keep == "float32" else run.dtype

    def namespace(self, run: _runtime.Execution) -> dict:
        """Everything the outputs depend on besides the image: the cache namespace."""
        return {**self.identity, "preprocessing": repr(self.preprocessing),
                "precision": run.precision, "device_type": run.device.type,
                "engine": run.engine, "dtype": str(self.dtype(run)).replace("torch.", "")}

    def outputs(self, source: ImageSource, run: _runtime.Execution, *, cache: bool = True,
                location=None, batch_size: int = 32, num_workers: int = 0, verbose=0,
                desc: str = "features") -> torch.Tensor:
        """Outputs for every image of ``source``, ``(n, ...)``, in :meth:`dtype`.

        With ``cache``, each image is looked up by its content hash under
        :meth:`namespace` in memory, then on disk (``location``), and only the missing
        ones are computed (and stored): from the pixels, or, with a ``base``, from the
        base's outputs (themselves looked up first). Without, all are computed from the
        pixels.
        """
        def from_pixels(src):
            return self._compute(src, run, batch_size=batch_size, num_workers=num_workers,
                                 verbose=verbose, desc=desc, location=location)

        def from_base(src):  # the base's (cached) outputs, then the elements between the cuts
            h = self.base.outputs(src, run, location=location, batch_size=batch_size,
                                  num_workers=num_workers, verbose=verbose, desc=desc)
            return self._derive(h, run, batch_size=batch_size, verbose=verbose, desc=desc,
                                location=location)

        if not cache:
            return from_pixels(source)
        compute = from_pixels if self.base is None else from_base
        rows = cached_rows(self.namespace(run), source.keys(),
                           lambda missing: compute(source.subset(missing)), location=location,
                           counter="computed" if self.base is None else "derived")
        return torch.stack(rows)

    def _derive(self, h: torch.Tensor, run, *, batch_size, verbose, desc, location,
                ) -> torch.Tensor:
        """This prefix's outputs from its base's outputs ``h``: the chain elements between
        the two cuts, in torch or compiled by OpenVINO (a cut of the chain's one conversion,
        taking the base's outputs as its input)."""
        from tqdm.auto import tqdm

        modules, cut = self.chain
        start = self.base.chain[1]
        dtype = self.dtype(run)
        batch_size = max(batch_size, 64)  # small tensors: larger batches cost nothing
        if run.engine == "openvino":
            from ._openvino import ChainCut, compile_frozen, run_pipelined

            prep = self.preprocessing
            module = ChainCut(modules, cut, self._chain_key(), start=start,
                              image_shape=(prep.in_chans, *prep.size))
            compiled = compile_frozen(
                module, tuple(h.shape[1:]), run.precision,
                namespace_digest({"compile": self.compile_key(), "from": start}),
                kind="segment", threads=thread_budget(), cache_dir=self._compiled_dir(location))
            items = ((compiled, b.float()) for b in h.split(batch_size))
            with tqdm(total=len(h), disable=not verbose, unit="img", desc=desc) as bar:
                return torch.from_numpy(run_pipelined(items, len(h), bar)).to(dtype)
        segment = _runtime.on_device(torch.nn.Sequential(*modules[start:cut]).eval(),
                                     run.device)
        out = _runtime.run_batches(
            lambda b: _runtime.frozen_forward(segment, b, run.precision, dtype),
            h.split(batch_size), len(h), device=run.device, verbose=verbose, desc=desc)
        _runtime.release(run.device)
        return out

    def _chain_key(self) -> str:
        return namespace_digest({"backbone": self.identity["backbone"],
                                 "state_sha256": self.identity["state_sha256"],
                                 "chain": len(self.chain[0])})

    @staticmethod
    def _compiled_dir(location):
        return (location / "skcxr-openvino"
                if location is not None and location_writable(location) else None)

    def _compute(self, source, run, *, batch_size, num_workers, verbose, desc, location,
                 ) -> torch.Tensor:
        prep, dtype = self.preprocessing, self.dtype(run)
        loader = make_loader(source, prep, batch_size=batch_size, num_workers=num_workers,
                             pin_memory=run.device.type == "cuda")
        if run.engine == "openvino":
            return self._openvino(loader, run, len(source), verbose, desc, location).to(dtype)
        module = _runtime.on_device(self.module, run.device)
        out = _runtime.run_batches(
            lambda batch: _runtime.frozen_forward(module, prep.normalize(batch), run.precision,
                                                  dtype),
            loader, len(source), device=run.device, verbose=verbose, desc=desc)
        _runtime.release(run.device)
        return out

    def compile_key(self) -> str:
        """What a compiled model of this part depends on. The view is applied to the pixels
        by the loader, not in the graph: one compiled model serves every tta /
        ``augment="views"`` view."""
        prep = dataclasses.replace(self.preprocessing, view="none")
        return namespace_digest({**self.identity, "preprocessing": repr(prep)})

    def is_compiled(self) -> bool:
        """Whether this process holds an OpenVINO compilation of this part."""
        from ._openvino import has_compiled

        return has_compiled(self.compile_key())

    def _openvino(self, loader, run, n, verbose, desc, location) -> torch.Tensor:
        """The module compiled by OpenVINO: uint8 images in, normalisation in the graph,
        on the cores this call was given; compiled blobs go beside the disk cache."""
        from tqdm.auto import tqdm

        from ._openvino import compile_frozen, run_pipelined

        prep = self.preprocessing
        key = self.compile_key()
        precision, module = run.precision, self.module
        if self.chain is not None:
            from ._openvino import ChainCut

            modules, cut = self.chain
            module = ChainCut(modules, cut, self._chain_key())
        if precision == "int8":
            if self.quantized is None:
                raise ValueError("precision='int8' needs the network quantized at fit: refit "
                                 "with precision='int8'.")
            module = self.quantized
            precision = "int8+bf16" if _runtime.cpu_has_native_bf16() else "int8+f32"
        shape = (prep.in_chans, *prep.size)
        options = {"kind": self.identity["kind"], "threads": thread_budget(),
                   "cache_dir": self._compiled_dir(location)}

        def items():  # 8-bit batches go in raw; 16-bit/DICOM ones are normalised here
            for b in loader:
                if b.dtype == torch.uint8:
                    yield compile_frozen(module, shape, precision, key, prep.mean,
                                         prep.std, **options), b
                else:
                    yield (compile_frozen(module, shape, precision, key, **options),
                           prep.normalize(b))

        with tqdm(total=n, disable=not verbose, unit="img", desc=desc) as bar:
            return torch.from_numpy(run_pipelined(items(), n, bar))


def prefix_part(net, preprocessing: Preprocessing, provenance: dict,
                cut: int | None = None) -> FrozenPart:
    """A classifier network's frozen prefix (everything before its cut, or before ``cut``)
    as a FrozenPart.

    Its outputs are kept in the compute dtype, as the network's own uncached forward casts
    them (see :meth:`skcxr._network.CXRNet.prefix`). A prefix deeper than the network's
    anchor is derived from the anchor's cached outputs (the anchor's namespace is the one
    a network cut at the anchor has, so such a fit shares it).
    """
    cut = net.cut if cut is None else cut
    anchor = getattr(net, "anchor", None)  # None in a network pickled by skcxr 0.1
    base = (prefix_part(net, preprocessing, provenance, anchor)
            if anchor is not None and 0 < anchor < cut else None)
    return FrozenPart(net.frozen_prefix(cut), preprocessing, provenance,
                      {"kind": "frozen-prefix", "cut": net.chain_names[:cut]},
                      keep="compute", chain=(net.chain_modules(), cut), base=base)


def network_part(net, preprocessing: Preprocessing, provenance: dict) -> FrozenPart:
    """A fitted classifier's whole network (images -> logits) as a FrozenPart: after ``fit``
    it is a fixed function of the image too, so an engine can compile it (once per fitted
    model: the key is a hash of its trained weights) and its logits can be cached.

    The hash is computed once per network object (a fitted ``module_`` is not trained
    again; a network changed in place after ``fit`` keeps its first hash).
    """
    from .backbones import state_dict_digest

    digest = weak_memo(NETWORK_DIGESTS, net, lambda: state_dict_digest(net))
    return FrozenPart(net.whole(), preprocessing,
                      {"backbone": provenance.get("backbone"), "state_sha256": digest},
                      {"kind": "logits"})


def networks_compiled() -> bool:
    """Whether this process holds a compiled whole network (a cheap test before hashing one)."""
    from ._openvino import has_compiled_kind

    return has_compiled_kind("logits")

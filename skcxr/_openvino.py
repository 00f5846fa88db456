"""OpenVINO engine for frozen networks on the CPU (a dependency where OpenVINO has wheels).

A frozen module (feature extraction, a frozen prefix) is a fixed function, so it can be
compiled once by OpenVINO, which runs EfficientNet-Lite0 features 3.2x faster than the torch
engine end to end on a CPU with AVX-512 BF16 (219 vs 68 img/s in the README's
``benchmarks/bench_features.py`` table). Training always stays in torch.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ._threads import available_cores, caller_threads


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _import():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ImportError(
            "engine='openvino' needs the openvino package, which has no wheel for this "
            "platform in pip's view: pip install openvino (or use engine='torch')."
        ) from exc
    return ov


class CompiledModule:
    """A torch module compiled by OpenVINO for one input shape ``(c, h, w)``.

    Without ``mean``/``std`` it takes normalised float32 NCHW images; with them, uint8 images
    that the compiled graph normalises itself. Run it through :func:`run_pipelined`, which
    splits batches into requests of ``request_size`` images that OpenVINO runs in parallel
    streams (4 images per request: ~15% more throughput than 1 for lite0 on 2 cores, and
    small enough that two streams stay busy).
    """

    request_size = 4

    def __init__(self, module: torch.nn.Module, input_shape: tuple[int, int, int],
                 precision: str, mean=None, std=None, threads: int = 1, cache_dir=None):
        ov = _import()
        shape = (self.request_size, *input_shape)
        if isinstance(module, dict):  # a quantized model (:func:`quantize`), as IR bytes
            model = ov.Core().read_model(
                model=module["xml"].decode(),
                weights=ov.Tensor(np.frombuffer(module["bin"], dtype=np.uint8).copy()))
        elif isinstance(module, ChainCut):  # a prefix cut from its chain's one conversion
            model = module.model(shape)
        else:
            model = convert(module, shape)
        if mean is not None:
            # uint8 in, normalisation inside the graph: 4x less to copy and no Python-side
            # arithmetic competing with the inference threads for the cores
            ppp = ov.preprocess.PrePostProcessor(model)
            ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
            ppp.input().model().set_layout(ov.Layout("NCHW"))
            ppp.input().preprocess().convert_element_type(ov.Type.f32) \
                .mean([255.0 * m for m in mean]).scale([255.0 * s for s in std])
            model = ppp.build()
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            # "int8+bf16" / "int8+f32": a quantized model, its other layers in bf16 / f32
            "INFERENCE_PRECISION_HINT": "bf16" if precision in ("bf16", "int8+bf16") else "f32",
            # the cores this call was given (skcxr._threads.thread_budget), not the machine's
            "INFERENCE_NUM_THREADS": threads,
        }
        if threads < available_cores():
            # sharing the machine: pinned streams of two processes would land on the same
            # cores; unpinned, the OS spreads them
            config["ENABLE_CPU_PINNING"] = False
        core = ov.Core()
        self.threads = threads
        if cache_dir is None:
            self.compiled = core.compile_model(model, "CPU", config)
        else:  # compiled blobs shared by worker processes and sessions
            core.set_property({"CACHE_DIR": str(cache_dir)})
            self.compiled = _compile_locked(core, model, config, Path(cache_dir))
        self.n_requests = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")

    def queue(self, callback):
        """A fresh queue of infer requests, owned by one call (the compiled model is shared
        by threads; requests and their callbacks are not)."""
        queue = _import().AsyncInferQueue(self.compiled, self.n_requests)
        queue.set_callback(callback)
        return queue

    def __getstate__(self):
        raise TypeError("an OpenVINO compiled model is not picklable; it is rebuilt on demand")


def _compile_locked(core, model, config, cache_dir: Path):
    """Compile with a blob cache that other processes share, one process at a time.

    OpenVINO writes a blob into its cache directory in place; a process that reads a blob
    another one is still writing finds it corrupt and deletes it, and the writer then fails
    ("cannot set permissions: No such file or directory"). It killed a grid search with
    ``n_jobs=2`` and a shared ``memory=`` whose two workers compiled the same model at once;
    staggered concurrent compiles of one model failed 3 times in 40. A file lock in the
    directory makes the second process wait and then load the finished blob.
    """
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / ".compile.lock")):
        return core.compile_model(model, "CPU", config)


def convert(module: torch.nn.Module, shape) -> object:
    """A torch module as an OpenVINO model for one static input shape (normalised float)."""
    ov = _import()
    with torch.no_grad(), warnings.catch_warnings():
        # the converter traces with torch.jit, which torch deprecates; that is its business
        warnings.simplefilter("ignore", FutureWarning)
        return ov.convert_model(module.eval(), example_input=torch.zeros(shape),
                                input=[shape])


class _ChainOutputs(torch.nn.Module):
    """A chain of modules returning the output of every element (one conversion serves
    every cut point)."""

    def __init__(self, modules):
        super().__init__()
        self.chain = torch.nn.ModuleList(modules)

    def forward(self, x):
        outputs = []
        for m in self.chain:
            x = m(x)
            outputs.append(x)
        return tuple(outputs)


class ChainCut:
    """Chain elements ``[start:cut]`` of a chain of modules, for OpenVINO: the whole chain
    is converted once per ``key`` and process (converting costs ~3.6 s for lite0, more than
    computing the prefix of a few hundred images), and each cut point is that model with
    its output at element ``cut``. With ``start``, the model takes element ``start - 1``'s
    output as its input (a prefix derived from a shallower one's outputs); ``image_shape``
    is then the chain's input shape ``(c, h, w)``, which the conversion needs.
    """

    def __init__(self, modules, cut: int, key: str, start: int = 0, image_shape=None):
        self.modules, self.cut, self.key = list(modules), cut, key
        self.start, self.image_shape = start, image_shape

    def model(self, shape):
        ov = _import()
        image = (shape[0], *self.image_shape) if self.start else tuple(shape)
        k = (self.key, image)
        with _CONVERTED_LOCK:
            if k not in _CONVERTED:
                _CONVERTED[k] = convert(_ChainOutputs(self.modules), image)
                while len(_CONVERTED) > 4:
                    _CONVERTED.popitem(last=False)
            _CONVERTED.move_to_end(k)
            full = _CONVERTED[k].clone()  # the preprocessing step edits the model it gets
        end = full.outputs[self.cut - 1].get_node().input_value(0)
        inputs = full.get_parameters()
        if self.start:  # cut the graph in front, too: a new input where element start-1 ends
            begin = full.outputs[self.start - 1].get_node().input_value(0)
            if tuple(begin.get_partial_shape().to_shape()) != tuple(shape):
                raise ValueError(f"chain element {self.start - 1} gives "
                                 f"{begin.get_partial_shape()}, not {tuple(shape)}")
            param = ov.opset13.parameter(list(shape), begin.get_element_type(), name="h")
            for target in begin.get_target_inputs():
                target.replace_source_output(param.output(0))
            inputs = [param]
        return ov.Model([ov.opset13.result(end)], inputs, "prefix")


_CONVERTED: OrderedDict = OrderedDict()
_CONVERTED_LOCK = threading.Lock()


def quantize(module: torch.nn.Module, input_shape, batches) -> dict:
    """``module`` quantized to int8 by NNCF's post-training quantization, calibrated on
    ``batches`` (normalised float32 tensors of ``request_size`` images each); returned as IR
    bytes (``{"xml", "bin", "sha256"}``): picklable, and what :class:`CompiledModule` reads."""
    import hashlib
    import tempfile

    try:
        import nncf
    except ImportError as exc:
        raise ImportError(
            "precision='int8' quantizes with NNCF: pip install nncf (or "
            "'skcxr[int8]').") from exc
    ov = _import()
    model = convert(module, (CompiledModule.request_size, *input_shape))
    data = nncf.Dataset([b.numpy() for b in batches])
    quantized = nncf.quantize(model, data, subset_size=len(batches) * CompiledModule.request_size,
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    with tempfile.TemporaryDirectory(prefix="skcxr-int8-") as tmp:
        ov.save_model(quantized, f"{tmp}/m.xml", compress_to_fp16=False)
        xml, weights = Path(tmp, "m.xml").read_bytes(), Path(tmp, "m.bin").read_bytes()
    return {"xml": xml, "bin": weights,
            "sha256": hashlib.sha256(xml + weights).hexdigest()}


_COMPILED: OrderedDict = OrderedDict()
_COMPILED_LOCK = threading.Lock()


def compile_frozen(module: torch.nn.Module, input_shape, precision: str, key: str,
                   mean=None, std=None, *, threads: int = 1, cache_dir=None):
    """Compile a frozen module once per process, ``key`` (an identity of its weights) and
    thread count.

    With ``mean``/``std`` the compiled model takes uint8 images and normalises them itself.
    Clones with identical weights share one compiled model; the 8 most recent are kept.
    With ``cache_dir``, OpenVINO also keeps the compiled blob there, so other processes
    (joblib or Dask workers sharing ``memory=``) load it instead of compiling again.
    Thread-safe: one thread compiles, concurrent callers of the same key wait for it.
    """
    k = (key, tuple(input_shape), precision, mean, std, threads)
    with _COMPILED_LOCK:
        if k not in _COMPILED:
            _COMPILED[k] = CompiledModule(module, tuple(input_shape), precision, mean, std,
                                          threads, cache_dir)
            while len(_COMPILED) > 8:
                _COMPILED.popitem(last=False)
        _COMPILED.move_to_end(k)
        return _COMPILED[k]


def has_compiled(key: str) -> bool:
    """Whether a model compiled under ``key`` (any shape, precision, thread count) is held."""
    with _COMPILED_LOCK:
        return any(k[0] == key for k in _COMPILED)


def run_pipelined(items, n: int, bar=None) -> np.ndarray:
    """Outputs for a stream of ``(compiled module, batch)`` pairs, as one ``(n, ...)`` array.

    Requests run in OpenVINO's threads while the caller's iterator decodes the next batch,
    so decoding overlaps inference instead of alternating with it.
    Thread-safe: each call has its own infer queues and output array.
    """
    sink: dict = {}
    lock = threading.Lock()

    def done(request, userdata):  # runs in OpenVINO's threads, possibly two at once
        i, k = userdata
        r = request.get_output_tensor(0).data
        with lock:
            if "out" not in sink:
                sink["out"] = np.empty((n, *r.shape[1:]), dtype=np.float32)
        sink["out"][i:i + k] = r[:k]

    queues: dict = {}
    start = 0
    # OpenVINO's streams own the cores; the caller's side (decode, collate) stays on one
    # torch thread instead of a pool that would fight them for every core
    with caller_threads(1):
        try:
            for compiled, batch in items:
                if id(compiled) not in queues:
                    queues[id(compiled)] = (compiled, compiled.queue(done))
                start = _submit(compiled, queues[id(compiled)][1], batch, start, bar)
        finally:  # never leave requests running into a caller that has moved on
            for _, queue in queues.values():
                queue.wait_all()
    return sink["out"]


def _submit(compiled, queue, batch, start, bar) -> int:
    """Queue one batch as requests of ``request_size`` images; return the next row."""
    x = batch.detach().cpu().numpy()
    size = compiled.request_size
    for j in range(0, len(x), size):
        chunk = np.ascontiguousarray(x[j:j + size])
        k = len(chunk)
        if k < size:  # the compiled shape is static: pad the last request, drop its rows
            chunk = np.concatenate([chunk, np.zeros((size - k, *chunk.shape[1:]),
                                                    dtype=chunk.dtype)])
        queue.start_async({0: chunk}, userdata=(start + j, k))
    start += len(x)
    if bar is not None:
        bar.update(len(x))
    return start

"""OpenVINO engine for frozen networks on the CPU (a dependency where OpenVINO has wheels).

A frozen module (feature extraction, a frozen prefix) is a fixed function, so it can be
compiled once by OpenVINO, which runs EfficientNet-Lite0 features 3.2x faster than the torch
engine end to end on a CPU with AVX-512 BF16 (219 vs 68 img/s in the README's
``benchmarks/bench_features.py`` table). Training always stays in torch.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ._disk import decode_entry, encode_entry, namespace_digest, write_atomic, write_failed
from ._state import COMPILED, CONVERSIONS, MACHINE, TRACE_LOCK
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

    Without ``uint8_steps`` it takes normalised float32 NCHW images; with them (a
    preprocessing's batch steps: scale, normalise), uint8 images that the compiled graph
    turns into the network's input itself. Run it through :func:`run_pipelined`, which
    splits batches into requests of ``request_size`` images that OpenVINO runs in parallel
    streams (4 images per request: ~15% more throughput than 1 for lite0 on 2 cores, and
    small enough that two streams stay busy).

    With ``blob`` (a :class:`Blob` under ``memory=``), the compiled model is loaded from
    there when a verified one exists, without converting the module at all, and stored
    there after compiling otherwise.
    """

    request_size = 4

    def __init__(self, module, input_shape: tuple[int, int, int], precision: str,
                 uint8_steps=None, threads: int = 1, blob: Blob | None = None):
        ov = _import()
        shape = (self.request_size, *input_shape)

        def model():
            if isinstance(module, dict):  # a quantized model (:func:`quantize`), as IR bytes
                m = ov.Core().read_model(
                    model=module["xml"].decode(),
                    weights=ov.Tensor(np.frombuffer(module["bin"], dtype=np.uint8).copy()))
            elif isinstance(module, ChainCut):  # a prefix cut from its chain's one conversion
                m = module.model(shape)
            else:
                m = convert(module, shape)
            if uint8_steps is not None:
                m = _uint8_input(m, uint8_steps)
            return m

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
        self.threads = threads
        core = ov.Core()
        self.compiled = (blob.load_or_compile(core, model, config) if blob is not None
                         else _compile(core, model(), config))
        self.n_requests = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")

    def queue(self, callback, batch_images: int = 0):
        """A fresh queue of infer requests, owned by one call (the compiled model is shared
        by threads; requests and their callbacks are not).

        Deep enough for OpenVINO's streams plus one whole caller batch of ``batch_images``:
        while the caller decodes its next batch, the requests of the last one are all
        queued, so the streams do not wait for it. With only the optimal number (2 here)
        they did: features from 1,024 JPEGs at a median 334 img/s against 360 with 10
        requests (five alternating calls each, one process, 2 cores).
        """
        depth = self.n_requests + -(-batch_images // self.request_size)
        queue = _import().AsyncInferQueue(self.compiled, depth)
        queue.set_callback(callback)
        return queue

    def __getstate__(self):
        raise TypeError("an OpenVINO compiled model is not picklable; it is rebuilt on demand")


def _compile(core, model, config):
    COMPILED.count("compiled")
    return core.compile_model(model, "CPU", config)


def _uint8_input(model, steps):
    """The model taking uint8 images, the preprocessing's batch ``steps`` in the graph
    (each adds its own OpenVINO form: :meth:`skcxr._steps.Step.openvino`)."""
    ov = _import()
    # uint8 in, the batch steps inside the graph: 4x less to copy and no Python-side
    # arithmetic competing with the inference threads for the cores
    ppp = ov.preprocess.PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    preprocess = ppp.input().preprocess()
    for step in steps:
        step.openvino(preprocess)
    return ppp.build()


class Blob:
    """A compiled model kept under ``memory=`` for other processes and sessions, verified
    like a cache entry.

    The blob is one self-verifying entry (:func:`skcxr._disk.encode_entry`: version, its key,
    size, BLAKE2b checksum), named by a key that says everything the compiled model depends
    on: the part's compile key, input shape, precision, normalisation, thread count, the
    OpenVINO version and this CPU's model and flags. A blob that does not verify (damaged,
    truncated, of another key), or that OpenVINO cannot import, is a miss: the model is
    compiled and the blob replaced. One process compiles a key at a time (a file lock), the
    others then load its blob; a blob that cannot be written (disk full, read-only) is
    warned once and the compiled model is used from memory.
    """

    def __init__(self, directory: Path, key: tuple):
        self.dir = Path(directory)
        self.key = namespace_digest({"compiled": [repr(k) for k in key],
                                     "openvino": _import().get_version(),
                                     "cpu": _cpu_identity()})
        self.path = self.dir / f"{self.key}.blob"

    def load_or_compile(self, core, model, config):
        from filelock import FileLock

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.dir / ".compile.lock"))
            lock.acquire()
        except OSError as exc:
            write_failed(self.dir.parent, exc)
            return _compile(core, model(), config)
        try:
            compiled = self._load(core, config)
            if compiled is not None:
                return compiled
            compiled = _compile(core, model(), config)
            try:
                exported = compiled.export_model()  # bytes, or a BytesIO in newer releases
                exported = exported.getvalue() if hasattr(exported, "getvalue") else exported
                data = np.frombuffer(exported, dtype=np.uint8)
                write_atomic(self.path, encode_entry(self.key, data))
            except OSError as exc:
                write_failed(self.dir.parent, exc)
            return compiled
        finally:
            lock.release()

    def _load(self, core, config):
        try:
            stored = self.path.read_bytes()
        except OSError:
            return None
        data = decode_entry(stored, self.key, np.dtype(np.uint8))
        if data is not None:
            try:
                compiled = core.import_model(data.tobytes(), "CPU", config)
                COMPILED.count("blob_hits")
                return compiled
            except Exception:  # verified, but OpenVINO will not take it: compile instead
                pass
        COMPILED.count("blob_rejected")
        return None


def _cpu_identity() -> str:
    """This CPU's model name and feature flags (a compiled blob is specific to both)."""
    def find():
        import platform

        try:
            with open("/proc/cpuinfo") as f:
                lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
            return namespace_digest({"cpuinfo": sorted(set(lines))})
        except OSError:
            return namespace_digest({"cpu": platform.processor(), "machine": platform.machine()})

    return MACHINE.get_or_make("cpu_identity", find)


def convert(module: torch.nn.Module, shape) -> object:
    """A torch module as an OpenVINO model for one static input shape (normalised float)."""
    ov = _import()
    with TRACE_LOCK, torch.no_grad(), warnings.catch_warnings():
        # the converter traces with torch.jit, which torch deprecates; that is its business
        warnings.simplefilter("ignore", FutureWarning)
        # share_weights=False: by default the converted model points into the module's
        # tensors, so a network that trains after a conversion (a classifier's suffix)
        # would change what the kept conversion computes for every later fit
        # traced in eval mode, and each module's mode given back: the chain's later
        # elements may be a network's trainable suffix in the middle of an epoch
        modes = [(m, m.training) for m in module.modules()]
        try:
            return ov.convert_model(module.eval(), example_input=torch.zeros(shape),
                                    input=[shape], share_weights=False)
        finally:
            for m, training in modes:
                m.training = training


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

        def conversion():
            CONVERSIONS.count("converted")
            return convert(_ChainOutputs(self.modules), image)

        # a clone: the preprocessing step edits the model it gets
        full = CONVERSIONS.get_or_make((self.key, image), conversion).clone()
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


def compile_frozen(module, input_shape, precision: str, key: str, *, kind: str,
                   uint8_steps=None, threads: int = 1, cache_dir=None) -> CompiledModule:
    """Compile a frozen module once per process, ``key`` (an identity of its weights and
    part, :meth:`skcxr._frozen.FrozenPart.compile_key`), input shape, precision,
    normalisation and thread count (the ``"compiled"`` store).

    With ``uint8_steps`` the compiled model takes uint8 images and runs those steps itself.
    Clones with identical weights share one compiled model. With ``cache_dir``, the compiled
    model is also kept there (:class:`Blob`), so other processes (joblib or Dask workers
    sharing ``memory=``) load it instead of converting and compiling again. Thread-safe: one
    thread compiles a key, concurrent callers of the same key wait for it.
    """
    k = (kind, key, tuple(input_shape), precision,
         repr(tuple(uint8_steps)) if uint8_steps is not None else None, threads)
    return COMPILED.get_or_make(k, lambda: CompiledModule(
        module, tuple(input_shape), precision, uint8_steps, threads,
        Blob(cache_dir, k) if cache_dir is not None else None))


def has_compiled(key: str) -> bool:
    """Whether a model compiled under ``key`` (any shape, precision, thread count) is held."""
    return any(k[1] == key for k in COMPILED.keys())


def has_compiled_kind(kind: str) -> bool:
    """Whether a model of this kind ("logits": a whole fitted network) is held."""
    return any(k[0] == kind for k in COMPILED.keys())


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
                    queues[id(compiled)] = (compiled, compiled.queue(done, len(batch)))
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

"""Where and how the networks compute: device, precision, engine, memory format."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from dataclasses import dataclass

import torch

from ._allocator import heap_for_tensors
from ._state import GPU_LEASE, GPU_LEASE_LOCK, MACHINE, RNG_LOCK
from ._validation import INVALID, VALID, Check, Options

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "openvino")


def _device(value):
    if isinstance(value, torch.device):
        return VALID
    if isinstance(value, str) and value.partition(":")[0] in ("cpu", "cuda") \
            and value.partition(":")[2].isdigit():
        return VALID
    return INVALID


#: The allowed values of ``device``, ``precision`` and ``engine``; what this machine can
#: do is checked by :func:`resolve`.
RUNTIME_CONSTRAINTS = {
    "device": [Options(*DEVICES), Check(_device, "'cuda:N', 'cpu:N' or a torch.device")],
    "precision": [Options(*PRECISIONS)],
    "engine": [Options(*ENGINES)],
}


@dataclass(frozen=True)
class Execution:
    """Where and how one ``fit``, ``predict`` or ``transform`` computes.

    ``precision`` is "fp32", "bf16" or "fp16"; ``engine`` ("torch" or "openvino") runs the
    frozen part of the network (training always runs in torch).
    """

    device: torch.device
    precision: str
    engine: str

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.precision)


@dataclass(frozen=True)
class CallOptions:
    """How one call streams its images, beside :class:`Execution` (where it computes): what
    travels from an estimator's parameters through every layer that reads images, carried
    as one object (skorch's ``get_params_for`` idea), so a new option touches two places.

    ``verbose``: progress bars on; ``desc``: their label; ``cache``: the per-image caches
    on; ``location``: the ``memory=`` directory (a resolved path) or None.
    """

    batch_size: int = 32
    num_workers: int = 0
    verbose: bool = False
    desc: str = "images"
    cache: bool = True
    location: object = None

    @classmethod
    def of(cls, estimator, location, *, desc: str, verbose: bool | None = None):
        """The options of an estimator's call (its ``batch_size``, ``num_workers``,
        ``cache`` and ``verbose`` parameters)."""
        return cls(batch_size=int(estimator.batch_size), num_workers=int(estimator.num_workers),
                   verbose=bool(estimator.verbose) if verbose is None else verbose,
                   desc=desc, cache=bool(estimator.cache), location=location)

    def replace(self, **changes) -> CallOptions:
        return dataclasses.replace(self, **changes)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a precision computes in; frozen-prefix outputs are kept in it (bf16: half
    the memory of float32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def resolve(device, precision, engine, n_images: int | None = None) -> Execution:
    """The ``device``, ``precision`` and ``engine`` parameters (already validated) resolved
    for this machine and a call on ``n_images`` images; raises where the machine cannot do
    what was asked (CUDA missing, fp16 on a CPU, OpenVINO not installed)."""
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    execution = Execution(dev, precision, resolve_engine(
        engine, dev, n_images=n_images, quantized=precision == "int8"))
    if execution.precision == "int8" and execution.engine != "openvino":
        raise ValueError(
            "precision='int8' runs the frozen network quantized by OpenVINO (NNCF), on the "
            f"CPU; this call resolved engine={execution.engine!r}. Use engine='openvino' (or "
            "'auto' with openvino installed) and device='cpu', or precision='bf16'.")
    return execution


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix work natively (AVX-512 BF16 or AMX).

    Without those instructions bf16 on a CPU is emulated and slower than fp32,
    so ``precision="auto"`` keeps fp32 there. ``$SKCXR_CPU_BF16`` (0/1) overrides the
    finding. Found once per process (the ``"machine"`` store).
    """
    def find() -> bool:
        override = os.environ.get("SKCXR_CPU_BF16")
        if override is not None:
            return override.strip() not in ("0", "false", "")
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags

    return MACHINE.get_or_make("cpu_has_native_bf16", find)


def resolve_device(device) -> torch.device:
    """Turn the ``device`` parameter into a :class:`torch.device`.

    "auto" is the CPU without CUDA, else this process's GPU (:func:`process_gpu`).
    """
    if device == "auto":
        return process_gpu() if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'."
        )
    return dev


def process_gpu() -> torch.device:
    """The GPU of this process: one worker process per GPU.

    With one visible GPU (``CUDA_VISIBLE_DEVICES`` set per worker, as dask-cuda's
    ``LocalCUDACluster`` and SLURM's ``--gpus-per-task`` do), that one. With several, the
    process leases the first GPU no other process on this machine holds, for its lifetime
    (an ``flock`` on ``<tmp>/skcxr-gpu-<uid>/<device id>.lock``, released by the OS
    when the process exits), so that joblib or Dask workers that all see every GPU spread
    over them instead of all fitting on GPU 0. When every GPU is held, processes share them
    round-robin by pid. ``device="cuda:N"`` asks for a GPU explicitly and takes no lease.
    """
    n = torch.cuda.device_count()
    if n <= 1:
        return torch.device("cuda", 0)
    with GPU_LEASE_LOCK:
        if "index" not in GPU_LEASE:
            GPU_LEASE["index"] = _lease_gpu(n)
    return torch.device("cuda", GPU_LEASE["index"])


def _lease_gpu(n: int) -> int:
    import fcntl
    import tempfile
    from pathlib import Path

    root = Path(tempfile.gettempdir()) / f"skcxr-gpu-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(n)]
    for i in range(n):
        f = open(root / f"{names[i] if i < len(names) else i}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        GPU_LEASE["file"] = f  # held (open) for the life of the process
        return i
    return os.getpid() % n


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn the ``precision`` parameter into one of 'fp32', 'bf16', 'fp16', 'int8'."""
    if precision != "auto":
        if precision == "int8" and device.type != "cpu":
            raise ValueError("precision='int8' runs on the CPU (OpenVINO); use device='cpu'.")
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("precision='fp16' is only supported on CUDA; use 'bf16' or 'fp32'.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_engine(engine: str, device: torch.device, *, n_images: int | None = None,
                   quantized: bool = False) -> str:
    """Turn the ``engine`` parameter into 'torch' or 'openvino' for a call on ``n_images``.

    ``"auto"`` on the CPU with OpenVINO installed: OpenVINO from the
    ``openvino_min_images`` setting (512) images on, torch below, where OpenVINO's
    conversion and compile (~3.5 s for lite0 on 2 cores) costs more than it saves
    (``benchmarks/bench_engine.py``: torch/OpenVINO time 0.19-0.40x at 64 images, 0.58-0.74x
    at 256, 0.89-1.14x at 512, 1.19-1.67x at 1024, for features, classifier fits at c=0 and
    16, and predict); int8 is always OpenVINO. Unknown ``n_images``: OpenVINO.
    """
    from . import _openvino
    from ._state import get_config

    if engine == "openvino":
        if device.type != "cpu":
            raise ValueError("engine='openvino' runs on the CPU; use device='cpu'.")
        _openvino._import()
        return "openvino"
    if engine == "auto" and device.type == "cpu" and _openvino.available():
        few = n_images is not None and n_images < get_config()["openvino_min_images"]
        return "torch" if few and not quantized else "openvino"
    return "torch"


class RandomStream:
    """One fit's own stream of torch's global RNG, seeded with ``seed``: the one way the
    package seeds torch.

    Torch has one global RNG per process (CPU, and one per CUDA device), which weight
    initialisation, dropout, shuffling and augmentation draw from. Each
    ``with stream.drawing():`` block takes the process's RNG lock
    (``skcxr._state.RNG_LOCK``), installs this stream's state, and on leaving keeps the
    stream's new state and gives the caller's state back.
    So two fits in two threads draw exactly what they would draw one after the other (their
    random sections take turns), a fit draws the same whatever ran before it in the
    process, and the caller's RNG states are untouched. Work that draws nothing (computing
    cached prefix outputs, whose loaders have private generators) runs outside the blocks,
    concurrently.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._state = None  # (cpu state, [cuda states]) once the stream has drawn

    @contextlib.contextmanager
    def drawing(self):
        """Torch's global RNG is this stream's inside (the RNG lock held)."""
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with RNG_LOCK, torch.random.fork_rng(devices=devices):
            if self._state is None:
                torch.manual_seed(self.seed)  # every CUDA device too
            else:
                torch.set_rng_state(self._state[0])
                for d, state in zip(devices, self._state[1]):
                    torch.cuda.set_rng_state(state, d)
            try:
                yield self
            finally:
                self._state = (torch.get_rng_state(),
                               [torch.cuda.get_rng_state(d) for d in devices])


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` ('fp32' gives a no-op context)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))


def _trainable_depthwise(modules) -> list:
    parts = [modules] if isinstance(modules, torch.nn.Module) else modules
    return [m for part in parts for m in part.modules()
            if isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels
            and m.weight.requires_grad]


def depthwise_trains_fp32(conv: torch.nn.Conv2d) -> bool:
    """The rule of ``fp32_depthwise``: which depthwise convolutions train in fp32.

    All but the 3x3 ones with stride 1, whose bf16 backward in oneDNN is the faster one.
    """
    return not (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1))


@contextlib.contextmanager
def fp32_depthwise(modules, device: torch.device, precision: str):
    """While training on the CPU in bf16, run the trainable depthwise convolutions of
    ``modules`` (a module, or a list of them: the part of a network that trains, so that a
    training step does not walk its frozen prefix) in fp32 (their input cast up, their
    output cast back), everything else as autocast does.

    oneDNN's bf16 backward of a depthwise convolution is 2-5x slower than its fp32 one on
    the development machine, casts counted, except for 3x3 kernels with stride 1
    (``depthwise_trains_fp32``; ``benchmarks/bench_depthwise.py``, layer by layer), while
    bf16 stays faster for the pointwise convolutions, BatchNorm and activations. A
    no-op on GPUs, in fp32, and without gradients (frozen parts, prediction).
    """
    if device.type != "cpu" or precision == "fp32" or not torch.is_grad_enabled():
        yield
        return
    convs = _trainable_depthwise(modules)
    if not convs:
        yield
        return
    stack: list = []

    def before(m, args):
        if not depthwise_trains_fp32(m):
            stack.append((None, None))
            return None
        ctx = torch.autocast(device_type="cpu", enabled=False)
        ctx.__enter__()
        stack.append((ctx, args[0].dtype))
        return (args[0].float(), *args[1:])

    def after(m, args, out):
        ctx, dtype = stack.pop()
        if ctx is None:
            return None
        ctx.__exit__(None, None, None)
        return out.to(dtype)

    handles = [h for m in convs for h in (m.register_forward_pre_hook(before),
                                          m.register_forward_hook(after))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while stack:  # a forward that raised inside a convolution: autocast back on
            ctx = stack.pop()[0]
            if ctx is not None:
                ctx.__exit__(None, None, None)


def channels_last_grad(x: torch.Tensor) -> None:
    """Make the gradient that reaches ``x`` (a channels_last activation that requires grad)
    channels_last too.

    The backward of a global average pool is an expanded (stride-0) tensor; the BatchNorm
    and activation backward that receive it next to a channels_last activation take oneDNN's
    slow mixed-layout path (a microbenchmark of lite0's last block at 7x7, batch 32,
    forward and backward: 35 ms a step against 15 ms with this, and 21 ms in NCHW; the
    fits it speeds up are in ``benchmarks/bench_train.py``).
    """
    if x.requires_grad and x.is_contiguous(memory_format=torch.channels_last):
        x.register_hook(lambda g: g.contiguous(memory_format=torch.channels_last))


def frozen_forward(module: torch.nn.Module, x: torch.Tensor, precision: str,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """A frozen module on a normalised batch: channels_last, autocast, output in ``dtype``
    (default: the compute dtype). The one way the package runs a frozen network in torch,
    cached or not, so that both paths compute the same numbers."""
    # channels_last: the layout oneDNN (CPU) and cuDNN convolutions are fastest in
    x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, precision):
        out = module(x)
    return out.to(dtype or compute_dtype(precision))


def on_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` itself where it already lives on ``device``, else a copy moved there.

    Fitted modules stay on the CPU; a call on a GPU computes on its own copy, so that
    ``predict``/``transform`` never move (write) the estimator's fitted state.
    """
    first = next(iter(module.state_dict().values()), None)
    if first is None or first.device == device or (device.type == "cpu" == first.device.type):
        return module
    return copy.deepcopy(module).to(device)


def run_batches(fn, loader, n: int, *, device: torch.device, verbose=0, desc="batches",
                ) -> torch.Tensor:
    """``fn(batch)`` for each batch of ``loader`` moved to ``device``, stacked on the CPU.

    ``fn`` runs under ``torch.inference_mode``; the result is an ordinary tensor (usable in
    training), keeping each output's shape and dtype. Shows a tqdm bar when ``verbose``.
    """
    from tqdm.auto import tqdm

    out = None
    start = 0
    with tqdm(total=n, disable=not verbose, unit="img", desc=desc) as bar, \
            heap_for_tensors():  # a batch reuses the pages of the last: skcxr._allocator
        for batch in loader:
            with torch.inference_mode():
                result = fn(batch.to(device, non_blocking=True)).cpu()
            if out is None:
                out = torch.empty((n, *result.shape[1:]), dtype=result.dtype)
            out[start:start + len(result)] = result
            start += len(result)
            bar.update(len(result))
    return out


def release(device: torch.device) -> None:
    """Return cached accelerator memory to the driver (between fits of a grid search)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()

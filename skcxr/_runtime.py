"""Where and how torch computes: device, precision and memory format."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix work natively (AVX-512 BF16 or AMX).

    Without those instructions bf16 on a CPU is emulated and slower than fp32,
    so ``precision="auto"`` keeps fp32 there.
    """
    override = os.environ.get("SKCXR_CPU_BF16")
    if override is not None:
        return override.strip() not in ("0", "false", "")
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device) -> torch.device:
    """Turn the ``device`` parameter into a :class:`torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r}."
        )
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r}."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'."
        )
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn the ``precision`` parameter into one of 'fp32', 'bf16', 'fp16'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("precision='fp16' is only supported on CUDA; use 'bf16' or 'fp32'.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_engine(engine: str, device: torch.device) -> str:
    """Turn the ``engine`` parameter into 'torch' or 'openvino'."""
    from . import _openvino

    if engine not in ("auto", "torch", "openvino"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'openvino'; got {engine!r}.")
    if engine == "openvino":
        if device.type != "cpu":
            raise ValueError("engine='openvino' runs on the CPU; use device='cpu'.")
        _openvino._import()
        return "openvino"
    if engine == "auto" and device.type == "cpu" and _openvino.available():
        return "openvino"
    return "torch"


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` ('fp32' gives a no-op context)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a module to ``device`` in channels_last memory format, in eval mode.

    channels_last is what oneDNN (CPU) and cuDNN (GPU) convolutions are fastest in:
    measured here 1.6x for EfficientNet-Lite0 in fp32 and more under bf16.
    """
    return module.to(device=device, memory_format=torch.channels_last).eval()


def run_batches(fn, loader, n: int, *, device: torch.device, verbose=0, desc="batches"):
    """Apply ``fn`` to each batch of ``loader`` on ``device``; stack the outputs as float32.

    Runs under ``torch.inference_mode``; shows a tqdm bar when ``verbose``.
    """
    import numpy as np
    from tqdm.auto import tqdm

    out = None
    start = 0
    with torch.inference_mode(), tqdm(total=n, disable=not verbose, unit="img", desc=desc) as bar:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            result = fn(batch).float().reshape(len(batch), -1).cpu().numpy()
            if out is None:
                out = np.empty((n, result.shape[1]), dtype=np.float32)
            out[start:start + len(batch)] = result
            start += len(batch)
            bar.update(len(batch))
    return out


def release(device: torch.device) -> None:
    """Return cached accelerator memory to the driver (between fits of a grid search)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_state(state: dict) -> dict:
    """A copy of an estimator's ``__dict__`` whose torch modules all live on the CPU.

    Used by ``__getstate__`` so that a model fitted on a GPU pickles into something a
    CPU-only machine can load (skorch #70, #1096).
    """
    state = state.copy()
    for key, value in state.items():
        if isinstance(value, torch.nn.Module) and any(
            t.device.type != "cpu" for t in value.state_dict().values()
        ):
            import copy

            state[key] = copy.deepcopy(value).to("cpu")
    return state

"""The depthwise convolutions of tf_efficientnet_lite0, trained in fp32 and in bf16 on the
CPU: forward and backward times per layer, and which one the fp32-depthwise rule picks.

While a fit trains on the CPU in bf16, skcxr runs the trainable depthwise convolutions
in fp32, except the 3x3 ones with stride 1 (``skcxr._runtime.depthwise_trains_fp32``, copied
below as ``rule_picks_fp32``; a test checks the two agree; the README's "Performance");
every other layer stays in bf16. This script measures each depthwise layer of lite0 at
224 px both ways (the layer as timm builds it, TF "same" padding included; channels_last;
batch 32; glibc's heap kept as a fit keeps it, here by glibc's environment variables, the
script restarting itself with them; its input and output gradient in bf16, as bf16
training hands them over; "bf16" as autocast runs it, "fp32" as the rule runs it: input
cast up, output cast back, casts counted) and prints whether the rule picked the faster
one.

    python benchmarks/bench_depthwise.py [--batch 32] [--reps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# what a fit sets while it computes (skcxr._allocator.heap_for_tensors): every block from
# the heap, freed memory kept, so the layers' large tensors do not page-fault every call
HEAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def rule_picks_fp32(kernel: int, stride: int) -> bool:
    """The rule: every depthwise convolution but the 3x3 ones with stride 1 trains in fp32."""
    return not (kernel == 3 and stride == 1)


def _timed(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in HEAP.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **HEAP})
    import copy

    import torch

    from skcxr import load_backbone

    model = load_backbone("tf_efficientnet_lite0", weights=None).module.eval()
    found = []

    def record(module, inputs):
        found.append((module, tuple(inputs[0].shape[1:])))

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)
             and 1 < m.groups == m.in_channels]
    handles = [m.register_forward_pre_hook(record) for m in convs]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()

    print(f"tf_efficientnet_lite0 at 224 px, batch {args.batch}, channels_last, "
          f"{torch.get_num_threads()} threads; ms per call (forward, forward + backward)\n")
    print(f"{'layer':<28}{'fp32 fwd':>9}{'fp32 f+b':>10}{'bf16 fwd':>10}{'bf16 f+b':>10}"
          f"{'rule':>7}{'faster':>8}")
    totals = {"fp32": 0.0, "bf16": 0.0, "rule": 0.0}
    agree = 0
    for module, (c, h, w) in found:
        times = {}
        for dtype in ("fp32", "bf16"):
            conv = copy.deepcopy(module).train().to(memory_format=torch.channels_last)
            x = torch.randn(args.batch, c, h, w).contiguous(memory_format=torch.channels_last)
            x = x.bfloat16().requires_grad_(True)

            def forward(conv=conv, x=x, dtype=dtype):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    if dtype == "bf16":
                        return conv(x)
                    with torch.autocast("cpu", enabled=False):
                        return conv(x.float()).to(torch.bfloat16)

            grad = torch.randn_like(forward())

            def both(forward=forward, grad=grad):
                forward().backward(grad)

            times[dtype] = (_timed(forward, args.reps), _timed(both, args.reps))
        k, stride = module.kernel_size[0], module.stride[0]
        picked = "fp32" if rule_picks_fp32(k, stride) else "bf16"
        faster = min(times, key=lambda d: times[d][1])
        agree += picked == faster
        totals["fp32"] += times["fp32"][1]
        totals["bf16"] += times["bf16"][1]
        totals["rule"] += times[picked][1]
        name = f"{c} ch {w} px {k}x{k}" + (" /2" if stride == 2 else "")
        print(f"{name:<28}{times['fp32'][0]:>9.2f}{times['fp32'][1]:>10.2f}"
              f"{times['bf16'][0]:>10.2f}{times['bf16'][1]:>10.2f}{picked:>7}{faster:>8}")
    print(f"\nall {len(found)} layers, forward + backward: all fp32 {totals['fp32']:.1f} ms, "
          f"all bf16 {totals['bf16']:.1f} ms, the rule {totals['rule']:.1f} ms; the rule "
          f"picked the faster precision for {agree} of {len(found)} layers.")


if __name__ == "__main__":
    main()

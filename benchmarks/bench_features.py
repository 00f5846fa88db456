"""Feature extraction from JPEG files: the naive loop a user writes today vs skcxr.

Both sides run on the same images in one run (a stratified subset of kermany224/train in the
shared data folder), each in its own process (so each reports its own peak RSS), end to end
from JPEG files to pooled tf_efficientnet_lite0 features with the same weights:

(a) naive: PIL load -> torchvision Resize/ToTensor/Normalize -> timm model in fp32, default
    memory format, batch 32, ``torch.no_grad``;
(b) skcxr: ``FeatureExtractorTransformer(engine="torch")`` (bf16 autocast where native,
    channels_last);
(c) skcxr: ``FeatureExtractorTransformer(engine="openvino")`` (the default where OpenVINO
    is installed);
(d) skcxr: ``FeatureExtractorTransformer(precision="int8")``: the backbone quantized by NNCF
    at fit (calibrated on 300 of the images; the fit is not timed), if nncf is installed.

It also measures the machine's bf16 matmul throughput (a large bf16 GEMM) and reports skcxr's
speed as a fraction of the roofline it implies for lite0 (0.77 GFLOP per 224x224 image,
i.e. 0.385 G multiply-adds).

    python benchmarks/bench_features.py [--n 512] [--data DIR]

``--data`` is the shared data folder (with ``kermany224/``; default: the one beside the
repository).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import DATA, kermany, peak_rss_mb, run_in_process

LITE0_GFLOP = 0.77


def naive(paths: list[str], queue) -> None:
    import torch
    from PIL import Image
    from torchvision import transforms

    from skcxr import load_backbone

    model = load_backbone("tf_efficientnet_lite0", "imagenet").module.eval()  # same weights
    tf = transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    model(torch.zeros(2, 3, 224, 224))  # warm-up, as skcxr's fit probes the model too
    start = time.perf_counter()
    feats = []
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + 32]])
            feats.append(model(batch))
    elapsed = time.perf_counter() - start
    queue.put({"seconds": elapsed, "rss": peak_rss_mb(),
               "features": torch.cat(feats).numpy()})


def _timed_transform(fe, X, queue) -> None:
    """Put the seconds of ``fe.transform(X)`` after a warm-up on two images (oneDNN
    primitives, OpenVINO compiles), with the peak RSS and the features."""
    fe.transform(X[:2])
    start = time.perf_counter()
    feats = fe.transform(X)
    elapsed = time.perf_counter() - start
    queue.put({"seconds": elapsed, "rss": peak_rss_mb(), "features": feats,
               "precision": fe.precision_, "engine": fe.engine_})


def skcxr_defaults(paths: list[str], queue, engine="torch") -> None:
    from skcxr import FeatureExtractorTransformer

    _timed_transform(FeatureExtractorTransformer(engine=engine).fit(paths), paths, queue)


def skcxr_openvino(paths: list[str], queue) -> None:
    skcxr_defaults(paths, queue, engine="openvino")


def skcxr_arrays(paths: list[str], queue) -> None:
    """The default engine on the images already decoded (a uint8 array; reading and JPEG
    decoding are not timed)."""
    import numpy as np

    from skcxr import FeatureExtractorTransformer
    from skcxr.images import read_image

    images = np.stack([read_image(p) for p in paths])
    _timed_transform(FeatureExtractorTransformer(engine="openvino").fit(images[:2]), images,
                     queue)


def engine_alone(paths: list[str], queue) -> None:
    """OpenVINO's ceiling on this network and machine: lite0 (same weights) converted and
    compiled by OpenVINO itself with the settings skcxr uses (THROUGHPUT hint, bf16 where
    native, the process's cores, requests of 4 images), fed one preallocated normalised
    batch over and over; no reading, decoding, preprocessing, hashing or Python per image."""
    import numpy as np
    import openvino as ov
    import torch

    from skcxr import load_backbone

    module = load_backbone("tf_efficientnet_lite0", "imagenet").module.eval()
    model = ov.convert_model(module, example_input=torch.zeros(4, 3, 224, 224))
    model.reshape([4, 3, 224, 224])
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() \
        else False
    compiled = ov.Core().compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})
    requests = ov.AsyncInferQueue(compiled)
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    for _ in range(16):  # warm-up
        requests.start_async({0: x})
    requests.wait_all()
    n = len(paths) // 4 * 4
    start = time.perf_counter()
    for _ in range(n // 4):
        requests.start_async({0: x})
    requests.wait_all()
    queue.put(n / (time.perf_counter() - start))


def decode_only(paths: list[str], queue) -> None:
    """Reading and decoding the JPEGs alone, on one thread (skcxr's reader)."""
    from skcxr.images import read_image

    start = time.perf_counter()
    for p in paths:
        read_image(p)
    queue.put(time.perf_counter() - start)


def skcxr_int8(paths: list[str], queue) -> None:
    """precision="int8": quantized at fit (calibrated on 300 of the images, not timed)."""
    from skcxr import FeatureExtractorTransformer

    _timed_transform(FeatureExtractorTransformer(precision="int8", random_state=0).fit(paths),
                     paths, queue)


def bf16_matmul_gflops(size: int = 4096, repeats: int = 10, trials: int = 3) -> float:
    """The best of ``trials`` timings of ``repeats`` large bf16 GEMMs (the attainable peak)."""
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def _run(target, paths):
    if target in (skcxr_openvino, skcxr_int8, skcxr_arrays):
        try:
            import openvino  # noqa: F401
            if target is skcxr_int8:
                import nncf  # noqa: F401
        except ImportError:
            return None
    return run_in_process(target, paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="number of images")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/)")
    args = parser.parse_args()
    import numpy as np

    paths = [str(p) for p in kermany(args.data, "train", n=args.n)[0]]
    a = _run(naive, paths)
    b = _run(skcxr_defaults, paths)
    c = _run(skcxr_openvino, paths)
    d = _run(skcxr_int8, paths)
    e = _run(skcxr_arrays, paths)
    decode_s = run_in_process(decode_only, paths)
    alone = run_in_process(engine_alone, paths) if c is not None else None
    gflops = bf16_matmul_gflops()
    roofline = gflops / LITE0_GFLOP
    rows = [
        ("naive loop (PIL, fp32, NCHW)", a),
        (f"skcxr engine='torch' ({b['precision']}, channels_last)", b),
    ]
    if c is not None:
        rows.append((f"skcxr engine='openvino' ({c['precision']})", c))
    if d is not None:
        rows.append(("skcxr precision='int8' (OpenVINO)", d))
    if e is not None:
        rows.append((f"  openvino ({e['precision']}) from decoded arrays", e))
    print(f"\n{len(paths)} JPEG images from {args.data / 'kermany224' / 'train'}, "
          "tf_efficientnet_lite0 at 224x224\n")
    print(f"{'':<44}{'img/s':>8}{'seconds':>9}{'vs naive':>10}{'peak RSS MB':>13}"
          f"{'% roofline':>12}{'cos vs naive':>14}")
    fa = a["features"]
    for label, r in rows:
        ips = len(paths) / r["seconds"]
        fb = r["features"]
        cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
        print(f"{label:<44}{ips:>8.1f}{r['seconds']:>9.1f}{a['seconds'] / r['seconds']:>9.2f}x"
              f"{r['rss']:>13.0f}{100 * ips / roofline:>11.1f}%{cos.min():>14.4f}")
    print(f"bf16 matmul: {gflops:.0f} GFLOP/s -> lite0 roofline {roofline:.0f} img/s "
          f"({LITE0_GFLOP} GFLOP/img)")
    print(f"reading + decoding the JPEGs alone, one thread: {len(paths) / decode_s:.0f} img/s")
    if c is not None and e is not None:
        print(f"end to end from files / from decoded arrays (openvino): "
              f"{e['seconds'] / c['seconds']:.2f}")
    if alone is not None:
        ips = len(paths) / c["seconds"]
        print(f"OpenVINO alone (lite0 compiled with skcxr's settings, one batch repeated): "
              f"{alone:.1f} img/s "
              f"= {100 * alone / roofline:.1f}% of the roofline; end to end from files is "
              f"{100 * ips / alone:.1f}% of it")


if __name__ == "__main__":
    main()

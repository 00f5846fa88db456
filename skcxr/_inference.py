"""A classifier network's logits on images, by the fastest path that is exact.

Three paths, decided here for ``predict`` and for the calibration inside ``fit`` alike:

1. the whole network compiled by OpenVINO (engine "openvino", and at least
   ``get_config()["whole_network_min_images"]`` images in the call or the network compiled
   already): a :func:`skcxr._frozen.network_part`, its logits cached per image;
2. the frozen prefix from the caches (:func:`skcxr._frozen.prefix_from_cache`), then the
   trainable suffix and head in torch;
3. the images through the whole network in torch (decoded images cached).
"""

from __future__ import annotations

import numpy as np

from . import _runtime
from ._fitted import classifier_network
from ._frozen import network_part, networks_compiled, prefix_from_cache, prefix_part
from ._preprocessing import Preprocessing
from ._runtime import CallOptions, Execution
from ._state import get_config
from .cache import DecodedImages
from .images import ImageSource, make_loader


def view_logits(net, prep: Preprocessing, weights: dict, source: ImageSource,
                execution: Execution, options: CallOptions, views) -> np.ndarray:
    """Logits ``(views, n, n_outputs)`` of a classifier network in each test-time view."""
    return np.stack([classifier_logits(net, prep.with_view(view), weights, source, execution,
                                       options) for view in views])


def classifier_logits(net, prep: Preprocessing, weights: dict, source: ImageSource,
                      execution: Execution, options: CallOptions) -> np.ndarray:
    """Logits ``(n, n_outputs)`` of a classifier network (fitted, or the one ``fit`` just
    trained) on ``source`` seen in ``prep.view``; reads the network, writes nothing."""
    many = len(source) >= get_config()["whole_network_min_images"]
    if execution.engine == "openvino" and (many or networks_compiled()):
        # the whole trained network compiled once per fitted model and process runs 1.25x
        # faster than a compiled prefix + a torch suffix, but compiling it costs ~4 s
        # (bench_predict): worth it for many images, or once compiled
        whole = network_part(classifier_network(net, prep, weights, copy=False))
        if many or whole.is_compiled():
            return whole.outputs(source, execution, options.replace(desc="predict")).numpy()
    module = _runtime.on_device(net, execution.device)
    if prefix_from_cache(net, cache=options.cache):
        # the prefix is still the pretrained one: its cached outputs serve predict too
        h = prefix_part(net, prep, weights).outputs(source, execution,
                                                    options.replace(desc="frozen prefix"))
        # batches as slices: a DataLoader would draw from the global torch RNG
        batches, given = h.split(options.batch_size), "h"
    else:
        decoded = DecodedImages(source, prep, options.location) if options.cache else None
        batches, given = make_loader(source, prep, batch_size=options.batch_size,
                                     num_workers=options.num_workers,
                                     pin_memory=execution.device.type == "cuda",
                                     decoded=decoded), "x"
    out = _runtime.run_batches(
        lambda b: module.logits(**{given: b}, precision=execution.precision), batches,
        len(source), device=execution.device, verbose=options.verbose, desc="predict")
    _runtime.release(execution.device)
    return out.numpy()

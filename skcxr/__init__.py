"""skcxr: pretrained CNN backbones as scikit-learn estimators for chest X-ray classification."""

from ._allocator import restore_large_heap_blocks
from ._threads import passive_wait_on_import

passive_wait_on_import()  # before anything imports torch: see skcxr._threads
restore_large_heap_blocks()  # in Dask workers: see skcxr._allocator

from ._classifier import PretrainedCNNClassifier  # noqa: E402
from ._features import FeatureExtractorTransformer  # noqa: E402
from ._state import config_context, get_config, set_config  # noqa: E402
from ._version import __version__  # noqa: E402
from ._workers import ParallelStartupWarning  # noqa: E402
from .backbones import WeightsUnavailableError, list_offline_backbones, load_backbone  # noqa: E402
from .datasets import (  # noqa: E402
    kermany_patient_ids,
    load_chexpert_csv,
    load_image_folder,
    load_nih_csv,
    load_sample_cxr,
)
from .images import ImageReadError  # noqa: E402

__all__ = [
    "FeatureExtractorTransformer",
    "ImageReadError",
    "kermany_patient_ids",
    "ParallelStartupWarning",
    "PretrainedCNNClassifier",
    "WeightsUnavailableError",
    "config_context",
    "get_config",
    "list_offline_backbones",
    "load_backbone",
    "load_chexpert_csv",
    "load_image_folder",
    "load_nih_csv",
    "load_sample_cxr",
    "set_config",
    "__version__",
]

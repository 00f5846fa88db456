"""skcxr: pretrained CNN backbones as scikit-learn estimators for chest X-ray classification."""

from ._classifier import PretrainedCNNClassifier
from ._features import FeatureExtractorTransformer
from .backbones import WeightsUnavailableError, list_offline_backbones, load_backbone
from .datasets import kermany_patient_ids, load_image_folder, load_nih_csv, load_sample_cxr
from .images import ImageReadError

__version__ = "0.1.0.dev0"

__all__ = [
    "FeatureExtractorTransformer",
    "ImageReadError",
    "kermany_patient_ids",
    "PretrainedCNNClassifier",
    "WeightsUnavailableError",
    "list_offline_backbones",
    "load_backbone",
    "load_image_folder",
    "load_nih_csv",
    "load_sample_cxr",
    "__version__",
]

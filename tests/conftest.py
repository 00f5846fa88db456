"""Shared fixtures. Tests never reach the network: the hub is forced offline before import."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # must precede any huggingface_hub import
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home"))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: A tiny random-weight timm backbone for API tests (99k parameters, 256 features).
TINY = dict(backbone="test_efficientnet", weights=None, image_size=64, random_state=0,
            precision="fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def sample():
    from skcxr import load_sample_cxr

    return load_sample_cxr()


@pytest.fixture(scope="session")
def sample_paths(sample):
    """12 sample paths, 6 per class."""
    idx = np.r_[0:6, 100:106]
    return sample.data[idx], sample.target[idx]


def kermany_dir() -> Path:
    path = SHARED_DATA / "kermany224"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path

#: TINY for the feature transformer, on the torch engine (forward hooks count its calls)
TINY_FE = {**TINY, "engine": "torch"}

#: TINY for the classifier: small images, 2 epochs, prefix computed by torch (exactness)
TINYC = {**TINY, "image_size": 48, "max_epochs": 2, "batch_size": 16, "engine": "torch"}


def outputs_before_and_after_rewrite(predict, path: Path, size: int):
    """``predict([path])`` for a black image, then again after the same file turns white.

    Caches key images by content, so the second call must not reuse the first's entry.
    """
    from PIL import Image

    Image.fromarray(np.zeros((size, size), np.uint8)).save(path)
    before = predict([str(path)])
    Image.fromarray(np.full((size, size), 255, np.uint8)).save(path)
    return before, predict([str(path)])

"""Shared fixtures. Tests never reach the network: the hub is forced offline before import."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # must precede any huggingface_hub import
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home"))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

#: A tiny random-weight timm backbone for API tests (99k parameters, 256 features).
_TINY = dict(backbone="test_efficientnet", weights=None, image_size=64, random_state=0,
             precision="fp32")


@pytest.fixture(autouse=True)
def _isolated():
    """Seeded global RNGs and empty in-process caches: no test sees another's entries."""
    from skcxr.cache import clear_cache

    torch.manual_seed(0)
    np.random.seed(0)
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="session")
def tiny_fe():
    """Parameters of a tiny FeatureExtractorTransformer on the torch engine."""
    return {**_TINY, "engine": "torch"}


@pytest.fixture(scope="session")
def tiny_clf():
    """Parameters of a tiny classifier: 48 px, 2 epochs, prefix computed by torch (exact)."""
    return {**_TINY, "image_size": 48, "max_epochs": 2, "batch_size": 16, "engine": "torch"}


@pytest.fixture(scope="session")
def sample():
    from skcxr import load_sample_cxr

    return load_sample_cxr()


@pytest.fixture(scope="session")
def sample_paths(sample):
    """12 sample paths, 6 per class."""
    idx = np.r_[0:6, 100:106]
    return sample.data[idx], sample.target[idx]


@pytest.fixture(scope="session")
def data(sample):
    """60 sample paths and labels, 30 per class."""
    idx = np.r_[0:30, 100:130]
    return sample.data[idx], sample.target[idx]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared CXR data beside the repository (skips the test where it is absent)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "kermany224").is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def undecodable(tmp_path, data):
    """60 complete PNG files whose pixel data is damaged, and ``data``'s labels.

    Every check that should come before decoding passes on them; decoding any one raises
    ImageReadError. So a test that expects another error proves it came first.
    """
    from PIL import Image

    rng = np.random.RandomState(0)
    paths = []
    for i in range(60):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.randint(0, 255, (48, 48), dtype=np.uint8)).save(path)
        raw = bytearray(path.read_bytes())  # header and end intact: only decoding fails
        raw[len(raw) // 2:len(raw) // 2 + 64] = b"\xff" * 64
        path.write_bytes(bytes(raw))
        paths.append(str(path))
    return np.array(paths, dtype=object), data[1]


@pytest.fixture
def rewrite_check(tmp_path):
    """``check(predict, size)``: outputs for a black image, then again after the same file
    turns white. Caches key images by content, so the second call must not reuse the first's
    entry."""
    from PIL import Image

    def check(predict, size):
        path = tmp_path / "rewritten.png"
        Image.fromarray(np.zeros((size, size), np.uint8)).save(path)
        before = predict([str(path)])
        Image.fromarray(np.full((size, size), 255, np.uint8)).save(path)
        return before, predict([str(path)])

    return check

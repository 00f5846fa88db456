import numpy as np
import pytest
from PIL import Image

from skcxr import load_image_folder, load_sample_cxr


def test_sample_is_real_and_documented(sample):
    assert sample.data.shape == (300,)
    assert list(sample.target_names) == ["NORMAL", "PNEUMONIA"]
    assert np.bincount(sample.target).tolist() == [100, 200]
    assert "CC BY 4.0" in sample.DESCR and "10.17632/rscbjbr9sj.2" in sample.DESCR
    with Image.open(sample.data[0]) as im:
        assert im.size == (160, 160)
    X, y = load_sample_cxr(return_X_y=True)
    np.testing.assert_array_equal(y, sample.target)


def test_sample_as_arrays():
    X, y = load_sample_cxr(return_X_y=True, as_arrays=True)
    assert X.shape == (300, 160, 160) and X.dtype == np.uint8 and len(y) == 300
    assert 20 < X.mean() < 235


def test_load_image_folder(tmp_path):
    for cls, n in {"covid": 2, "non-covid": 3}.items():
        (tmp_path / cls / "sub").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / cls / f"{i}.png")
        (tmp_path / cls / "notes.txt").write_text("not an image")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "sub" / "deep.jpg")
    b = load_image_folder(tmp_path)
    assert list(b.target_names) == ["covid", "non-covid"]
    assert b.target.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert all(not p.endswith(".txt") for p in b.data)


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-directories"):
        load_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        load_image_folder(tmp_path)


def test_image_folder_groups_where_the_names_define_them(tmp_path):
    from PIL import Image

    from skcxr import load_image_folder, load_sample_cxr
    from skcxr.datasets import _SAMPLE_DIR

    sample = load_image_folder(_SAMPLE_DIR)  # Kermany names: patient ids
    assert sample.groups is not None
    np.testing.assert_array_equal(sample.groups, load_sample_cxr().groups)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / cls / f"scan_{cls}.png")
    assert load_image_folder(tmp_path).groups is None  # no rule: the user's ids

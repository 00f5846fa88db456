import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skcxr import FeatureExtractorTransformer, ImageReadError
from skcxr.images import DataConfig, check_images, make_preprocessing, read_image

GREY = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 7 % 256).astype(np.uint8)


def _save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


# ---------------------------------------------------------------- input forms


def test_every_input_form_gives_the_same_features(sample_paths, tiny_fe):
    paths, _ = sample_paths
    fe = FeatureExtractorTransformer(**tiny_fe).fit(paths)
    expected = fe.transform(paths)
    arrays = np.stack([read_image(p) for p in paths])  # (n, 160, 160) uint8 grey
    forms = {
        "list of str": list(paths),
        "list of Path": [__import__("pathlib").Path(p) for p in paths],
        "Series": pd.Series(paths, name="path"),
        "(n, 1) array": paths.reshape(-1, 1),
        "DataFrame column": pd.DataFrame({"path": paths}),
        "(n, H, W) uint8": arrays,
        "(n, H, W, 1) uint8": arrays[..., None],
        "(n, H, W, 3) uint8": np.repeat(arrays[..., None], 3, axis=-1),
        "(n, H, W) uint16": arrays.astype(np.uint16) * 257,
        "(n, H, W) float": arrays.astype(np.float32) / 255,
    }
    scale = np.abs(expected).max()
    for name, X in forms.items():
        # 8-bit inputs follow the same uint8 path bit for bit; uint16/float inputs are
        # resized in float without rounding to 8 bits, so they agree to within that rounding
        atol = 1e-6 * scale if "uint16" not in name and "float" not in name else 0.03 * scale
        np.testing.assert_allclose(fe.transform(X), expected, rtol=0, atol=atol, err_msg=name)
    assert expected.shape == (12, 256) and expected.dtype == np.float32
    assert np.abs(expected).sum() > 0


def test_png_variants_decode_to_the_same_grey_levels(tmp_path):
    grey = Image.fromarray(GREY)
    files = {
        "L": _save(grey, tmp_path / "l.png"),
        "I;16": _save(Image.fromarray(GREY.astype(np.uint16) * 257), tmp_path / "i16.png"),
        "RGB": _save(grey.convert("RGB"), tmp_path / "rgb.png"),
        "RGBA": _save(grey.convert("RGBA"), tmp_path / "rgba.png"),
        "P": _save(grey.convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
                   tmp_path / "p.png"),
        "BMP": _save(grey, tmp_path / "l.bmp"),
    }
    for mode, path in files.items():
        img = read_image(path)
        level = img.astype(np.float64) / (255 if img.dtype == np.uint8 else 1)
        if level.ndim == 3:
            level = level.mean(-1)
        tol = 6 / 255 if mode == "P" else 1e-6
        np.testing.assert_allclose(level, GREY / 255, atol=tol, err_msg=mode)
    assert read_image(files["I;16"]).dtype == np.float32  # 16 bits are kept, not truncated
    jpeg = read_image(_save(grey, tmp_path / "a.jpg", quality=95))
    assert jpeg.shape == GREY.shape and np.abs(jpeg.astype(float) - GREY).mean() < 4


def test_rgba_transparency_is_composited_on_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:4, ..., 3] = 255  # top half opaque, bottom half transparent
    img = read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    assert (img[:4] == 200).all() and (img[4:] == 0).all()


def _write_dicom(path, raw, photometric="MONOCHROME2", slope=None, intercept=None,
                 window=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_dicom_modality_lut_window_and_monochrome1(tmp_path, tiny_fe):
    pytest.importorskip("pydicom")
    raw = np.tile(np.linspace(0, 4000, 50).astype(np.uint16), (20, 1))
    ramp = (raw - raw.min()) / (raw.max() - raw.min())
    mono2 = read_image(_write_dicom(tmp_path / "m2.dcm", raw, slope=2.0, intercept=-100.0))
    np.testing.assert_allclose(mono2, ramp, atol=1e-5)  # linear rescale, then full range
    mono1 = read_image(_write_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1 - ramp, atol=1e-5)  # inverted: bone stays bright
    # window on modality values 2*raw-100: centre 3900, width 2000 -> [2900, 4900]
    win = read_image(_write_dicom(tmp_path / "w.dcm", raw, slope=2.0, intercept=-100.0,
                                  window=(3900, 2000)))
    modality = 2.0 * raw - 100
    assert (win[modality <= 2899] == 0).all() and (win[modality >= 4900] == 1).all()
    inside = (modality > 2900) & (modality < 4900)
    np.testing.assert_allclose(win[inside], (modality[inside] - 2900) / 2000, atol=2e-3)
    # and it flows through the estimator like any other file
    fe = FeatureExtractorTransformer(**tiny_fe).fit([str(tmp_path / "m2.dcm")])
    assert fe.transform([str(tmp_path / "m2.dcm"), str(tmp_path / "m1.dcm")]).shape == (2, 256)


# ---------------------------------------------------------------- preprocessing


def test_resize_modes_and_normalisations():
    cfg = DataConfig(image_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    wide = torch.full((1, 16, 32), 255, dtype=torch.uint8)  # white, twice as wide as tall
    pad = make_preprocessing(cfg, resize="pad").transform(wide)
    assert pad.shape == (3, 32, 32)
    assert (pad[:, :8] == 0).all() and (pad[:, -8:] == 0).all() and (pad[:, 8:24] == 255).all()
    stretch = make_preprocessing(cfg, resize="stretch").transform(wide)
    assert stretch.shape == (3, 32, 32) and (stretch == 255).all()
    crop = make_preprocessing(cfg, resize="crop", image_size=(24, 20)).transform(wide)
    assert crop.shape == (3, 24, 20)
    one = make_preprocessing(cfg, in_chans=1).transform(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert one.shape == (1, 32, 32)

    batch = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    expected = {
        "backbone": np.array([0, 51, 255]) / 255 / 0.5 - 1,
        "centered": np.array([0, 51, 255]) / 255 - 0.5,  # study 000: x / 255 - 0.5
        "unit": np.array([0, 51, 255]) / 255,
        "imagenet": (np.array([0, 51, 255]) / 255 - 0.485) / 0.229,
    }
    for norm, want in expected.items():
        got = make_preprocessing(cfg, normalize=norm).normalize(batch)[0, 0, 0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=norm)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 3}, "'image_size' parameter of make_preprocessing must be"),
        ({"resize": "squash"}, "'resize' parameter .* must be one of 'stretch', 'pad', 'crop'"),
        ({"normalize": "zscore"}, "'normalize' parameter .* or a \\(mean, std\\) pair"),
        ({"normalize": (0.5, 0)}, "std \\[0.0, 0.0, 0.0\\] must be positive"),
        ({"in_chans": 2}, "'in_chans' parameter .* must be one of 1, 3; got 2"),
    ],
)
def test_bad_preprocessing_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_preprocessing(DataConfig(), **kwargs)


# ---------------------------------------------------------------- bad input


@pytest.fixture
def bad_files(tmp_path):
    good = _save(Image.fromarray(GREY), tmp_path / "good.png")
    Image.fromarray(GREY).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    return tmp_path, good


@pytest.mark.parametrize(
    "name, exc, match",
    [
        ("missing.png", FileNotFoundError, "missing.png.*does not exist"),
        ("empty.png", ImageReadError, "empty.png.*empty"),
        ("corrupt.png", ImageReadError, "corrupt.png"),
        ("anim.gif", ValueError, "Unsupported image file extension '.gif'"),
    ],
)
def test_bad_files_fail_at_validation_naming_the_file(bad_files, name, exc, match, tiny_fe):
    root, good = bad_files
    with pytest.raises(exc, match=match):
        check_images([good, str(root / name)])
    fe = FeatureExtractorTransformer(**tiny_fe)
    with pytest.raises(exc, match=match):
        fe.fit([good, str(root / name)])


def test_truncated_image_raises_naming_the_file(bad_files, tiny_fe):
    root, good = bad_files
    fe = FeatureExtractorTransformer(**tiny_fe).fit([good])
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        fe.transform([good, str(root / "truncated.jpg")])


@pytest.mark.parametrize(
    "X, match",
    [
        ([], "X is empty"),
        (np.zeros((0, 8, 8), np.uint8), "X is empty"),
        (np.zeros((3, 0, 0), np.uint8), "3 images with no pixels"),
        (np.zeros((4, 8), np.uint8), "got 2-D array"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((2, 8, 8, 4), np.uint8), "C in"),
        (np.full((2, 8, 8), np.nan, np.float32), "NaN"),
        (np.full((2, 8, 8), 200.0, np.float32), r"\[0, 1\]"),
        ("image.png", "single path"),
        (pd.DataFrame({"a": ["x.png"], "b": ["y.png"]}), "exactly one column"),
        (np.array([["a.png", "b.png"]], dtype=object), "1-D sequence"),
        ([np.zeros((8, 8)), np.zeros((9, 9))], "different shapes"),
    ],
)
def test_bad_arrays_and_containers(X, match):
    with pytest.raises(ValueError, match=match):
        check_images(X)


def test_sparse_input_is_refused_as_sparse_and_array_likes_are_read_as_arrays():
    """A scipy sparse matrix is refused with a TypeError that says sparse input is not
    supported; an object that only converts to an array (``__array__``, not iterable) is
    read as that array."""
    import scipy.sparse

    with pytest.raises(TypeError, match="sparse csr_matrix; sparse input is not supported"):
        check_images(scipy.sparse.csr_matrix(np.ones((2, 64))))

    class Images:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    source = check_images(Images(images))
    assert source.kind == "arrays" and len(source) == 2

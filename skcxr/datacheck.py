"""A data-set check, run once before a study: duplicates, near-duplicates, leaks, shifts.

:func:`~skcxr.images.check_images` is the fast input check every call makes; this is the
slower one a user runs once on a whole data set, before its numbers can be inflated by it:

* **exact duplicates**: identical files (the content hash every skcxr cache keys an image
  by), within a set and across splits, with label conflicts marked;
* **near-duplicates**: pairs of images whose 32 x 32 grey thumbnails have a normalised
  cross-correlation (the cosine similarity of the centred pixels) of at least
  ``near_threshold``, each image also compared at two centre zooms so that slightly cropped
  copies match; resized and re-encoded copies match as they are. All pairs are compared
  exactly, block by block, so memory stays ``block x n`` whatever ``n``. Backbone features
  (``features=``, e.g. a cached :class:`~skcxr.FeatureExtractorTransformer`'s) can be
  searched the same way; measured, they separate copies from distinct images less well;
* **patient leaks**: patient ids (``groups``) with images in more than one split;
* **per-class statistics** (intensity mean and spread, size, file size) per split, and the
  differences between splits that are large enough to matter (standardised mean
  difference ``|SMD| >= 0.5`` and a two-sample Kolmogorov-Smirnov ``p < 0.001``).

Examples
--------
>>> from skcxr import load_image_folder                                   # doctest: +SKIP
>>> from skcxr.datacheck import check_dataset                             # doctest: +SKIP
>>> train = load_image_folder("kermany224/train")                         # doctest: +SKIP
>>> result = check_dataset(train.data, train.target, groups=train.groups) # doctest: +SKIP
>>> result.summary()                                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .images import check_images

__all__ = [
    "DatasetCheck",
    "check_dataset",
    "near_duplicate_pairs",
]

#: Thumbnail side (pixels) of the pixel near-duplicate search, and the centre zooms each
#: image is also compared at (a copy cropped by up to ~6% per side matches at one of them).
THUMBNAIL = 32
ZOOMS = (1.06, 1.12)
#: Similarity (normalised cross-correlation of thumbnails, best over the zooms) at and above
#: which two images are reported as near-duplicates. Measured on kermany224 (docs
#: "Trustworthy results"): the most similar distinct images reach 0.983; resized,
#: re-encoded (JPEG quality 50) and 3-6% cropped copies 0.993-0.9999.
NEAR_THRESHOLD = 0.99
#: For ``features=``: cosine similarity of centred backbone features from which a pair is
#: reported (measured: re-encoded copies reach only 0.61, so this finds close copies only).
FEATURE_THRESHOLD = 0.95
#: A difference between splits is flagged at this standardised mean difference ...
SHIFT_SMD = 0.5
#: ... when a two-sample KS test also gives a p-value below this.
SHIFT_P = 1e-3
_STATISTICS = ("intensity_mean", "intensity_std", "height", "width", "file_kb")


@dataclass
class DatasetCheck:
    """What :func:`check_dataset` found (each part a DataFrame).

    Parameters
    ----------
    images : DataFrame
        One row per image: ``path``, ``split``, ``label``, ``patient``, ``key`` (content
        hash) and the statistics (``intensity_mean``, ``intensity_std`` of the grey
        pixels in [0, 1], ``height``, ``width``, ``file_kb``).
    duplicates : DataFrame
        One row per pair ``i < j``: ``kind`` ("exact" or "near"), ``similarity`` (1 for
        exact), paths, splits, labels, ``across_splits``, ``label_conflict``.
    patient_leaks : DataFrame
        One row per patient with images in more than one split: ``patient``, ``splits``,
        ``n_images``.
    statistics : DataFrame
        Per split and label: ``n`` and the mean and standard deviation of each statistic.
    shifts : DataFrame
        Per label, statistic and pair of splits: ``smd``, ``ks_p``, ``flagged``.
    near_threshold : float or None, default=None
        The pixel near-duplicate threshold used (None: no pixel search).
    seconds : dict, default={}
        Time of each part (hashing, statistics, features, similarity search).
    """

    images: pd.DataFrame
    duplicates: pd.DataFrame
    patient_leaks: pd.DataFrame
    statistics: pd.DataFrame
    shifts: pd.DataFrame
    near_threshold: float | None = None
    seconds: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Summarise the findings: what, how many, and what to do.

        Returns
        -------
        DataFrame
            One row per finding, with columns ``finding``, ``count`` and ``advice``.
        """
        d = self.duplicates
        rows = []

        def add(finding, count, advice):
            rows.append({"finding": finding, "count": int(count), "advice": advice})

        exact = d[d.kind == "exact"] if len(d) else d
        near = d[d.kind == "near"] if len(d) else d
        add("exact duplicate pairs within a split",
            (~exact.across_splits).sum() if len(exact) else 0,
            "keep one copy, or group the copies (groups=) so they share a fold")
        add("exact duplicate pairs across splits",
            exact.across_splits.sum() if len(exact) else 0,
            "a test image is also a training image: remove it from one split")
        add("near-duplicate pairs within a split",
            (~near.across_splits).sum() if len(near) else 0,
            "look at them; group or remove copies")
        add("near-duplicate pairs across splits",
            near.across_splits.sum() if len(near) else 0,
            "look at them: a resized or re-encoded copy leaks like an exact one")
        add("duplicate pairs with different labels",
            d.label_conflict.sum() if len(d) else 0,
            "one of the labels is wrong, or the copy is not a copy")
        add("patients in more than one split", len(self.patient_leaks),
            "split by patient (StratifiedGroupKFold, groups=patient ids)")
        add("statistics that differ between splits",
            self.shifts.flagged.sum() if len(self.shifts) else 0,
            "a shortcut a model can learn; report results per split and check the images")
        return pd.DataFrame(rows)


def _image_facts(img: np.ndarray) -> tuple:
    """Statistics of one decoded image and its thumbnails (plain, then each zoom)."""
    from PIL import Image

    a = np.asarray(img)
    scale = float(np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else 1.0
    grey = (a.mean(-1) if a.ndim == 3 else a).astype(np.float32) / scale
    pil = Image.fromarray(grey, mode="F")
    h, w = grey.shape
    thumbs = []
    for zoom in (1.0, *ZOOMS):
        part = pil
        if zoom > 1:
            cw, ch = w / zoom, h / zoom
            left, top = (w - cw) / 2, (h - ch) / 2
            part = pil.crop((round(left), round(top), round(left + cw), round(top + ch)))
        t = np.asarray(part.resize((THUMBNAIL, THUMBNAIL), Image.BOX), np.float32).ravel()
        t = t - t.mean()
        norm = np.linalg.norm(t)
        thumbs.append(t / norm if norm > 0 else t)
    return float(grey.mean()), float(grey.std()), int(h), int(w), np.stack(thumbs)


def _as_column(value, n, name):
    if value is None:
        return np.full(n, None, dtype=object)
    value = np.asarray(value, dtype=object)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} images; pass one per image.")
    return value


def _normalised(F: np.ndarray, center: bool) -> np.ndarray:
    F = np.asarray(F, dtype=np.float32)
    if center:
        F = F - F.mean(0, keepdims=True)
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    return F / np.where(norms > 0, norms, 1)


def near_duplicate_pairs(features, threshold: float = FEATURE_THRESHOLD, *,
                         center: bool = True, variants=(), block: int = 1024) -> pd.DataFrame:
    """Every pair ``i < j`` of rows whose cosine similarity is at least ``threshold``.

    Exact (no index, no approximation): the similarity matrix is computed ``block`` rows at
    a time against all rows, so memory is ``block x n`` floats and time grows as ``n^2``
    dot products (measured in docs "Trustworthy results").

    Parameters
    ----------
    features : array of shape (n, d)
        One row per image (e.g. backbone features, or flattened thumbnails).
    threshold : float, default=FEATURE_THRESHOLD
        The cosine similarity from which a pair is reported.
    center : bool, default=True
        Subtract the mean row first (backbone features of chest X-rays share a large common
        component that hides their differences).
    variants : sequence of arrays of shape (n, d), default=()
        Other versions of each row (e.g. thumbnails of centre crops): a pair's similarity
        is the best of ``features[i] . v[j]`` and ``features[j] . v[i]`` over them and
        ``features[i] . features[j]``.
    block : int, default=1024
        Rows compared with all rows at a time (memory: ``block x n`` floats).

    Returns
    -------
    DataFrame
        Columns ``i``, ``j`` (``i < j``) and ``similarity``, by decreasing similarity.
    """
    F = np.asarray(features)
    if F.ndim != 2:
        raise ValueError(f"features must be a 2-D (n, d) array; got shape {F.shape}.")
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1]; got {threshold!r}.")
    F = _normalised(F, center)
    others = [_normalised(v, center) for v in variants]
    found_i, found_j, found_s = [], [], []
    n = len(F)
    for start in range(0, n, block):
        stop = min(start + block, n)
        S = F[start:stop] @ F.T
        for V in others:  # row i against a zoomed j; (j, i) comes in j's block
            np.maximum(S, F[start:stop] @ V.T, out=S)
        rows = np.arange(start, stop)
        S[rows - start, rows] = -2.0  # an image is not its own duplicate
        i, j = np.nonzero(S >= threshold)
        found_i.append(i + start)
        found_j.append(j)
        found_s.append(S[i, j])
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    pairs = pd.DataFrame({"i": np.minimum(i, j).astype(np.int64),
                          "j": np.maximum(i, j).astype(np.int64),
                          "similarity": np.concatenate(found_s).astype(np.float64)})
    pairs = pairs.groupby(["i", "j"], as_index=False)["similarity"].max()
    return pairs.sort_values(["similarity", "i"], ascending=[False, True], ignore_index=True)


def check_dataset(X, y=None, *, split=None, groups=None,
                  near_threshold: float | None = NEAR_THRESHOLD, features=None,
                  feature_threshold: float = FEATURE_THRESHOLD, n_jobs: int | None = None,
                  verbose: bool = False) -> DatasetCheck:
    """Check a data set for duplicates, near-duplicates, patient leaks and split shifts.

    Parameters
    ----------
    X : paths or array of images
        Every image of the study, all splits together (as for ``fit``).
    y : array-like of shape (n,), optional
        Labels (class names or codes): statistics and shifts are per label, and duplicates
        with different labels are marked. A multi-label matrix is taken row-wise as text.
    split : array-like of shape (n,), optional
        Which split each image belongs to (e.g. "train"/"test"): cross-split duplicates and
        patient leaks, and the shifts between splits.
    groups : array-like of shape (n,), optional
        Patient ids (patient leaks across splits). They must name patients across splits:
        ids numbered within each split collide without meaning anything.
    near_threshold : float or None, default=NEAR_THRESHOLD
        Pixel near-duplicates: the normalised cross-correlation of 32 x 32 grey thumbnails
        (best of the image as is and its centre zooms by 1.06 and 1.12) from which a pair
        is reported. None skips the search.
    features : array of shape (n, d), optional
        Backbone features (e.g. ``FeatureExtractorTransformer(memory=...)``'s, cached):
        pairs whose centred cosine similarity reaches ``feature_threshold`` are reported
        too (``kind="near (features)"``). They find close copies only: a JPEG re-encoding
        moved lite0's features to a cosine of 0.61 (measured), where thumbnails stayed at
        0.9998.
    feature_threshold : float, default=FEATURE_THRESHOLD
        The centred cosine similarity of ``features`` from which a pair is reported.
    n_jobs : int, optional
        Threads that decode the images (default: the cores this process may use).
    verbose : bool, default=False
        A progress bar over the images.

    Returns
    -------
    DatasetCheck
        The images with their statistics, the duplicate pairs, the patient leaks, the
        statistics per split and label and the shifts between splits.
    """
    source = check_images(X)
    n = len(source)
    split_col = _as_column(split, n, "split")
    patient = _as_column(groups, n, "groups")
    if y is None:
        labels = np.full(n, None, dtype=object)
    else:
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"y has {len(y)} entries for {n} images.")
        labels = (np.array([str(r.tolist()) for r in y], dtype=object) if y.ndim == 2
                  else y.astype(object))
    if features is not None:
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != n:
            raise ValueError(f"features must have one row per image ({n}); got shape "
                             f"{features.shape}.")
    for name, value in (("near_threshold", near_threshold),
                        ("feature_threshold", feature_threshold)):
        if value is not None and not -1 <= value <= 1:
            raise ValueError(f"{name} is a similarity in [-1, 1]; got {value!r}.")
    seconds = {}
    t = time.perf_counter()
    keys = source.keys()
    seconds["hash"] = time.perf_counter() - t

    t = time.perf_counter()
    facts = _decoded_facts(source, n_jobs, verbose)
    sizes = ([os.path.getsize(p) / 1024 for p in source.data] if source.kind == "paths"
             else [np.nan] * n)
    seconds["decode and statistics"] = time.perf_counter() - t
    images = pd.DataFrame({
        "path": source.data if source.kind == "paths" else np.arange(n),
        "split": split_col, "label": labels, "patient": patient, "key": keys,
        "intensity_mean": [f[0] for f in facts], "intensity_std": [f[1] for f in facts],
        "height": [f[2] for f in facts], "width": [f[3] for f in facts], "file_kb": sizes})

    found = [_exact_pairs(keys).assign(kind="exact")]
    if near_threshold is not None:
        t = time.perf_counter()
        thumbs = np.stack([f[4] for f in facts], axis=1)  # (1 + zooms, n, side^2)
        found.append(near_duplicate_pairs(thumbs[0], near_threshold, center=False,
                                          variants=list(thumbs[1:])).assign(kind="near"))
        seconds["near-duplicate search"] = time.perf_counter() - t
    if features is not None:
        t = time.perf_counter()
        found.append(near_duplicate_pairs(features, feature_threshold)
                     .assign(kind="near (features)"))
        seconds["feature search"] = time.perf_counter() - t
    pairs = pd.concat(found, ignore_index=True)
    # a pair is reported once, by the first (strictest) kind that found it
    pairs = pairs.drop_duplicates(["i", "j"], keep="first", ignore_index=True)
    return DatasetCheck(images=images, duplicates=_describe_pairs(pairs, images),
                        patient_leaks=_patient_leaks(images), statistics=_statistics(images),
                        shifts=_shifts(images), near_threshold=near_threshold,
                        seconds=seconds)


def _decoded_facts(source, n_jobs, verbose) -> list:
    from concurrent.futures import ThreadPoolExecutor

    from ._threads import thread_budget

    workers = n_jobs or max(1, thread_budget())
    with ThreadPoolExecutor(workers) as pool:  # decoding releases the GIL
        it = pool.map(lambda i: _image_facts(source.read(i)), range(len(source)))
        return list(_progress(it, verbose, "data-set check", len(source)))


def _progress(it, verbose, desc, total):
    if not verbose:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total)


def _exact_pairs(keys) -> pd.DataFrame:
    by_key: dict = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    rows = [(a, b) for members in by_key.values() if len(members) > 1
            for x, a in enumerate(members) for b in members[x + 1:]]
    return pd.DataFrame({"i": [r[0] for r in rows], "j": [r[1] for r in rows],
                         "similarity": np.ones(len(rows))}).astype(
        {"i": np.int64, "j": np.int64})


def _describe_pairs(pairs: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    cols = ["kind", "similarity", "i", "j", "path_i", "path_j", "split_i", "split_j",
            "label_i", "label_j", "across_splits", "label_conflict"]
    if not len(pairs):
        return pd.DataFrame(columns=cols).astype({"across_splits": bool,
                                                  "label_conflict": bool})
    i, j = pairs.i.to_numpy(int), pairs.j.to_numpy(int)
    out = pairs.assign(path_i=images.path.to_numpy()[i], path_j=images.path.to_numpy()[j],
                       split_i=images.split.to_numpy()[i], split_j=images.split.to_numpy()[j],
                       label_i=images.label.to_numpy()[i], label_j=images.label.to_numpy()[j])
    out["across_splits"] = [a is not None and a != b for a, b in zip(out.split_i, out.split_j)]
    out["label_conflict"] = [a is not None and a != b for a, b in zip(out.label_i, out.label_j)]
    return out[cols].reset_index(drop=True)


def _patient_leaks(images: pd.DataFrame) -> pd.DataFrame:
    known = images[images.patient.notna() & images.split.notna()]
    rows = []
    for pid, part in known.groupby("patient", sort=True):
        splits = sorted(map(str, part.split.unique()))
        if len(splits) > 1:
            rows.append({"patient": pid, "splits": ", ".join(splits), "n_images": len(part)})
    return pd.DataFrame(rows, columns=["patient", "splits", "n_images"])


def _statistics(images: pd.DataFrame) -> pd.DataFrame:
    keyed = images.assign(split=images.split.fillna("all").astype(str),
                          label=images.label.fillna("all").astype(str))
    agg = keyed.groupby(["split", "label"], sort=True)[list(_STATISTICS)].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg.insert(0, "n", keyed.groupby(["split", "label"], sort=True).size())
    return agg.reset_index()


def _shifts(images: pd.DataFrame) -> pd.DataFrame:
    from scipy.stats import ks_2samp

    cols = ["label", "statistic", "split_a", "split_b", "mean_a", "mean_b", "smd", "ks_p",
            "flagged"]
    if images.split.isna().all():
        return pd.DataFrame(columns=cols)
    keyed = images.assign(label=images.label.fillna("all").astype(str),
                          split=images.split.astype(str))
    splits = sorted(keyed.split.unique())
    rows = []
    for label, part in keyed.groupby("label", sort=True):
        for x, a in enumerate(splits):
            for b in splits[x + 1:]:
                va, vb = part[part.split == a], part[part.split == b]
                if len(va) < 2 or len(vb) < 2:
                    continue
                for stat in _STATISTICS:
                    sa, sb = va[stat].to_numpy(float), vb[stat].to_numpy(float)
                    if not (np.isfinite(sa).all() and np.isfinite(sb).all()):
                        continue
                    pooled = np.sqrt((sa.var(ddof=1) + sb.var(ddof=1)) / 2)
                    diff = sb.mean() - sa.mean()
                    smd = diff / pooled if pooled > 0 else (0.0 if diff == 0 else np.inf)
                    p = ks_2samp(sa, sb).pvalue if pooled > 0 else (1.0 if diff == 0 else 0.0)
                    rows.append({"label": label, "statistic": stat, "split_a": a,
                                 "split_b": b, "mean_a": sa.mean(), "mean_b": sb.mean(),
                                 "smd": float(smd), "ks_p": float(p),
                                 "flagged": bool(abs(smd) >= SHIFT_SMD and p < SHIFT_P)})
    return pd.DataFrame(rows, columns=cols)

"""The careful protocol inside ``fit``: which rows train, validate and weigh the loss.

Everything here is computed from the rows ``fit`` receives, never from the outer fold:
target encoding and checks, the ``train_size`` subsample (the studies' s), the inner
validation split (for early stopping and checkpoint choice) carved from that subsample, an
optional resampling of the training rows (``sampler``), and class weights from the training
rows. With ``groups`` (patient ids) the subsample and the inner split keep each group on one
side. :func:`fit_rows` does it all and returns a
:class:`FitRows`; :class:`skcxr.PretrainedCNNClassifier` calls it with its parameters, and
it is public so that a protocol can be inspected (which rows validated a fitted model?)
without fitting.

Examples
--------
>>> import numpy as np
>>> from skcxr.protocol import fit_rows
>>> rows = fit_rows(np.array([0] * 20 + [1] * 60), train_size=40, validation_fraction=0.25,
...                 class_weight="balanced", seed=0)
>>> len(rows.train), len(rows.valid), [round(float(w), 2) for w in rows.class_weight]
(30, 10, [2.14, 0.65])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import type_of_target

from ._state import warn_once
from ._validation import INVALID, NONE, VALID, Check, Fraction, Interval, Options, invalid, validate

__all__ = [
    "FitRows",
    "UNCERTAIN_POLICIES",
    "fit_rows",
    "resolve_uncertain",
    "stratified_take",
]


def _weights_dict(value):
    if not isinstance(value, dict):
        return INVALID
    bad = {k: v for k, v in value.items()
           if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v < 0}
    return invalid(f"weights must be finite numbers >= 0, not {bad}") if bad else VALID


def _sampler(value):
    if hasattr(value, "fit_resample") and hasattr(value, "get_params"):
        return VALID
    return INVALID


#: The protocol parameters' allowed values (the classifier's and :func:`fit_rows`'s).
PROTOCOL_CONSTRAINTS = {
    "sampler": [NONE, Check(_sampler, "an imbalanced-learn sampler (with fit_resample)")],
    "train_size": [NONE, Interval("int", 1), Fraction("real", 0, 1, closed="right")],
    "validation_fraction": [Interval("real", 0, 1, closed="left")],
    "class_weight": [NONE, Options("balanced"),
                     Check(_weights_dict, "a dict of class -> weight >= 0")],
}


@dataclass(frozen=True)
class FitRows:
    """The rows of one ``fit``: which train, which validate, and their loss weights.

    Parameters
    ----------
    classes : ndarray
        Class labels (multi-label: ``arange(n_labels)``).
    task : {"binary", "multiclass", "multilabel"}
        The target type.
    y : ndarray
        Encoded targets of every row ``fit`` received: codes ``0..k-1``, or the float32 0/1
        indicator matrix, where NaN is a missing label (left out of the loss, the class
        weights, the inner split's stratification, calibration, thresholds and scores).
    train, valid : ndarray of int
        Row indices that train and that form the inner validation split (sorted; disjoint;
        together the ``train_size`` subsample; with ``groups``, no group on both sides).
        With a ``sampler``, ``train`` is what the sampler returned: a row may occur several
        times (oversampling) or not at all (undersampling), never a ``valid`` row.
    weights : ndarray of float32
        Loss weight of every row: ``sample_weight`` times its class weight (single-label).
    class_weight : ndarray or None
        Per class, or for multi-label per label the BCE ``pos_weight``; computed from the
        ``train`` rows only.
    rare_labels : dict or None
        Multi-label: the label columns with fewer than 5 positive ``"training"`` and
        ``"validation"`` rows (warned).
    """

    classes: np.ndarray
    task: str
    y: np.ndarray
    train: np.ndarray
    valid: np.ndarray
    weights: np.ndarray
    class_weight: np.ndarray | None
    rare_labels: dict | None = None

    @property
    def n_outputs(self) -> int:
        """Outputs of the network: classes, or labels."""
        return self.y.shape[1] if self.task == "multilabel" else len(self.classes)

    @property
    def pos_weight(self) -> np.ndarray | None:
        """Multi-label class weights, which weigh positives in the loss, not rows."""
        return self.class_weight if self.task == "multilabel" else None


def fit_rows(y, n: int | None = None, *, sample_weight=None, train_size=None,
             validation_fraction=0.1, class_weight=None, groups=None, sampler=None,
             seed: int = 0) -> FitRows:
    """The careful protocol for the rows ``fit`` received.

    Parameters
    ----------
    y : array-like of shape (n,) or (n, n_labels)
        Class labels, or a 0/1 indicator matrix (multi-label), which may have missing
        labels (NaN); uncertain ones (-1) must be resolved first (:func:`resolve_uncertain`).
    n : int, optional
        The number of images (checked against ``len(y)``).
    sample_weight : array-like of shape (n,), optional
        Per-row loss weights, as :meth:`skcxr.PretrainedCNNClassifier.fit`'s.
    train_size : int, float or None, default=None
        As :class:`skcxr.PretrainedCNNClassifier`'s.
    validation_fraction : float, default=0.1
        As :class:`skcxr.PretrainedCNNClassifier`'s.
    class_weight : None, "balanced" or dict, default=None
        As :class:`skcxr.PretrainedCNNClassifier`'s.
    groups : array-like of shape (n,), optional
        A group per row (patient id): the subsample and the inner split take whole groups,
        so no patient has images on both sides of the early-stopping split.
    sampler : imbalanced-learn sampler or None, default=None
        As :class:`skcxr.PretrainedCNNClassifier`'s.
    seed : int
        Seeds the subsample (``seed``) and the inner split (``seed + 1``).

    Returns
    -------
    FitRows
        The rows that train and validate, encoded targets and loss weights.
    """
    validate({"train_size": train_size, "validation_fraction": validation_fraction,
              "class_weight": class_weight, "sampler": sampler}, PROTOCOL_CONSTRAINTS,
             "fit_rows")
    if y is None:
        raise ValueError("y is required: PretrainedCNNClassifier is supervised.")
    classes, y_enc, task = encode_targets(y, len(y) if n is None else n)
    weights = check_sample_weight(sample_weight, len(y_enc))
    groups = check_groups(groups, len(y_enc))
    train, valid = split_rows(y_enc, task, train_size, validation_fraction, seed, groups=groups)
    rare = rare_labels(y_enc, train, valid) if task == "multilabel" else None
    if rare:
        _warn_rare_labels(rare)
    if sampler is not None:
        train = resample_rows(sampler, train, y_enc, task, seed)
    names = [str(c) for c in y.columns] if hasattr(y, "columns") else None
    cw = class_weights(class_weight, y_enc[train], task, classes, label_names=names)
    if cw is not None and task != "multilabel":
        weights = weights * cw[y_enc]
    return FitRows(classes, task, y_enc, train, valid, weights.astype(np.float32), cw, rare)


def encode_targets(y, n: int):
    """Check ``y`` and encode it: returns ``(classes, y_encoded, target_type)``.

    Binary/multiclass labels (any sortable type) become codes 0..k-1; a 0/1 indicator
    matrix is multi-label. Every check that can fail runs here, before any training.
    """
    if y is None:
        raise ValueError("y is required: PretrainedCNNClassifier is supervised.")
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if len(y) != n:
        raise ValueError(f"X and y have different lengths: {n} images but {len(y)} targets.")
    if y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind in "iuf":
        partial = _partial_indicator(y)
        if partial is not None:
            return partial
    if y.dtype.kind == "f" and np.isnan(y).any():
        rows = int(np.isnan(y.reshape(len(y), -1)).any(axis=1).sum())
        raise ValueError(f"y contains NaN in {rows} row(s); drop those rows first (missing "
                         "labels are allowed in a multi-label 0/1 matrix only).")
    if y.dtype == object and pd.isna(y).any():
        raise ValueError("y contains missing values (None/NaN); drop those rows first.")
    if y.dtype == object:
        types = sorted({type(v).__name__ for v in y.ravel()})
        if len(types) > 1:
            raise ValueError(f"y mixes label types {types}; use one type for every label, e.g. "
                             "y = np.asarray(y).astype(str).")
    kind = type_of_target(y)
    if kind == "multilabel-indicator":
        y = y.astype(np.float32)
        empty = np.flatnonzero(y.sum(0) == 0)
        if len(empty):
            raise ValueError(
                f"Multi-label y has label column(s) {empty.tolist()} with no positive "
                "example; drop those columns (nothing can be learned from them).")
        return np.arange(y.shape[1]), y, "multilabel"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D labels or a 0/1 indicator matrix; got shape {y.shape}"
                         f" ({kind}).")
    if kind not in ("binary", "multiclass"):
        what = ("Continuous targets are not supported (this is a classifier)"
                if kind.startswith("continuous") else "Pass class labels (ints or strings)")
        raise ValueError(f"y must hold class labels; got a {kind} target. {what}.")
    classes, y_enc = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y has a single class ({classes[0]!r}); a classifier needs at least 2.")
    return classes, y_enc.astype(np.int64), ("binary" if len(classes) == 2 else "multiclass")


#: What an uncertain label (-1, as CheXpert and MIMIC-CXR ship them) becomes: left out of
#: the loss and every score (CheXpert's U-Ignore), a negative (U-Zeros), a positive (U-Ones)
UNCERTAIN_POLICIES = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}


def resolve_uncertain(y, policy: str):
    """A multi-label matrix with its uncertain labels (-1) resolved by ``policy``.

    Parameters
    ----------
    y : array-like or DataFrame of shape (n, n_labels)
        1 (positive), 0 (negative), -1 (uncertain) and NaN (missing: not mentioned).
    policy : {"ignore", "zeros", "ones"}
        What -1 becomes: NaN, left out of the loss, class weights, the inner split,
        calibration, thresholds and every metric (CheXpert's U-Ignore); 0 (U-Zeros); 1
        (U-Ones).

    Returns
    -------
    ndarray or DataFrame (as given) of float32
        The matrix with values 0, 1 and NaN.
    """
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"policy must be one of {sorted(UNCERTAIN_POLICIES)}; got {policy!r}.")
    frame = y if isinstance(y, pd.DataFrame) else None
    values = np.asarray(y.to_numpy() if frame is not None else y, dtype=np.float32).copy()
    bad = ~np.isnan(values) & ~np.isin(values, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(f"y holds values other than 1, 0, -1 and NaN (e.g. "
                         f"{values[bad][:3].tolist()}).")
    values[values == -1] = UNCERTAIN_POLICIES[policy]
    if frame is not None:
        return pd.DataFrame(values, index=frame.index, columns=frame.columns)
    return values


def _partial_indicator(y: np.ndarray):
    """``(classes, y, "multilabel")`` for a 0/1 matrix with missing (NaN) labels, None for
    a matrix without any (the usual checks decide), an error for uncertain (-1) labels."""
    yf = y.astype(np.float32)
    missing = np.isnan(yf)
    if (yf == -1).any() and np.isin(yf[~missing], (-1.0, 0.0, 1.0)).all():
        raise ValueError(
            f"y holds {int((yf == -1).sum())} uncertain label(s) (-1). Choose what they "
            "mean: skcxr.protocol.resolve_uncertain(y, 'ignore' | 'zeros' | 'ones') "
            "(CheXpert's U-Ignore, U-Zeros, U-Ones), or load_chexpert_csv(..., "
            "uncertain=...).")
    if not missing.any() or not np.isin(yf[~missing], (0.0, 1.0)).all():
        return None
    empty = np.flatnonzero(np.nansum(yf, axis=0) == 0)
    if len(empty):
        raise ValueError(
            f"Multi-label y has label column(s) {empty.tolist()} with no observed positive "
            "example; drop those columns (nothing can be learned from them).")
    return np.arange(y.shape[1]), yf, "multilabel"


def check_sample_weight(sample_weight, n: int) -> np.ndarray:
    """``sample_weight`` as a float32 array of ``n`` finite, non-negative weights."""
    if sample_weight is None:
        return np.ones(n, dtype=np.float32)
    w = np.asarray(sample_weight, dtype=np.float32)
    if w.ndim == 0:
        return np.full(n, float(w), dtype=np.float32)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},); got {w.shape}.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative.")
    if w.sum() == 0:
        raise ValueError("sample_weight sums to 0: no row would count in the loss.")
    return w


def check_groups(groups, n: int):
    """``groups`` as a 1-D array of ``n`` non-missing ids, or None."""
    if groups is None:
        return None
    g = np.asarray(groups.to_numpy() if hasattr(groups, "to_numpy") else groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must be a 1-D array of {n} group ids (one per image); got "
                         f"shape {g.shape}.")
    if pd.isna(g).any():
        raise ValueError(f"groups has {int(pd.isna(g).sum())} missing id(s); give every image "
                         "its patient (or any group) id.")
    return g


def split_rows(y, task: str, train_size, validation_fraction, seed: int, groups=None):
    """Indices ``(train, valid)``: the ``train_size`` subsample, then the inner split of it.

    Both draws are seeded and stratified: single-label rows without groups by
    ``train_test_split``; with ``groups`` (whole groups) or multi-label targets (per label)
    by :func:`stratified_take`. With groups, sizes are as close as whole groups allow.
    """
    n = len(y)
    idx = np.arange(n)
    greedy = groups is not None or task == "multilabel"
    stratify = y if task != "multilabel" else None
    size = train_size
    if size is not None:
        if isinstance(size, (float, np.floating)):  # a fraction in (0, 1] (validated)
            size = int(round(size * n))
        if size > n:
            raise ValueError(
                f"train_size={train_size} asks for {size} rows but fit received only {n}.")
        n_classes = len(np.unique(y)) if task != "multilabel" else 1
        if size < 2 * n_classes:
            raise ValueError(
                f"train_size={train_size} gives {size} rows, too few for {n_classes} classes: "
                f"use at least {2 * n_classes}.")
        if size < n:
            if greedy:
                idx, _ = stratified_take(idx, size, y, groups, seed, "train_size")
            else:
                idx, _ = _stratified_split(idx, size, stratify, seed, "train_size")
    if not validation_fraction:
        return idx, np.array([], dtype=int)
    n_valid = max(1, int(round(validation_fraction * len(idx))))
    if greedy:
        valid, train = stratified_take(idx, n_valid, y, groups, seed + 1, "validation_fraction")
        return train, valid
    sub_strat = stratify[idx] if stratify is not None else None
    if sub_strat is not None:
        n_valid = max(n_valid, len(np.unique(sub_strat)))
    valid, train = _stratified_split(idx, n_valid, sub_strat, seed + 1, "validation_fraction")
    return train, valid


def stratified_take(idx, n_first: int, y, groups, seed: int, param: str):
    """Split ``idx`` into (about ``n_first`` rows, the rest) taking whole groups (or single
    rows when ``groups`` is None), stratified by class, or per label for multi-label ``y``.

    Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) over groups: the
    class or label with the fewest positives left is placed first, each of its units
    (groups) going to the side that still wants most of it (then most rows; ties seeded
    random); units without positives fill the sides' remaining row counts.

    Parameters
    ----------
    idx : array-like of int
        The rows to split.
    n_first : int
        About how many rows the first part takes.
    y : ndarray of shape (n,) or (n, k)
        Class codes, or the multi-label matrix (NaN: missing, counted as no positive).
    groups : ndarray of shape (n,) or None
        Group ids: whole groups go to one side.
    seed : int
        Seeds the ties.
    param : str
        The parameter the split is for (named in errors).

    Returns
    -------
    first, rest : ndarray of int
        The two parts of ``idx``, each sorted.
    """
    idx = np.asarray(idx)
    yy = y[idx]
    counts = (np.nan_to_num(yy.astype(np.float64)) if yy.ndim == 2  # a missing label: 0
              else np.eye(int(y.max()) + 1)[yy])  # per row: one-hot class or label positives
    units = (np.arange(len(idx)) if groups is None
             else np.unique(groups[idx], return_inverse=True)[1])
    n_units = int(units.max()) + 1
    if n_units < 2:
        raise ValueError(
            f"Cannot split {len(idx)} rows for {param}: they all belong to one group. Give "
            f"more groups, or set {param} so that no split is needed"
            + (" (validation_fraction=0)." if param == "validation_fraction" else "."))
    vec = np.zeros((n_units, 1 + counts.shape[1]))
    np.add.at(vec, units, np.c_[np.ones(len(idx)), counts])
    share = np.array([n_first, len(idx) - n_first]) / len(idx)
    want = share[:, None] * vec.sum(0)[None, :]  # (side, rows + labels) still wanted
    rng = np.random.default_rng(seed)
    side = np.full(n_units, -1)
    left = rng.permutation(n_units)
    while len(left):
        pos = vec[left, 1:]
        alive = pos.sum(0) > 0
        if alive.any():
            j = np.flatnonzero(alive)[np.argmin(pos.sum(0)[alive])]
            these = left[pos[:, j] > 0]
        else:
            j, these = None, left
        for u in these:
            key = want[:, 1 + j] if j is not None else want[:, 0]
            best = np.flatnonzero(key == key.max())
            if len(best) > 1:
                rows = want[best, 0]
                best = best[rows == rows.max()]
            s = int(best[0] if len(best) == 1 else rng.choice(best))
            side[u] = s
            want[s] -= vec[u]
        left = left[side[left] < 0]
    if (side == 0).all() or (side == 1).all():  # at least one unit on each side
        side[np.argmin(vec[:, 0])] = 1 - side[0]
    take = side[units] == 0
    return np.sort(idx[take]), np.sort(idx[~take])


#: Fewer positive rows than this on a side of a multi-label split: warned, listed in
#: ``FitRows.rare_labels``.
RARE_POSITIVES = 5


def rare_labels(y, train, valid) -> dict:
    """Multi-label: ``{"training": [...], "validation": [...]}``, the label columns with fewer
    than :data:`RARE_POSITIVES` positive rows on that side."""
    return {name: np.flatnonzero(np.nansum(y[rows], axis=0) < RARE_POSITIVES).tolist()
            if len(rows) else []
            for name, rows in (("training", train), ("validation", valid))}


def _warn_rare_labels(rare: dict) -> None:
    """Once per process (a grid search would warn at every fit, since scikit-learn's
    parallel helpers reset the warnings registry); each fit's labels are in its
    ``fit_rows_.rare_labels``."""
    if any(rare.values()):
        warn_once(
            "rare-labels",
            f"Multi-label y: some labels have fewer than {RARE_POSITIVES} positive rows in the "
            "training or validation rows of a fit (fitted estimators list them in "
            "fit_rows_.rare_labels); their early stopping and scores are noise. More data, "
            "fewer labels, or a larger validation_fraction help. (Warned once per process.)",
            stacklevel=3)


def resample_rows(sampler, train, y, task: str, seed: int):
    """The training rows after ``sampler`` (cloned, seeded when it has a ``random_state`` of
    None), which resamples row *indices*: e.g. ``RandomOverSampler`` or
    ``RandomUnderSampler``. Runs after the inner split, so no validation row is ever
    duplicated into training."""
    from sklearn.base import clone

    if task == "multilabel":
        raise ValueError("sampler= works on single-label targets; for multi-label y use "
                         "class_weight='balanced' (per-label positive weights).")
    sampler = clone(sampler)
    if "random_state" in sampler.get_params() and sampler.get_params()["random_state"] is None:
        sampler.set_params(random_state=seed)
    ids, _ = sampler.fit_resample(train.reshape(-1, 1).astype(np.float64), y[train])
    ids = np.asarray(ids).ravel()
    rows = np.rint(ids).astype(np.int64)
    if not np.array_equal(rows, ids) or not np.isin(rows, train).all():
        raise ValueError(
            f"sampler={type(sampler).__name__} made new samples instead of selecting rows; "
            "images have no feature vector to interpolate. Use a sampler that selects rows: "
            "RandomOverSampler, RandomUnderSampler, or imbalanced-learn's other under-samplers "
            "that keep original rows.")
    return np.sort(rows)


def class_weights(class_weight, y_train, task: str, classes, label_names=None):
    """Loss weights from the training rows: per class, or per-label ``pos_weight``.

    A multi-label dict names labels by column index, or by column name when ``y`` was a
    DataFrame (``label_names``); any other key is an error, never silently ignored.
    """
    cw = class_weight
    if cw is None:
        return None
    if task == "multilabel":
        pos = np.nansum(y_train, axis=0)  # missing labels count on neither side
        if cw == "balanced":
            observed = (~np.isnan(y_train)).sum(0)
            return ((observed - pos) / np.maximum(pos, 1)).astype(np.float32)
        n_labels = y_train.shape[1]
        index = {}
        for key in cw:
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool) \
                    and 0 <= key < n_labels:
                index[key] = int(key)
            elif label_names is not None and str(key) in label_names \
                    and not isinstance(key, (int, np.integer)):
                index[key] = label_names.index(str(key))
            else:
                known = f"label names {label_names} or " if label_names else ""
                raise ValueError(
                    f"class_weight key {key!r} names no label of this multi-label y; use "
                    f"{known}column indices 0..{n_labels - 1}."
                    + ("" if label_names else " (Label names work when y is a DataFrame.)"))
        w = np.ones(n_labels, dtype=np.float32)
        for key, j in index.items():
            w[j] = float(cw[key])
        return w
    codes = np.arange(len(classes))
    if cw == "balanced":
        present = np.unique(y_train)
        w = np.ones(len(codes), dtype=np.float32)
        w[present] = compute_class_weight("balanced", classes=present, y=y_train)
        return w
    unknown = set(cw) - set(classes.tolist())
    if unknown:
        raise ValueError(f"class_weight names unknown classes {sorted(unknown)}; classes "
                         f"are {classes.tolist()}.")
    return np.array([float(cw.get(c, 1.0)) for c in classes], dtype=np.float32)


def _stratified_split(idx, n_first, stratify, seed, param):
    """Split ``idx`` into (n_first rows, the rest), stratified when possible."""
    try:
        first, rest = train_test_split(idx, train_size=n_first, stratify=stratify,
                                       random_state=seed % (2**32))
    except ValueError as exc:
        raise ValueError(
            f"Cannot make a stratified split of {len(idx)} rows into {n_first} and "
            f"{len(idx) - n_first} for {param}: {exc} Use more rows, a different {param}, or "
            "validation_fraction=0."
        ) from None
    return np.sort(first), np.sort(rest)

"""Data loaders returning scikit-learn ``Bunch`` objects of image paths and targets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .images import SUPPORTED_EXTENSIONS

__all__ = [
    "CHEXPERT_METADATA",
    "kermany_patient_ids",
    "load_chexpert_csv",
    "load_image_folder",
    "load_nih_csv",
    "load_sample_cxr",
]

_SAMPLE_DIR = Path(__file__).parent / "data" / "kermany_sample"

_SAMPLE_DESCR = """\
Kermany pediatric chest X-ray sample (bundled with skcxr)
=========================================================

300 chest X-rays of children aged 1-5 from Guangzhou Women and Children's Medical Center:
100 NORMAL and 200 PNEUMONIA (bacterial and viral; the file name says which), one image per
patient, drawn (seed 0) from the training split of Kermany et al. and downsized to 160x160
grey JPEG. Targets: 0 = NORMAL, 1 = PNEUMONIA. ``groups`` holds each image's patient id
(:func:`kermany_patient_ids`; unique here, since the sample keeps one image per patient).

Source: Kermany, Zhang, Goldbaum, "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray
Images for Classification", Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (2018).
Licence: CC BY 4.0. Cite the source when you use these images.

It is a demonstration and test sample: for results worth reporting use the full data set.
"""


def load_image_folder(root, *, extensions=SUPPORTED_EXTENSIONS, return_X_y=False, descr=None):
    """Load a class-folder layout (``root/<class>/<image>``), as torchvision's ImageFolder.

    Parameters
    ----------
    root : str or path
        Directory with one sub-directory per class. Classes are sorted by name and coded
        0..n_classes-1; images are sorted by path within each class.
    extensions : tuple of str, default=all supported image extensions
        File extensions (lower case, with the dot) to include.
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.
    descr : str, default=None
        Text for the Bunch's ``DESCR``.

    Returns
    -------
    data : Bunch
        ``data`` (object array of paths, usable as ``X`` by every skcxr estimator),
        ``target`` (int array), ``target_names`` (class folder names), ``filenames``
        (same as ``data``), ``groups``, ``DESCR``. ``groups`` holds patient ids where the
        file names define them: when every name follows the Kermany naming
        (``person123_...``, ``IM-0115-...``, ``NORMAL2-IM-...``), the ids of
        :func:`kermany_patient_ids`; otherwise None (pass your own ids to ``fit`` and to
        grouped splitters).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder root {str(root)!r} does not exist.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{str(root)!r} has no class sub-directories; expected root/<class>/<image> files."
        )
    paths, target = [], []
    for code, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in extensions
        )
        paths += [os.fspath(p) for p in files]
        target += [code] * len(files)
    if not paths:
        raise ValueError(f"No image files with extensions {extensions} under {str(root)!r}.")
    data = np.array(paths, dtype=object)
    target = np.array(target, dtype=np.int64)
    if return_X_y:
        return data, target
    kermany = all(_KERMANY_NAME.match(Path(p).name) for p in paths)
    return Bunch(
        data=data,
        target=target,
        target_names=np.array(classes, dtype=object),
        filenames=data,
        groups=kermany_patient_ids(data) if kermany else None,
        DESCR=descr or f"Images from the class folders of {os.fspath(root)}.",
    )


_KERMANY_NAME = re.compile(r"person\d+_|(?:NORMAL2-)?IM-\d+")


def kermany_patient_ids(paths) -> np.ndarray:
    """Patient ids of Kermany chest X-rays, read from their file names.

    Several Kermany images can show one patient, and cross-validation folds that split a
    patient's images between training and test are optimistic: pass these ids as ``groups``
    to ``StratifiedGroupKFold`` / ``GroupKFold``. The rule:

    * ``person123_bacteria_456.jpeg``, ``person123_virus_789.jpeg`` (PNEUMONIA): ``person123``;
    * ``IM-0115-0001.jpeg``, ``IM-0115-0001-0002.jpeg`` and ``NORMAL2-IM-0115-0001.jpeg``
      (NORMAL): ``IM-0115``. The two NORMAL series share their numbers; whether a number means
      the same patient in both is not documented, so they are grouped together (grouping more
      than necessary never leaks; grouping less can);
    * any other name: its file name without extension (a group of its own).

    Parameters
    ----------
    paths : iterable of str or path-like
        Image paths (only the file names are used).

    Returns
    -------
    groups : ndarray of str, shape (n_images,)
        A patient id per image, for ``groups=`` and grouped splitters.

    Examples
    --------
    >>> from skcxr.datasets import kermany_patient_ids
    >>> kermany_patient_ids(["a/person7_virus_13.jpeg", "b/NORMAL2-IM-0115-0001.jpeg",
    ...                      "c/IM-0115-0002-0001.jpeg", "d/scan.png"]).tolist()
    ['person7', 'IM-0115', 'IM-0115', 'scan']
    """
    ids = []
    for p in paths:
        name = Path(os.fspath(p)).name
        m = re.match(r"(person\d+)_", name) or re.match(r"(?:NORMAL2-)?(IM-\d+)", name)
        ids.append(m.group(1) if m else Path(name).stem)
    return np.array(ids, dtype=object)


def load_sample_cxr(*, return_X_y=False, as_arrays=False):
    """Load the bundled sample of 300 Kermany chest X-rays (NORMAL vs PNEUMONIA).

    Parameters
    ----------
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.
    as_arrays : bool, default=False
        Return the images as a ``(300, 160, 160)`` uint8 array instead of paths.

    Returns
    -------
    data : Bunch
        ``data`` (paths, or images if ``as_arrays``), ``target`` (0 = NORMAL,
        1 = PNEUMONIA), ``target_names``, ``filenames``, ``groups`` (patient ids,
        :func:`kermany_patient_ids`), ``DESCR`` (provenance, licence).

    Examples
    --------
    >>> from skcxr.datasets import load_sample_cxr
    >>> cxr = load_sample_cxr()
    >>> cxr.data.shape, list(cxr.target_names)
    ((300,), ['NORMAL', 'PNEUMONIA'])
    """
    bunch = load_image_folder(_SAMPLE_DIR, descr=_SAMPLE_DESCR)
    bunch.groups = kermany_patient_ids(bunch.filenames)
    if as_arrays:
        from .images import read_image

        bunch.data = np.stack([read_image(p) for p in bunch.filenames])
    if return_X_y:
        return bunch.data, bunch.target
    return bunch


def load_nih_csv(csv_path, *, root=None, label_column="finding_labels", sep="|",
                 path_column="path", group_column="patient_id"):
    """Load an NIH ChestX-ray14-style label file as a multi-label problem.

    Parameters
    ----------
    csv_path : str or path
        CSV with one row per image: an image path column (relative to ``root``) and a
        column of ``sep``-separated findings (``"Effusion|Infiltration"``, ``"No Finding"``).
    root : str or path, default=None
        Directory the paths are relative to; defaults to the CSV's directory.
    label_column, sep, path_column, group_column : str
        Column names and the findings separator.

    Returns
    -------
    data : Bunch
        ``data`` (paths), ``target`` (``(n, n_labels)`` 0/1 indicator matrix, for
        :class:`~skcxr.PretrainedCNNClassifier`'s multi-label mode), ``target_names``
        (labels, sorted), ``groups`` (patient ids, for ``GroupKFold`` / patient-grouped
        splits: images of one patient must not straddle folds), ``frame`` (the CSV),
        ``DESCR``.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    frame = pd.read_csv(csv_path)
    for col in (path_column, label_column):
        if col not in frame:
            raise ValueError(f"{csv_path} has no column {col!r}; columns: {list(frame.columns)}.")
    empty = np.flatnonzero(frame[path_column].isna().to_numpy()
                           | (frame[path_column].astype(str).str.strip() == "").to_numpy())
    if len(empty):
        raise ValueError(
            f"{csv_path}: column {path_column!r} is empty in {len(empty)} row(s) (first data "
            f"rows {(empty[:5] + 2).tolist()}, counting the header as line 1); fill in or drop "
            "those rows.")
    root = Path(root) if root is not None else csv_path.parent
    findings = frame[label_column].fillna("").astype(str).str.split(sep)
    names = sorted({f.strip() for row in findings for f in row if f.strip()})
    target = np.array([[int(n in {f.strip() for f in row}) for n in names] for row in findings],
                      dtype=np.int64)
    data = np.array([os.fspath(root / str(p)) for p in frame[path_column]], dtype=object)
    groups = frame[group_column].to_numpy() if group_column in frame else None
    return Bunch(data=data, target=target, target_names=np.array(names, dtype=object),
                 groups=groups, frame=frame, filenames=data,
                 DESCR=f"Multi-label chest X-rays from {os.fspath(csv_path)}.")


#: The columns of a CheXpert-format CSV that describe the image, not a finding.
CHEXPERT_METADATA = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def load_chexpert_csv(csv_path, *, root=None, labels=None, uncertain="ignore", blank="nan"):
    """Load a CheXpert-format label file (CheXpert, MIMIC-CXR-JPG's CheXpert labels) as a
    multi-label problem with missing and uncertain labels.

    Each finding column holds 1 (positive), 0 (negative), -1 (uncertain) or nothing (not
    mentioned in the report). ``PretrainedCNNClassifier`` leaves a missing label (NaN) out
    of the loss, the class weights, the inner split's stratification, calibration,
    thresholds and every metric, so what -1 and a blank become is the choice made here.

    Parameters
    ----------
    csv_path : str or path
        CSV with a ``Path`` column, the :data:`CHEXPERT_METADATA` columns it has, and one
        column per finding.
    root : str or path, default=None
        Directory the paths are relative to. Default: the CSV's directory, or its parent
        when the paths start with the CSV directory's name (CheXpert's
        ``CheXpert-v1.0-small/train.csv`` lists ``CheXpert-v1.0-small/train/...``).
    labels : sequence of str, default=None
        The finding columns to load, in this order; default every column that is not
        metadata.
    uncertain : {"ignore", "zeros", "ones"} or dict, default="ignore"
        What an uncertain label (-1) becomes: NaN, left out (CheXpert's U-Ignore), 0
        (U-Zeros) or 1 (U-Ones); a dict gives a policy per finding (others: "ignore"), as
        the CheXpert paper chose per finding.
    blank : {"nan", "zeros"}, default="nan"
        What a blank (not mentioned) becomes: NaN, left out, or 0, the reading of the
        CheXpert labeller (a finding not mentioned is absent).

    Returns
    -------
    data : Bunch
        ``data`` (paths), ``target`` (``(n, n_labels)`` float32 matrix of 0, 1 and NaN),
        ``target_names``, ``groups`` (patient ids from the ``patientNNNNN`` path component,
        else None), ``frame`` (the CSV, plus ``sex``, ``age``, ``view`` (AP/PA) and
        ``frontal_lateral`` columns for :func:`skcxr.evaluation.subgroup_metrics`),
        ``DESCR``.
    """
    import pandas as pd

    from .protocol import UNCERTAIN_POLICIES, resolve_uncertain

    csv_path = Path(csv_path)
    frame = pd.read_csv(csv_path)
    if "Path" not in frame:
        raise ValueError(f"{csv_path} has no 'Path' column; columns: {list(frame.columns)}. "
                         "Is it a CheXpert-format label file?")
    findings = [c for c in frame.columns if c not in CHEXPERT_METADATA]
    names = list(findings if labels is None else labels)
    unknown = [n for n in names if n not in findings]
    if unknown or not names:
        raise ValueError(f"labels {unknown or names} are not finding columns of {csv_path}; "
                         f"its findings are {findings}.")
    policies = uncertain if isinstance(uncertain, dict) else dict.fromkeys(names, uncertain)
    bad = {k: v for k, v in policies.items() if k not in names or v not in UNCERTAIN_POLICIES}
    if bad:
        raise ValueError(f"uncertain={uncertain!r}: use one of {sorted(UNCERTAIN_POLICIES)}, or "
                         f"a dict of finding -> policy over the findings {names}; got {bad}.")
    if blank not in ("nan", "zeros"):
        raise ValueError(f"blank must be 'nan' or 'zeros'; got {blank!r}.")
    values = frame[names].apply(pd.to_numeric, errors="coerce")
    odd = frame[names].notna() & (values.isna() | ~values.isin([-1, 0, 1]))
    if odd.to_numpy().any():
        row, col = np.argwhere(odd.to_numpy())[0]
        raise ValueError(f"{csv_path}: {names[col]!r} holds {frame[names[col]].iloc[row]} in "
                         f"data row {row + 2}; finding columns hold 1, 0, -1 or nothing.")
    target = np.column_stack([
        resolve_uncertain(values[[n]].to_numpy(np.float32), policies.get(n, "ignore"))[:, 0]
        for n in names]).astype(np.float32)
    if blank == "zeros":
        target[values.isna().to_numpy()] = 0.0
    paths = frame["Path"].astype(str)
    if root is None:
        first = Path(paths.iloc[0]).parts[0] if len(paths) else ""
        root = csv_path.parent.parent if first == csv_path.parent.name else csv_path.parent
    data = np.array([os.fspath(Path(root) / p) for p in paths], dtype=object)
    patient = paths.str.extract(r"(patient\d+)", expand=False)
    groups = patient.to_numpy(dtype=object) if patient.notna().all() else None
    frame = frame.copy()
    for new, old in (("sex", "Sex"), ("age", "Age"), ("view", "AP/PA"),
                     ("frontal_lateral", "Frontal/Lateral")):
        if old in frame:
            frame[new] = frame[old]
    return Bunch(data=data, target=target, target_names=np.array(names, dtype=object),
                 groups=groups, frame=frame, filenames=data,
                 DESCR=f"CheXpert-format multi-label chest X-rays from {os.fspath(csv_path)} "
                       f"(uncertain: {uncertain!r}, blank: {blank!r}).")

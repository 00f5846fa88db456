"""Integration on the real Kermany data in ../shared/data with the real offline weights."""

import numpy as np
from conftest import kermany_dir
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline

from skcxr import FeatureExtractorTransformer, load_image_folder


def test_kermany_300_image_cv_auc(tmp_path):
    data = load_image_folder(kermany_dir() / "train")
    X, _, y, _ = train_test_split(data.data, data.target, train_size=300, stratify=data.target,
                                  random_state=0)
    pipe = make_pipeline(
        FeatureExtractorTransformer(memory=tmp_path),  # 5 folds, each image computed once
        LogisticRegression(class_weight="balanced", max_iter=5000),
    )
    scores = cross_val_score(pipe, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                             scoring="roc_auc")
    assert scores.mean() >= 0.90, scores
    assert np.all(scores > 0.8)

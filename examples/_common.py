"""What the examples share: command line, data, run record, output folder, tables, timing.

Every example takes ``--quick`` (a small run that CI does in about a minute), ``--data``
(default: the shared data folder beside the repository, with ``kermany224/`` and
``nih1000/``) and ``--out`` (default ``examples/output/<example name>/``, or
``<example name>-quick/`` with ``--quick``), where the figures, the printed tables and the
run record ``run.json`` are saved.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are saved, never shown
_MAIN = getattr(sys.modules["__main__"], "__file__", None)
if _MAIN and Path(_MAIN).resolve().parent == HERE:  # an example (benchmarks: torch's defaults)
    # torch's OpenMP threads spin while they wait; on a shared (oversubscribed) CPU that
    # makes every small op 4-40x slower. Passive waiting costs ~1% on an idle machine.
    # Set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# numpy, pandas (and torch) are imported where used: the benchmarks' spawned processes
# import this module while they start, and OpenVINO ran at a third of its speed in a process
# that had imported torch (or pandas) at that point (measured; see benchmarks/_harness.py).

#: The shared data folder beside the repository (kermany224/, nih1000/): the ``--data``
#: default of the examples and the benchmarks.
DATA = ROOT.parent / "shared" / "data"
#: Kermany's class folders, in target order: 0 = NORMAL, 1 = PNEUMONIA (positive class).
CLASSES = ("NORMAL", "PNEUMONIA")


def parse_args(doc: str, extra=None, *, data: bool = True) -> argparse.Namespace:
    """``--quick``, ``--data`` (unless ``data=False``), ``--out`` (+ ``extra(parser)``).

    Creates the output folder and starts the run record (:func:`start_record`).
    """
    script = Path(sys.modules["__main__"].__file__).resolve()
    name = script.stem
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc)
    parser.add_argument("--quick", action="store_true",
                        help="small data, few epochs: a smoke run of about a minute")
    if data:
        parser.add_argument("--data", type=Path, default=DATA,
                            help="the shared data folder (with kermany224/ and nih1000/; "
                                 "default: the one beside the repository)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where figures, tables and run.json go (default: "
                             f"examples/output/{name}/, or {name}-quick/ with --quick)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.out is None:  # a smoke run never overwrites the results of a full one
        args.out = HERE / "output" / (name + ("-quick" if args.quick else ""))
    if data and not args.data.is_dir():
        parser.error(f"data folder {args.data} not found; pass --data /path/to/shared/data")
    args.out.mkdir(parents=True, exist_ok=True)
    start_record(script, args.out, args.quick)
    return args


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def source_digest(script: Path) -> str:
    """sha256 over the example's code: the script's bytes, then this module's (the helpers
    every example runs). docs/studies/_sync.py and tests/test_docs.py compute the same."""
    h = hashlib.sha256(Path(script).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def start_record(script: Path, out: Path, quick: bool) -> Path:
    """Write ``<out>/run.json`` now and again, with ``finished``, when the run completes.

    Keys: ``example`` (the script's file name), ``source_sha256`` (:func:`source_digest`),
    ``skcxr_version``, ``command`` (``sys.argv``), ``quick``, ``started`` and ``finished``
    (ISO 8601 local times; ``finished`` stays null if the run fails), ``python``, ``torch``.
    At the end the total wall time is printed.
    """
    import torch

    import skcxr

    path = out / "run.json"
    record = {
        "example": script.name,
        "source_sha256": source_digest(script),
        "skcxr_version": skcxr.__version__,
        "command": list(sys.argv),
        "quick": bool(quick),
        "started": _now(),
        "finished": None,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    start = time.perf_counter()
    failed = []
    excepthook = sys.excepthook

    def note_failure(*exc_info):  # an uncaught exception: the run did not finish
        failed.append(exc_info[0])
        excepthook(*exc_info)

    def finish():
        if failed:
            return
        record["finished"] = _now()
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"[{script.stem} {'quick' if quick else 'full'}: "
              f"{time.perf_counter() - start:.1f} s; run record {path}]")

    sys.excepthook = note_failure
    atexit.register(finish)
    return path


def kermany(data: Path, split: str = "train", n: int | None = None, seed: int = 0):
    """Paths and targets (0 = NORMAL, 1 = PNEUMONIA) of ``kermany224/<split>`` in the shared
    data folder ``data``; with ``n``, a stratified subset of ``n`` images (seeded by ``seed``;
    all of them when ``n`` is not smaller than the split).

    Patient groups: ``skcxr.kermany_patient_ids(X)``.
    """
    from sklearn.model_selection import train_test_split

    from skcxr import load_image_folder

    d = load_image_folder(Path(data) / "kermany224" / split)
    assert tuple(d.target_names) == CLASSES, d.target_names
    X, y = d.data, d.target
    if n is not None and n < len(X):
        X, _, y, _ = train_test_split(X, y, train_size=n, stratify=y, random_state=seed)
    return X, y


def final_estimator(model):
    """The classifier itself, or the last step of an (imblearn / sklearn) pipeline."""
    return model[-1] if hasattr(model, "steps") else model


def show(table, title: str, out: Path, name: str = "table") -> None:
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
    import numpy as np

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

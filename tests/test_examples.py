"""Every example runs end to end in --quick mode (CI), on the shared data beside the repo."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "studies"))
from _sync import source_digest  # noqa: E402  (what the study pages check)

EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
#: examples that run on the bundled sample, without the shared data
SAMPLE_ONLY = {"quickstart"}
#: the run record's keys (the docs' study pages read them)
RUN_KEYS = {"example", "source_sha256", "skcxr_version", "command", "quick", "started",
            "finished", "python", "torch"}


def test_every_study_has_an_example():
    names = {p.stem for p in EXAMPLES}
    for study in ("study_000", "study_001", "study_002", "study_003", "study_004"):
        assert any(n.startswith(study) for n in names), study
    assert {"kermany_best", "quickstart"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_quick_mode(script, tmp_path, request):
    if script.stem not in SAMPLE_ONLY:
        request.getfixturevalue("shared_data")  # skips where the shared data is absent
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), "the example saved no figure"
    assert list(tmp_path.glob("*.md")), "the example saved no table"
    record = json.loads((tmp_path / "run.json").read_text())
    assert set(record) == RUN_KEYS
    assert record["example"] == script.name
    assert record["source_sha256"] == source_digest(script)  # what the study pages check
    assert record["quick"] is True and record["command"][1:] == ["--quick", "--out",
                                                                   str(tmp_path)]
    started, finished = (datetime.fromisoformat(record[k]) for k in ("started", "finished"))
    assert started <= finished

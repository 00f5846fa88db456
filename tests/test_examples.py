"""Every example runs end to end in --quick mode (CI), on the shared data beside the repo."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def test_every_study_has_an_example():
    names = {p.stem for p in EXAMPLES}
    for study in ("study_000", "study_001", "study_002", "study_003", "study_004"):
        assert any(n.startswith(study) for n in names), study
    assert "kermany_best" in names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_quick_mode(script, tmp_path):
    if not (SHARED_DATA / "kermany224").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), "the example saved no figure"
    assert (tmp_path / "table.md").exists() or list(tmp_path.glob("*.md"))

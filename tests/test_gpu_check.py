"""benchmarks/gpu_check.py's plumbing, on the CPU (--dry-run): every step runs and reports,
so the script is ready the day a GPU machine is lent."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_prints_every_step():
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    steps = [line.split("  ")[0] for line in lines if line.endswith(" s")]
    assert steps == ["CUDA tests", "features", "features", "single fit", "single fit",
                     "small grid", "predict, few", "predict, many"], run.stdout
    cuda = next(line for line in lines if line.startswith("CUDA tests"))
    assert "skipped" in cuda or "passed" in cuda
    assert "img/s" in run.stdout and "best CV AUC" in run.stdout
    assert lines[-1].startswith("8 steps")

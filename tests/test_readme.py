from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quickstart", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if line.startswith("python3 ")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    demo, tests = _quickstart_commands()
    assert "demo" in demo and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()

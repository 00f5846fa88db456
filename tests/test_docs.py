"""The study pages (docs/studies/) show full runs of the example scripts as they are now.

docs/studies/_sync.py writes one page per study example from the example's last full run
and records, in the page's front matter, the sha256 of the script it ran. A page whose
script changed since is stale: its docstring, tables and figures may no longer be what the
script says and does.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "studies"


sys.path.insert(0, str(PAGES))
import _sync  # noqa: E402  (docs/studies/_sync.py, the study pages' generator)


def stale_reason(script: Path, page: Path) -> str | None:
    """Why ``page`` does not show a full run of ``script`` as it is now (None: it does)."""
    name = script.stem
    shown = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page  # for messages
    todo = (f"Regenerate it:\n    python examples/{name}.py\n    python docs/studies/_sync.py"
            f"\n(`python docs/studies/_sync.py {name}` syncs this page only.)")
    if not script.is_file():
        return f"{shown} has no example script {script}: delete the page or restore the script."
    if not page.is_file():
        return f"examples/{script.name} has no study page {shown}. {todo}"
    record = _sync.read_record(page.read_text())
    if record is None:
        return (f"{shown} records no run of examples/{script.name} (no skcxr_source_sha256 "
                f"front matter: older than run records, or edited by hand). {todo}")
    if record["example"] != script.name:
        return f"{shown} records a run of {record['example']}, not of {script.name}. {todo}"
    if record["quick"]:
        return (f"{shown} is a preview from a --quick run of examples/{script.name} "
                f"(_sync.py --allow-quick): never commit one. {todo}")
    now = _sync.source_digest(script)
    if record["source_sha256"] != now:
        return (f"examples/{script.name} (or examples/_common.py) changed since the full run "
                f"that {shown} shows "
                f"(page: sha256 {record['source_sha256'][:12]}..., script now: "
                f"{now[:12]}...). {todo}")
    return None


def _study_names() -> list[str]:
    scripts = {p.stem for p in _sync.study_scripts(ROOT / "examples")}
    pages = {p.stem for p in PAGES.glob("*.md") if p.stem != "index"}
    return sorted(scripts | pages)


@pytest.mark.parametrize("name", _study_names())
def test_study_page_shows_a_full_run_of_the_current_script(name):
    reason = stale_reason(ROOT / "examples" / f"{name}.py", PAGES / f"{name}.md")
    assert reason is None, reason


def test_study_index_lists_every_study_page():
    text = (PAGES / "index.md").read_text()
    for name in _study_names():
        assert f"\n{name}\n" in text, f"docs/studies/index.md does not list {name}"


# --- docs/studies/_sync.py itself, on a fake repository in tmp_path --------------------------

DOCSTRING = '''"""Study 999: a fake study for the tests.

An introduction with ``code`` and a *word*.

The study
---------
* one bullet,
* two bullets.

Details
~~~~~~~
1. first;
2. second.

Run it::

    python examples/study_999_fake.py --quick
"""

print("not run by the tests")
'''


@pytest.fixture
def repo(tmp_path):
    """examples/ (two studies, a quickstart, a helper), their outputs, an empty docs/."""
    pytest.importorskip("docutils")
    examples, outputs, docs = tmp_path / "examples", tmp_path / "output", tmp_path / "docs"
    examples.mkdir()
    (examples / "study_999_fake.py").write_text(DOCSTRING)
    (examples / "kermany_best.py").write_text('"""Kermany: best.\n\nText."""\n')
    (examples / "quickstart.py").write_text('"""Quickstart: no page."""\n')
    (examples / "_common.py").write_text('"""Helpers: no page."""\n')
    rng = np.random.RandomState(0)
    for script in ("study_999_fake.py", "kermany_best.py", "quickstart.py"):
        out = outputs / Path(script).stem
        out.mkdir(parents=True)
        _write_run(out, examples / script)
        (out / "table.md").write_text("## A table\n\n| a | b |\n|--:|--:|\n| 1 | 2 |\n")
        # a smooth colour gradient (thousands of colours): must arrive byte for byte
        ramp = np.linspace(0, 255, 200 * 200 * 3).reshape(200, 200, 3)
        noise = rng.randint(0, 3, ramp.shape)
        Image.fromarray((ramp + noise).clip(0, 255).astype(np.uint8)).save(out / "fig.png")
    (docs / "studies").mkdir(parents=True)
    return _sync.Layout(examples=examples, outputs=outputs, docs=docs)


def _write_run(out: Path, script: Path, **changes) -> dict:
    run = {"example": script.name,
           "source_sha256": _sync.source_digest(script),
           "skcxr_version": "0.1.0.dev0",
           "command": ["/usr/bin/python", f"examples/{script.name}"], "quick": False,
           "started": "2026-11-24T10:00:00+00:00", "finished": "2026-11-24T10:12:00+00:00",
           "python": "3.11.2", "torch": "2.5.1", **changes}
    (out / "run.json").write_text(json.dumps(run))
    return run


def test_sync_writes_recorded_pages_for_study_examples_only(repo):
    written = _sync.sync(repo)
    assert sorted(p.name for p in written) == ["kermany_best.md", "study_999_fake.md"]
    assert not (repo.pages / "quickstart.md").exists()
    index = (repo.pages / "index.md").read_text()
    assert "study_999_fake" in index and "kermany_best" in index and "quickstart" not in index

    page = repo.pages / "study_999_fake.md"
    text = page.read_text()
    sha = _sync.source_digest(repo.examples / "study_999_fake.py")
    assert _sync.read_record(text) == {
        "example": "study_999_fake.py", "source_sha256": sha, "skcxr_version": "0.1.0.dev0",
        "finished": "2026-11-24T10:12:00+00:00", "quick": False}
    assert stale_reason(repo.examples / "study_999_fake.py", page) is None
    # visible provenance, under the docstring's title
    assert "# Study 999: a fake study for the tests\n" in text
    assert (f"Generated from a full run of `examples/study_999_fake.py` (source sha256 "
            f"`{sha[:12]}...`, skcxr 0.1.0.dev0, 2026-11-24)") in text
    assert "on 2026-11-24 (12 min" in text and "warning" not in text
    # the docstring as rendered reStructuredText, its sections as Markdown headings
    assert "```text" not in text
    assert "```{eval-rst}\nAn introduction with ``code`` and a *word*.\n```" in text
    assert "## The study\n" in text and "### Details\n" in text
    assert "* one bullet,\n* two bullets." in text and "python examples/study_999_fake.py" in text
    # tables included under the results heading; figures copied as they were saved
    assert "```{include} results/study_999_fake/table.md\n:heading-offset: 1\n```" in text
    assert "![fig](../_static/studies/study_999_fake/fig.png)" in text
    out = repo.outputs / "study_999_fake"
    assert (repo.results("study_999_fake") / "table.md").read_bytes() == \
        (out / "table.md").read_bytes()
    assert (repo.figures("study_999_fake") / "fig.png").read_bytes() == \
        (out / "fig.png").read_bytes()
    with Image.open(repo.figures("study_999_fake") / "fig.png") as im:
        assert im.mode == "RGB"

    # the script changes: the page is stale, and says how to regenerate it
    (repo.examples / "study_999_fake.py").write_text(DOCSTRING + "# edited\n")
    reason = stale_reason(repo.examples / "study_999_fake.py", page)
    assert "examples/study_999_fake.py (or examples/_common.py) changed" in reason
    assert "python examples/study_999_fake.py\n    python docs/studies/_sync.py" in reason
    # ... and _sync refuses the old run
    with pytest.raises(_sync.SyncError, match="another version of study_999_fake.py"):
        _sync.sync(repo)


def test_sync_refuses_missing_and_quick_runs_and_writes_nothing(repo, capsys):
    (repo.outputs / "study_999_fake" / "run.json").unlink()
    _write_run(repo.outputs / "kermany_best", repo.examples / "kermany_best.py", quick=True)
    with pytest.raises(_sync.SyncError) as err:
        _sync.sync(repo)
    message = str(err.value)
    assert "examples/study_999_fake.py: no " in message and "run.json" in message
    assert "examples/kermany_best.py" in message and "--quick run" in message
    assert "run `python examples/study_999_fake.py` (the full run" in message
    assert list(repo.pages.iterdir()) == [] and not (repo.docs / "_static").exists()
    # the command line says the same and fails
    argv = ["--examples", str(repo.examples), "--outputs", str(repo.outputs),
            "--docs", str(repo.docs)]
    assert _sync.main(argv) == 1
    assert "study_999_fake.py" in capsys.readouterr().err


def test_sync_only_named_examples_and_quick_previews(repo):
    _write_run(repo.outputs / "kermany_best", repo.examples / "kermany_best.py", quick=True)
    assert [p.name for p in _sync.sync(repo, ["study_999_fake"])] == ["study_999_fake.md"]
    assert not (repo.pages / "kermany_best.md").exists()
    with pytest.raises(_sync.SyncError, match="no study example named"):
        _sync.sync(repo, ["quickstart"])
    # --allow-quick: a preview with a warning banner, which the staleness test rejects
    assert _sync.sync(repo, ["kermany_best"], allow_quick=True)
    page = repo.pages / "kermany_best.md"
    text = page.read_text()
    assert "```{warning}\nPREVIEW from a `--quick` (smoke) run" in text
    assert _sync.read_record(text)["quick"] is True
    assert "--quick run" in stale_reason(repo.examples / "kermany_best.py", page)


def test_sync_reports_docstring_rst_errors_with_the_script_line(repo):
    script = repo.examples / "study_999_fake.py"
    # line 8 of the script: a bare ``name_`` is a link to an undefined target
    script.write_text(DOCSTRING.replace("* two bullets.", "* two history_ bullets."))
    _write_run(repo.outputs / "study_999_fake", script)
    with pytest.raises(_sync.SyncError,
                       match=r"examples/study_999_fake.py:8: Unknown target name"):
        _sync.sync(repo)
    assert not (repo.pages / "study_999_fake.md").exists()


def test_read_record_needs_every_key():
    assert _sync.read_record("# A page\n") is None
    assert _sync.read_record('---\nskcxr_example: "x.py"\n---\n') is None


PUBLIC_MODULES = ["skcxr", "skcxr.protocol", "skcxr.calibration", "skcxr.images",
                  "skcxr.backbones", "skcxr.cache", "skcxr.datasets", "skcxr.explain",
                  "skcxr.export", "skcxr.plotting", "skcxr.evaluation", "skcxr.adaptation",
                  "skcxr.interpretation", "skcxr.report", "skcxr.datacheck"]


def test_the_public_surface_is_deliberate():
    """Every name in a public module's __all__ is in the API reference (under its module or
    as the top-level alias), and everything the reference documents is in an __all__."""
    import importlib
    import re

    api = (ROOT / "docs" / "api.rst").read_text()
    documented = set(re.findall(
        r"\.\. auto(?:function|class|data|exception|module):: (skcxr[\w.]*)", api))
    missing = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        missing += [f"{name}.{n}" for n in module.__all__ if n != "__version__"
                    and not {f"{name}.{n}", f"skcxr.{n}"} & documented]
    assert missing == []
    stray = []
    for full in documented - set(PUBLIC_MODULES):
        module, _, name = full.rpartition(".")
        if name not in importlib.import_module(module).__all__:
            stray.append(full)
    assert stray == []


def test_examples_and_benchmarks_use_public_names_only():
    import re

    private = re.compile(r"(from|import) skcxr\._|from skcxr(\.\w+)? import .*\b_[a-z]")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for folder in ("examples", "benchmarks") for p in sorted((ROOT / folder).glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert hits == []


def _import_floors() -> dict[str, int]:
    """Each module of the package -> its floor in the import graph (0: imports no skcxr
    module; else one above the highest module it imports), counting imports inside
    functions; fails on a cycle."""
    import ast

    paths = {p.stem: p for p in (ROOT / "skcxr").glob("*.py")}

    def imported(name):
        out = set()
        for node in ast.walk(ast.parse(paths[name].read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (
                    node.module or "").startswith("skcxr")):
                parts = (node.module or "").split(".")
                if node.level == 0:
                    parts = parts[1:]
                out.update(parts[:1] if parts and parts[0] else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                out.update(a.name.split(".")[1] for a in node.names
                           if a.name.startswith("skcxr."))
        return {m for m in out if m in paths and m != name}

    floors: dict[str, int] = {}

    def floor(name, path=()):
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in floors:
            deps = imported(name)
            floors[name] = 1 + max(floor(d, (*path, name)) for d in deps) if deps else 0
        return floors[name]

    for name in paths:
        floor(name)
    return floors


def test_design_module_map_lists_every_module_on_its_floor():
    """docs/design.md's module map: one row per module of the package, each on the floor
    its imports put it (the entry points ``cli`` and ``__main__`` marked "-")."""
    import re

    rows = re.findall(r"^\| (\d+|-) \| `(\w+)\.py` \|", (ROOT / "docs" / "design.md").read_text(),
                      re.M)
    documented = {module: floor for floor, module in rows}
    assert len(documented) == len(rows), "a module has two rows"
    expected = {m: ("-" if m in ("cli", "__main__") else str(f))
                for m, f in _import_floors().items()}
    expected.pop("__main__")
    assert documented == expected

"""Write one docs page per study example from its docstring and the outputs of its last full run.

Run after the examples' full runs (``python examples/<name>.py`` writes
examples/output/<name>/, with the tables, the figures and ``run.json``):

    python docs/studies/_sync.py                  # every study page (all runs must be there)
    python docs/studies/_sync.py study_000_two_phase   # only the pages of these examples
    python docs/studies/_sync.py --allow-quick    # preview from --quick runs: never commit

Pages are made for ``examples/study_*.py`` and ``examples/kermany_best.py`` only. For each, it
checks ``run.json`` (a full run, not ``--quick``, of the script as it is now: the sha256 of
its source and of examples/_common.py must match), copies the printed tables (``*.md``) to
docs/studies/results/<name>/, the figures (``*.png``, byte for byte, as the example saved
them) and the reports (``*.html``) to docs/_static/studies/<name>/, and writes
docs/studies/<name>.md: the docstring (reStructuredText, rendered), the tables, the figures,
links to the reports and the command lines. Each page
records the run it shows, in its front matter (``skcxr_source_sha256`` and friends, read by
tests/test_docs.py, which fails once the script changes) and visibly under its title. The
pages are committed; the docs build needs no example run.

Nothing is written unless every requested example passes the checks.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the keys every run.json has (written by examples/_common.py)
RUN_KEYS = ("example", "source_sha256", "skcxr_version", "command", "quick", "started",
            "finished", "python", "torch")

#: front-matter keys of a page's record of its run; values are JSON (a subset of YAML)
RECORD_KEYS = {"skcxr_example": "example", "skcxr_source_sha256": "source_sha256",
               "skcxr_version": "skcxr_version", "skcxr_run_finished": "finished",
               "skcxr_run_quick": "quick"}


class SyncError(RuntimeError):
    """An example has no usable full run: nothing was written."""


@dataclass(frozen=True)
class Layout:
    """Where _sync reads and writes; the defaults are the repository's own folders."""

    examples: Path = ROOT / "examples"
    outputs: Path = ROOT / "examples" / "output"
    docs: Path = ROOT / "docs"

    @property
    def pages(self) -> Path:
        return self.docs / "studies"

    def results(self, name: str) -> Path:
        return self.pages / "results" / name

    def figures(self, name: str) -> Path:
        return self.docs / "_static" / "studies" / name


def study_scripts(examples: Path) -> list[Path]:
    """The examples that get a page: ``study_*.py`` and ``kermany_best.py``."""
    scripts = sorted(examples.glob("study_*.py"))
    if (examples / "kermany_best.py").is_file():
        scripts.insert(0, examples / "kermany_best.py")
    return scripts


def source_digest(script: Path) -> str:
    """What ``run.json``'s ``source_sha256`` records (examples/_common.py's
    ``source_digest``): sha256 over the script's bytes, then those of the ``_common.py``
    beside it (the helpers every example runs), where there is one."""
    h = hashlib.sha256(script.read_bytes())
    common = script.parent / "_common.py"
    if common.is_file():
        h.update(common.read_bytes())
    return h.hexdigest()


def read_record(page_text: str) -> dict | None:
    """The run a page was generated from (its front matter), as run.json names it; or None."""
    lines = page_text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    record = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep and key.strip() in RECORD_KEYS:
            try:
                record[RECORD_KEYS[key.strip()]] = json.loads(value.strip())
            except json.JSONDecodeError:
                return None
    else:
        return None
    return record if set(record) == set(RECORD_KEYS.values()) else None


def _regenerate(script: Path) -> str:
    return (f"run `python examples/{script.name}` (the full run, without --quick), then "
            "`python docs/studies/_sync.py`")


def find_run(script: Path, layout: Layout, allow_quick: bool = False) -> tuple[Path, dict]:
    """The output folder and run.json of the example's last usable run, or SyncError.

    The full run's folder ``<outputs>/<name>/`` must hold a run.json of a full run of the
    script as it is now. With ``allow_quick``, a --quick run (there or in ``<name>-quick/``)
    is accepted as well, for a preview.
    """
    name, now = script.stem, source_digest(script)
    folders = [layout.outputs / name]
    if allow_quick:
        folders.append(layout.outputs / f"{name}-quick")
    problems = []
    for folder in folders:
        run_file = folder / "run.json"
        if not run_file.is_file():
            problems.append(f"no {run_file}")
            continue
        try:
            run = json.loads(run_file.read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"{run_file} is not JSON ({exc})")
            continue
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            problems.append(f"{run_file} lacks {missing}")
        elif run["example"] != script.name:
            problems.append(f"{run_file} is a run of {run['example']}, not of {script.name}")
        elif run["quick"] and not allow_quick:
            problems.append(f"{run_file} is a --quick run (pass --allow-quick for a preview "
                            "page, never to be committed)")
        elif run["source_sha256"] != now:
            problems.append(f"{run_file} is a run of another version of {script.name} "
                            f"(sha256 {run['source_sha256'][:12]}..., the script now: "
                            f"{now[:12]}...)")
        else:
            return folder, run
    raise SyncError(f"examples/{script.name}: {'; '.join(problems)}. To make its page, "
                    f"{_regenerate(script)}.")


def _docstring(script: Path) -> tuple[str, str, int]:
    """The docstring's title line, its body and the script line where the body starts."""
    tree = ast.parse(script.read_text())
    doc = ast.get_docstring(tree) or script.stem
    title, _, rest = doc.partition("\n")
    body = rest.strip()
    first = 1
    if tree.body and isinstance(tree.body[0], ast.Expr):  # the title is on the quotes' line
        first = tree.body[0].lineno + 1 + (len(rest) - len(rest.lstrip("\n")))
    return title.strip().rstrip("."), body, first


#: characters that underline a reStructuredText section title
ADORNMENTS = set("=-~^\"'`:#*+_.<>")


def _rst_problems(body: str) -> list[tuple[int, str]]:
    """(line in ``body``, message) of every docutils warning or error in the body."""
    import io

    from docutils import nodes
    from docutils.core import publish_doctree

    doctree = publish_doctree(body, settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": io.StringIO()})
    problems = []
    # messages of the parser are in the tree; those of transforms (unknown link targets
    # such as a bare ``name_``) wait in transform_messages
    for msg in [*doctree.findall(nodes.system_message), *doctree.transform_messages]:
        text = msg.children[0].astext() if msg.children else msg.astext()
        if msg["level"] >= 2 and not text.startswith(("Unknown interpreted text role",
                                                      "No role entry")):
            problems.append((msg.get("line") or 0, text))
    return problems


def _docstring_markdown(script: Path) -> tuple[str, list[str]]:
    """The page title and the docstring as MyST: its section titles as Markdown headings
    (level 2 and below), the text between them as ``{eval-rst}`` blocks (rendered prose).

    Section titles stay out of the reStructuredText blocks: MyST would register them as
    global labels, and every study has a "What we changed, and why". RST problems raise
    SyncError with their line in the script: they would fail the docs build.
    """
    title, body, first = _docstring(script)
    problems = _rst_problems(body)
    if problems:
        where = "; ".join(f"examples/{script.name}:{first + line - 1}: {text}"
                          for line, text in problems)
        raise SyncError(f"examples/{script.name}: its docstring is not valid "
                        f"reStructuredText ({where}). Fix the docstring, then run the example "
                        "again (its source changes) and sync.")
    lines = body.splitlines()
    out, chunk, levels = [], [], []

    def flush():
        text = "\n".join(chunk).strip("\n")
        if text.strip():
            fence = _fence(text)
            out.extend([fence + "{eval-rst}", text, fence, ""])
        chunk.clear()

    i = 0
    while i < len(lines):
        line, under = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        is_title = (line.strip() and not line[0].isspace() and under
                    and len(set(under.strip())) == 1 and under[0] in ADORNMENTS
                    and len(under.rstrip()) >= len(line.rstrip())
                    and (i == 0 or not lines[i - 1].strip()))
        if is_title:
            flush()
            if under[0] not in levels:
                levels.append(under[0])
            out.extend(["#" * (1 + min(5, 1 + levels.index(under[0]))) + " " + line.strip(),
                        ""])
            i += 2
            continue
        chunk.append(line)
        i += 1
    flush()
    return title, out


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in ``text``."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def page(script: Path, folder: Path, run: dict, layout: Layout) -> str:
    """The page's Markdown; copies the run's tables and figures into the docs."""
    name = script.stem
    title, docstring = _docstring_markdown(script)  # SyncError before anything is copied
    res_dir, fig_dir = layout.results(name), layout.figures(name)
    for d in (res_dir, fig_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    date = str(run["finished"])[:10]
    kind = "a `--quick` (smoke) run" if run["quick"] else "a full run"
    record = {"skcxr_example": run["example"], "skcxr_source_sha256": run["source_sha256"],
              "skcxr_version": run["skcxr_version"], "skcxr_run_finished": run["finished"],
              "skcxr_run_quick": bool(run["quick"])}
    lines = ["---", "# the run this page shows (written by docs/studies/_sync.py; checked by "
             "tests/test_docs.py)", *(f"{k}: {json.dumps(v)}" for k, v in record.items()),
             "---", "", f"# {title}", ""]
    if run["quick"]:
        lines += ["```{warning}",
                  f"PREVIEW from {kind} of `examples/{script.name}`: the tables and figures "
                  "below come from a small smoke run and are NOT the study's results. Do "
                  "not commit this page; run the full example and sync again.", "```", ""]
    command = " ".join(str(a) for a in run["command"])
    # the study-provenance class also marks the page for docs/_static/skcxr.css
    lines += ["```{container} study-provenance",
              f"*Generated from {kind} of `examples/{script.name}` (source sha256 "
              f"`{run['source_sha256'][:12]}...`, skcxr {run['skcxr_version']}, {date}).*",
              "```", "",
              f"Script: `examples/{script.name}`. Run it from the repository root:", "",
              "```bash", f"python examples/{script.name} --quick   # smoke run, about a minute",
              f"python examples/{script.name}           # the full run"
              + (" shown below" if not run["quick"] else ""), "```", "",
              "The script's own account (its docstring):", "", *docstring]
    tables = sorted(folder.glob("*.md"))
    figures = sorted(folder.glob("*.png"))
    heading = "Results of the full run" if not run["quick"] else "Results of the `--quick` run"
    lines += [f"## {heading}", "",
              f"`{command}` ran {_when(run)} (Python {run['python']}, torch {run['torch']}, "
              f"skcxr {run['skcxr_version']}). "
              + ("Tables as the script printed them:" if tables else "It printed no table."),
              ""]
    for t in tables:  # each table's own "## title" becomes a heading under the results
        shutil.copyfile(t, res_dir / t.name)
        lines += ["```{include} " + f"results/{name}/{t.name}", ":heading-offset: 1", "```",
                  ""]
    for f in figures:  # as the example saved them: no re-encoding, no colour reduction
        shutil.copyfile(f, fig_dir / f.name)
        lines += [f"![{f.stem}](../_static/studies/{name}/{f.name})", ""]
    reports = sorted(folder.glob("*.html"))
    if reports:  # self-contained HTML reports (skcxr.report.write_report), as written
        lines += ["### Reports", "", "Each is one self-contained HTML file (figures embedded, "
                  "no script; opens offline and prints):", ""]
    for f in reports:
        shutil.copyfile(f, fig_dir / f.name)
        lines += [f"- [{f.stem.replace('_', ' ')}](../_static/studies/{name}/{f.name})"]
    if reports:
        lines += [""]
    return "\n".join(lines)


def _when(run: dict) -> str:
    """When the run ran and how long, e.g. "on 2026-11-24 (12 min, finished 10:12)"."""
    from datetime import datetime

    try:
        start, end = (datetime.fromisoformat(str(run[k]).replace("Z", "+00:00"))
                      for k in ("started", "finished"))
        minutes = (end - start).total_seconds() / 60
    except (TypeError, ValueError):
        return f"from {run['started']} to {run['finished']}"
    took = f"{minutes:.0f} min" if minutes >= 1 else "under a minute"
    return f"on {end.date().isoformat()} ({took}, finished {end.strftime('%H:%M')})"


def index(names: list[str]) -> str:
    return "\n".join([
        "# The five studies, reproduced", "",
        "skcxr exists because of five transfer-learning studies of chest X-ray "
        "classification. Each page below is one example script: the study's protocol in "
        "skcxr, what had to change on a CPU without the study's data or weights, where "
        "the study's protocol is flawed and the careful variant, and the numbers side by "
        "side. `kermany_best` is the best honest result skcxr reaches on the Kermany test "
        "split on a CPU. Each page says which run of which version of its script it shows.",
        "", "```{toctree}", ":maxdepth: 1", "", *names, "```", ""])


def sync(layout: Layout = Layout(), names: list[str] | None = None,
         allow_quick: bool = False) -> list[Path]:
    """Check every requested example's run, then write their pages and the index.

    Raises SyncError (naming each example and what to run) before writing anything when
    an example has no usable run.
    """
    scripts = study_scripts(layout.examples)
    if names:
        by_name = {s.stem: s for s in scripts}
        unknown = [n for n in names if Path(n).stem not in by_name]
        if unknown:
            raise SyncError(f"no study example named {unknown}; the study examples are "
                            f"{sorted(by_name)}")
        scripts = [by_name[Path(n).stem] for n in names]
    runs, problems = [], []
    for script in scripts:
        try:
            runs.append((script, *find_run(script, layout, allow_quick)))
        except SyncError as exc:
            problems.append(str(exc))
        try:
            _docstring_markdown(script)
        except SyncError as exc:
            problems.append(str(exc))
    if problems:
        raise SyncError("nothing written:\n" + "\n".join(f"* {p}" for p in problems))
    written = []
    for script, folder, run in runs:
        path = layout.pages / f"{script.stem}.md"
        path.write_text(page(script, folder, run, layout))
        written.append(path)
    (layout.pages / "index.md").write_text(
        index([s.stem for s in study_scripts(layout.examples)]))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*",
                        help="examples to sync (e.g. study_000_two_phase); default: all")
    parser.add_argument("--allow-quick", action="store_true",
                        help="accept --quick runs, for a local preview only: the page gets "
                             "a warning banner and tests/test_docs.py fails on it")
    parser.add_argument("--examples", type=Path, default=Layout.examples,
                        help="folder of the example scripts")
    parser.add_argument("--outputs", type=Path, default=Layout.outputs,
                        help="folder of the examples' output folders")
    parser.add_argument("--docs", type=Path, default=Layout.docs, help="the docs folder")
    args = parser.parse_args(argv)
    layout = Layout(examples=args.examples, outputs=args.outputs, docs=args.docs)
    try:
        written = sync(layout, args.names, args.allow_quick)
    except SyncError as exc:
        print(f"_sync.py: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write one docs page per example from its docstring and the outputs of its last full run.

Run after the examples' full runs (``python examples/<name>.py`` writes examples/output/<name>/):

    python docs/studies/_sync.py

For each example it copies the printed tables (``*.md``) to docs/studies/results/<name>/ and
the figures (``*.png``, palette-quantised to keep the repository small) to
docs/_static/studies/<name>/, and writes docs/studies/<name>.md: the docstring, the
tables, the figures and the command lines. The pages are committed; the docs build needs no
example run.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def page(script: Path) -> str:
    name = script.stem
    doc = ast.get_docstring(ast.parse(script.read_text())) or name
    title, _, body = doc.partition("\n")
    out_dir = ROOT / "examples" / "output" / name
    res_dir = DOCS / "studies" / "results" / name
    fig_dir = DOCS / "_static" / "studies" / name
    for d in (res_dir, fig_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    lines = [f"# {title.strip().rstrip('.')}", "",
             f"Script: `examples/{script.name}`. Run it from the repository root:", "",
             "```bash", f"python examples/{script.name} --quick   # smoke run, about a minute",
             f"python examples/{script.name}           # the full run shown below", "```", "",
             "The script's own account (its docstring):", "",
             "```text", body.strip(), "```", ""]
    tables = sorted(out_dir.glob("*.md")) if out_dir.is_dir() else []
    figures = sorted(out_dir.glob("*.png")) if out_dir.is_dir() else []
    if tables or figures:
        lines += ["## Results of the full run", "",
                  "On the 2-core development machine (no GPU). Tables as the script printed "
                  "them:", ""]
    for t in tables:
        shutil.copy(t, res_dir / t.name)
        lines += ["```{include} " + f"results/{name}/{t.name}", "```", ""]
    for f in figures:
        with Image.open(f) as im:
            im.convert("RGB").quantize(colors=128).save(fig_dir / f.name, optimize=True)
        lines += [f"![{f.stem}](../_static/studies/{name}/{f.name})", ""]
    return "\n".join(lines)


def main() -> None:
    names = []
    for script in EXAMPLES:
        (DOCS / "studies" / f"{script.stem}.md").write_text(page(script))
        names.append(script.stem)
        print(f"docs/studies/{script.stem}.md")
    index = ["# The five studies, reproduced", "",
             "skcxr exists because of five transfer-learning studies of chest X-ray "
             "classification. Each page below is one example script: the study's protocol in "
             "skcxr, what had to change on a CPU without the study's data or weights, where "
             "the study's protocol is flawed and the careful variant, and the numbers side by "
             "side. `kermany_best` is the best honest result skcxr reaches on the Kermany test "
             "split on a CPU.", "", "```{toctree}", ":maxdepth: 1", "", *names, "```", ""]
    (DOCS / "studies" / "index.md").write_text("\n".join(index))


if __name__ == "__main__":
    main()

"""Sphinx configuration: user guide (Markdown via MyST) + API reference (numpydoc docstrings).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (CI treats warnings as
errors). Everything is local: no intersphinx, so the build needs no network.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
import skcxr  # noqa: E402

project = "skcxr"
author = "the skcxr developers"
copyright = "2026, the skcxr developers"
release = skcxr.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "studies/results/**"]
myst_heading_anchors = 3

autosummary_generate = False
autodoc_default_options = {
    "exclude-members": "set_fit_request, set_score_request, set_transform_request, set_output",
}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_title = "skcxr"
html_theme_options = {"navigation_with_keys": False}
html_css_files = ["skcxr.css"]  # study pages: wrap long code lines, smaller wide tables

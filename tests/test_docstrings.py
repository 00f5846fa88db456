"""numpydoc validation of the public docstrings (issue 22, item 6).

Every name in ``__all__`` of the public modules is validated, and every public method and
property of a public class whose code is skcxr's (inherited scikit-learn methods are
scikit-learn's to check). The docstrings are the ones Sphinx renders: shared parameter
text is filled in at import (``skcxr._params.fill_doc``) before numpydoc sees it.
"""

import importlib
import inspect

import pytest

numpydoc_validate = pytest.importorskip("numpydoc.validate")

PUBLIC_MODULES = [
    "skcxr", "skcxr.protocol", "skcxr.calibration", "skcxr.images", "skcxr.backbones",
    "skcxr.cache", "skcxr.datasets", "skcxr.explain", "skcxr.export", "skcxr.plotting",
    "skcxr.evaluation", "skcxr.adaptation", "skcxr.interpretation", "skcxr.report",
    "skcxr.datacheck",
]

#: numpydoc checks not applied, and why (https://numpydoc.readthedocs.io/en/latest/
#: validation.html#built-in-validation-checks).
IGNORED = {
    "ES01": "an extended summary is optional: a short function is explained by its summary",
    "EX01": "examples live in the user guide and on the estimators, not on every function",
    "SA01": "cross-references live in the docs pages; no See Also sections",
    "SS06": "a summary sentence may wrap onto a second line (line length 100)",
    "GL02": "house style closes a multi-line docstring's quotes on its last line of text",
    "RT02": "a Returns entry may name what it returns (``self : Estimator``), as in sklearn",
}

def _public_names():
    seen = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen:
                continue  # data (versions, tables) and names exported twice
            seen.add(id(obj))
            yield f"{module_name}.{name}"
            if inspect.isclass(obj):
                yield from (f"{module_name}.{name}.{m}" for m in _own_members(obj))


def _own_members(cls):
    """Public methods and properties of ``cls`` whose code is skcxr's."""
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        func = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
        if not (inspect.isroutine(func) or isinstance(attr, property)):
            continue
        if (getattr(func, "__module__", None) or "").split(".")[0] == "skcxr":
            yield name


NAMES = list(_public_names())


def _errors(name):
    res = numpydoc_validate.validate(name)
    return res, {(code, msg) for code, msg in res["errors"] if code not in IGNORED}


@pytest.mark.parametrize("name", NAMES)
def test_docstring(name):
    res, errors = _errors(name)
    assert not errors, (f"{name} ({res['file']}:{res['file_line']}):\n"
                        + "\n".join(f"  {c}: {m}" for c, m in sorted(errors)))


def test_the_walk_finds_the_estimators_and_their_methods():
    assert {"skcxr.PretrainedCNNClassifier.fit", "skcxr.FeatureExtractorTransformer.transform",
            "skcxr.images.check_images"} <= set(NAMES)
    assert not any(n.endswith((".get_params", ".set_output")) for n in NAMES)  # sklearn's

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

#: To fix: (object, code) failures in files that were being edited elsewhere when this test
#: was written. Fix them there, then remove them here: test_to_fix_entries_still_fail fails
#: as soon as one is fixed, and test_docstring on any new failure.
TO_FIX = {
    # skcxr/_bootstrap.py
    ("skcxr.evaluation.bootstrap_indices", "PR01"), ("skcxr.evaluation.bootstrap_indices", "RT01"),
    # skcxr/_classifier.py
    ("skcxr.PretrainedCNNClassifier", "PR07"), ("skcxr.PretrainedCNNClassifier", "PR08"),
    ("skcxr.PretrainedCNNClassifier.decision_function", "PR01"),
    ("skcxr.PretrainedCNNClassifier.decision_function", "RT01"),
    ("skcxr.PretrainedCNNClassifier.fit", "PR07"), ("skcxr.PretrainedCNNClassifier.fit", "RT03"),
    ("skcxr.PretrainedCNNClassifier.lr_find", "PR04"),
    ("skcxr.PretrainedCNNClassifier.predict", "PR01"),
    ("skcxr.PretrainedCNNClassifier.predict", "RT01"),
    ("skcxr.PretrainedCNNClassifier.predict_proba", "PR01"),
    ("skcxr.PretrainedCNNClassifier.predict_proba", "RT01"),
    # skcxr/_lr_find.py
    ("skcxr.plotting.LRFinderDisplay.from_estimator", "PR01"),
    ("skcxr.plotting.LRFinderDisplay.from_sweep", "PR01"),
    ("skcxr.plotting.LRFinderDisplay.plot", "PR01"),
    ("skcxr.plotting.LRFinderDisplay.plot", "RT01"),
    # skcxr/_state.py
    ("skcxr.config_context", "PR01"), ("skcxr.config_context", "YD01"),
    ("skcxr.get_config", "RT01"), ("skcxr.get_config", "SS02"), ("skcxr.get_config", "SS05"),
    ("skcxr.set_config", "PR01"), ("skcxr.set_config", "PR02"),
    # skcxr/calibration.py
    ("skcxr.calibration.apply_temperature", "GL08"),
    ("skcxr.calibration.expected_calibration_error", "PR01"),
    ("skcxr.calibration.expected_calibration_error", "RT01"),
    ("skcxr.calibration.fit_temperature", "PR01"), ("skcxr.calibration.fit_temperature", "RT01"),
    ("skcxr.calibration.fit_thresholds", "PR01"), ("skcxr.calibration.fit_thresholds", "RT01"),
    ("skcxr.calibration.probabilities", "PR01"), ("skcxr.calibration.probabilities", "RT01"),
    # skcxr/datasets.py
    ("skcxr.kermany_patient_ids", "RT03"),
    # skcxr/evaluation.py
    ("skcxr.evaluation.ExternalValidation", "PR01"), ("skcxr.evaluation.bootstrap_metrics", "PR01"),
    ("skcxr.evaluation.bootstrap_metrics", "PR07"), ("skcxr.evaluation.evaluate", "PR01"),
    ("skcxr.evaluation.evaluate", "RT01"), ("skcxr.evaluation.evaluate_predictions", "PR04"),
    ("skcxr.evaluation.evaluate_predictions", "SS05"),
    ("skcxr.evaluation.external_validation", "PR01"),
    ("skcxr.evaluation.external_validation", "RT03"), ("skcxr.evaluation.subgroup_metrics", "PR01"),
    ("skcxr.evaluation.subgroup_metrics", "PR02"), ("skcxr.evaluation.subgroup_metrics", "PR04"),
    # skcxr/protocol.py
    ("skcxr.protocol.FitRows", "PR01"), ("skcxr.protocol.FitRows.n_outputs", "GL08"),
    ("skcxr.protocol.fit_rows", "PR03"), ("skcxr.protocol.fit_rows", "PR04"),
    ("skcxr.protocol.fit_rows", "RT03"), ("skcxr.protocol.resolve_uncertain", "RT03"),
    ("skcxr.protocol.stratified_take", "PR01"), ("skcxr.protocol.stratified_take", "RT01"),
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
    errors = {(c, m) for c, m in errors if (name, c) not in TO_FIX}
    assert not errors, (f"{name} ({res['file']}:{res['file_line']}):\n"
                        + "\n".join(f"  {c}: {m}" for c, m in sorted(errors)))


def test_to_fix_entries_still_fail():
    fixed = [(name, code) for name, code in sorted(TO_FIX)
             if code not in {c for c, _ in _errors(name)[1]}]
    assert not fixed, f"fixed: remove these from TO_FIX: {fixed}"


def test_the_walk_finds_the_estimators_and_their_methods():
    assert {"skcxr.PretrainedCNNClassifier.fit", "skcxr.FeatureExtractorTransformer.transform",
            "skcxr.images.check_images"} <= set(NAMES)
    assert not any(n.endswith((".get_params", ".set_output")) for n in NAMES)  # sklearn's

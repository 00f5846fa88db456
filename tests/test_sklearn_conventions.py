"""scikit-learn's conventions (issue 22, item 6): fitted state, feature names with pandas
output, the HTML repr and the tags that describe image input.

The full check suite on array inputs is ``test_estimator_checks.py``; numpydoc validation of
the public docstrings is ``test_docstrings.py``.
"""

import pickle
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

from skcxr import FeatureExtractorTransformer, PretrainedCNNClassifier

_TINY = dict(backbone="test_efficientnet", weights=None, random_state=0, precision="fp32",
             engine="torch", image_size=32, batch_size=16)
ESTIMATORS = [FeatureExtractorTransformer(**_TINY),
              PretrainedCNNClassifier(**_TINY, max_epochs=1)]
_ids = pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)


def _images(n=8, shape=(32, 32), seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, *shape), dtype=np.uint8)


_Y = np.array([0, 1] * 4)


def _attribute_rule(est):
    """sklearn's own test where an estimator defines no ``__sklearn_is_fitted__``."""
    return any(v.endswith("_") and not v.startswith("__") for v in vars(est))


@_ids
def test_sklearn_is_fitted_agrees_with_check_is_fitted(estimator):
    est = clone(estimator)
    assert est.__sklearn_is_fitted__() is False and not _attribute_rule(est)
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    est.fit(_images(), _Y)
    assert est.__sklearn_is_fitted__() is True and _attribute_rule(est)
    check_is_fitted(est)
    assert pickle.loads(pickle.dumps(est)).__sklearn_is_fitted__()
    assert est.set_params(batch_size=4).__sklearn_is_fitted__()  # a parameter changes nothing
    assert not clone(est).__sklearn_is_fitted__()


@_ids
def test_a_failed_fit_leaves_an_unfitted_estimator_unfitted(estimator):
    est = clone(estimator)
    bad = _images().astype(np.float64) * 2  # floats outside [0, 1]: rejected before any work
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.fit(bad, _Y)
    assert not est.__sklearn_is_fitted__()
    with pytest.raises(NotFittedError):
        check_is_fitted(est)


def test_feature_names_out_with_pandas_output():
    fe = clone(ESTIMATORS[0])
    with pytest.raises(NotFittedError):
        fe.get_feature_names_out()
    X = _images()
    df = fe.set_output(transform="pandas").fit_transform(X)
    names = fe.get_feature_names_out()
    assert isinstance(df, pd.DataFrame) and df.shape == (8, fe.n_features_out_)
    assert list(df.columns) == list(names) and names.dtype == object
    assert names[0] == "featureextractortransformer0"
    assert (df.dtypes == np.float32).all()
    np.testing.assert_array_equal(df.to_numpy(), fe.set_output(transform="default").transform(X))
    # the names travel through a pipeline with pandas output
    pipe = make_pipeline(clone(ESTIMATORS[0]), StandardScaler()).set_output(transform="pandas")
    out = pipe.fit_transform(X)
    assert list(out.columns) == list(pipe.get_feature_names_out()) == list(names)


@_ids
def test_html_repr_renders_and_never_links_to_scikit_learn_docs(estimator):
    """sklearn links an estimator's HTML repr to its API page when ``_doc_link_module`` is
    the estimator's package and ``_doc_link_template`` says where that page is hosted. skcxr
    declares no hosted documentation URL yet (no ``[project.urls]``, no ``html_baseurl``), so
    there is no link, and in particular none into scikit-learn's own docs."""
    html = clone(estimator)._repr_html_()
    assert type(estimator).__name__ in html
    assert not [link for link in re.findall(r'href="([^"]*)"', html)
                if "scikit-learn.org" in link]
    assert estimator._get_doc_link() == ""


@_ids
def test_tags_describe_image_input(estimator):
    tags = get_tags(estimator)
    inp = tags.input_tags
    assert (inp.two_d_array, inp.three_d_array, inp.string) == (False, True, True)
    assert inp.positive_only and not inp.allow_nan and not inp.sparse
    assert tags.requires_fit
    if isinstance(estimator, PretrainedCNNClassifier):
        assert tags.estimator_type == "classifier" and tags.target_tags.required
        assert tags.classifier_tags.multi_label
    else:
        assert tags.estimator_type is None and not tags.target_tags.required
        assert tags.transformer_tags is not None


@_ids
def test_the_input_tags_are_true(estimator, sample_paths):
    """three_d_array: (n, H, W) and (n, H, W, C) arrays fit; string: paths fit; two_d_array
    False: an (n, d) table is refused; positive_only, allow_nan False: negative or NaN
    pixels are refused."""
    paths, y = sample_paths
    for X, target in [(_images(), _Y), (_images(shape=(32, 40, 3)), _Y),
                      (_images(shape=(32, 32, 1)), _Y), (paths, y)]:
        assert clone(estimator).fit(X, target).__sklearn_is_fitted__()
    table = np.random.RandomState(0).uniform(size=(8, 5))
    with pytest.raises(ValueError, match=re.escape("(n, H, W) or (n, H, W, C)")):
        clone(estimator).fit(table, _Y)
    negative = _images().astype(np.float64) / 255 - 0.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        clone(estimator).fit(negative, _Y)
    with pytest.raises(ValueError, match="NaN"):
        clone(estimator).fit(np.full((8, 32, 32), np.nan), _Y)

"""What both estimators share, in one private base class.

imbalanced-learn's ``BaseSampler`` is the model: the public method (``fit``) validates and
reads the data, a private part does the estimator's own work. :class:`CXREstimator` holds
what :class:`~skcxr.PretrainedCNNClassifier` and :class:`~skcxr.FeatureExtractorTransformer`
both do: the opening of every ``fit`` (every parameter checked, the runtime resolved, ``X``
checked, in that order, before any image is decoded), the runtime and call options of
``predict``/``transform``, loading the backbone with its preprocessing, the input tags, and
persistence.

Persistence policy: a fitted estimator saves its state as arrays and plain types
(:mod:`skcxr._persistence`: networks as a recipe and their weights), with the skcxr version
that wrote it, the same for pickle, joblib and ``skops.io``; it loads in the same minor
version (``0.1.x`` -> ``0.1.y``), and in any other one loading stops with an error that says
which version wrote it. Nothing inside is kept compatible across minor versions (the
package is pre-1.0): refit, or load with the version that wrote it
(``pip install "skcxr==X.Y.*"``).
"""

from __future__ import annotations

from sklearn.base import BaseEstimator

from . import _runtime, _workers
from ._disk import resolve_location
from ._params import SHARED_HEAD, SHARED_TAIL, validate_params
from ._persistence import loaded_state, saved_state
from ._preprocessing import make_preprocessing
from ._runtime import CallOptions, Execution
from ._version import __version__
from .backbones import load_backbone
from .images import check_images


class PersistenceError(TypeError):
    """A pickled estimator was written by a skcxr version this one cannot load."""


def _minor(version: str) -> tuple:
    return tuple(version.split(".")[:2])


class CXREstimator(BaseEstimator):
    """The private base of both skcxr estimators (see the module docstring).

    Subclasses set ``_parameter_table`` (their constraint table) and ``_parameter_checks``
    (the combination checks of :mod:`skcxr._params`), take the shared parameters
    (:data:`~skcxr._params.SHARED_HEAD` first, :data:`~skcxr._params.SHARED_TAIL` last, in
    that order) and implement ``fit`` through :meth:`_begin_fit`.
    """

    _parameter_table: dict = {}
    _parameter_checks: tuple = ()
    _shared_head = SHARED_HEAD
    _shared_tail = SHARED_TAIL

    def _begin_fit(self, X):
        """The opening of every ``fit``: every parameter, then the runtime this machine can
        do, then ``X`` (every check that needs no decoding): ``(params, execution, source)``.
        """
        _workers.fit_started()
        params = validate_params(self)
        self._execution()  # what this machine cannot do is said before any file is read
        source = check_images(X)
        return params, self._execution(len(source)), source

    def _execution(self, n_images: int | None = None) -> Execution:
        """Where and how this call on ``n_images`` images computes (resolved again at every
        call, so a fitted model follows ``set_params(device=...)``, and ``engine="auto"``
        follows the call's size)."""
        return _runtime.resolve(self.device, self.precision, self.engine, n_images)

    def _options(self, desc: str, verbose: bool | None = None) -> CallOptions:
        """How this call streams its images (``batch_size``, ``num_workers``, ``cache``,
        ``memory``, progress bars)."""
        return CallOptions.of(self, resolve_location(self.memory), desc=desc, verbose=verbose)

    def _load(self, seed: int, pooling: str = "avg"):
        """The backbone (``backbone``, ``weights``, ``in_chans``) and its preprocessing
        (``image_size``, ``in_chans``, ``resize``, ``normalize``, ``intensity``)."""
        backbone = load_backbone(self.backbone, self.weights, in_chans=self.in_chans,
                                 pooling=pooling, random_state=seed)
        prep = make_preprocessing(backbone.data_config, image_size=self.image_size,
                                  in_chans=self.in_chans, resize=self.resize,
                                  normalize=self.normalize, intensity=self.intensity)
        return backbone, prep

    def _set_fitted(self, fitted: dict) -> None:
        """Set the fitted attributes together, after everything that can fail: a failed or
        interrupted ``fit`` leaves the estimator as it was."""
        for name, value in fitted.items():
            setattr(self, name, value)
        _workers.fit_finished()

    def __sklearn_is_fitted__(self) -> bool:
        """Whether a ``fit`` has completed, what ``sklearn.utils.validation.check_is_fitted``
        asks: every ``fit`` sets ``module_`` with the rest of its fitted state, together and
        only once it has succeeded (:meth:`_set_fitted`)."""
        return hasattr(self, "module_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # X is images: paths (1-D, or an (n, 1) column: ``string``) or pixel arrays
        # (n, H, W[, C]): ``three_d_array`` (as sklearn's PatchExtractor), never an
        # (n, n_features) table. Pixels are non-negative (uint8/uint16, or floats in [0, 1]).
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.positive_only = True
        return tags

    def __getstate__(self):
        state = saved_state(super().__getstate__())
        state["_skcxr_version"] = __version__
        return state

    def __setstate__(self, state):
        written = state.pop("_skcxr_version", None)
        if written is None or _minor(written) != _minor(__version__):
            raise PersistenceError(
                f"This {type(self).__name__} was pickled by skcxr "
                f"{written or 'before 0.1.0.dev0 versioned its pickles'}; this is skcxr "
                f"{__version__}, and a model loads in the skcxr minor version that wrote it "
                f"({'.'.join(_minor(written)) + '.*' if written else 'this one'}) only. "
                "Refit it with this version, or load it with the one that wrote it.")
        super().__setstate__(loaded_state(state))

"""How a value is checked: constraint kinds, ``validate``, the seed helper, the input errors.

The allowed values of each parameter live with the concept they belong to (resize modes in
:mod:`skcxr.images`, devices in :mod:`skcxr._runtime`, ...), written with the constraint
kinds below; :mod:`skcxr._params` assembles them into one table per estimator.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (corrupt, truncated, unsupported).

    Defined here, below every module that reads or caches images, so that all of them can
    name it; public as ``skcxr.ImageReadError`` and ``skcxr.images.ImageReadError``.
    """


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a value it may not have (a ValueError and a TypeError, as sklearn's)."""


# --------------------------------------------------------------------------- constraints


class Verdict(NamedTuple):
    """What a constraint says of a value: whether it fits, and why not (may be empty)."""

    ok: bool
    reason: str = ""


VALID = Verdict(True)
INVALID = Verdict(False)


def invalid(reason: str) -> Verdict:
    """The value does not fit, for this reason (added to the error message)."""
    return Verdict(False, reason)


class Constraint:
    """One allowed form of a value: ``verdict(value)`` says whether it fits."""

    description = ""

    def verdict(self, value) -> Verdict:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.description


class Options(Constraint):
    """One of a few values (booleans never pass for ints: ``True == 1``)."""

    def __init__(self, *values):
        self.values = values
        self.description = (repr(values[0]) if len(values) == 1
                            else f"one of {', '.join(map(repr, values))}")

    def verdict(self, value):
        return VALID if any(_same(v, value) for v in self.values) else INVALID


def _same(option, value) -> bool:
    if option is None or isinstance(option, bool):
        return value is option
    if isinstance(option, str):
        return isinstance(value, str) and value == option
    return (isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))
            and value == option)


class Interval(Constraint):
    """An int (``kind="int"``) or a real number (``kind="real"``) in a range."""

    def __init__(self, kind: str, low=None, high=None, closed: str = "both"):
        self.kind, self.low, self.high, self.closed = kind, low, high, closed
        noun = "an int" if kind == "int" else "a float"
        lo_in, hi_in = closed in ("both", "left"), closed in ("both", "right")
        if high is None:
            self.description = noun if low is None else f"{noun} {'>=' if lo_in else '>'} {low}"
        else:
            self.description = (f"{noun} in {'[' if lo_in else '('}{low}, {high}"
                                f"{']' if hi_in else ')'}")

    def verdict(self, value):
        if isinstance(value, (bool, np.bool_)):
            return INVALID
        types = Integral if self.kind == "int" else Real
        if not isinstance(value, types):
            return INVALID
        if self.kind == "real" and not math.isfinite(float(value)):
            return INVALID
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return INVALID
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return INVALID
        return VALID


class Fraction(Interval):
    """A float (not an int) in a range: ``train_size=0.5`` is a fraction, ``1`` a row count."""

    def verdict(self, value):
        if isinstance(value, Integral):
            return INVALID
        return super().verdict(value)


class InstanceOf(Constraint):
    def __init__(self, types, description: str):
        self.types, self.description = types, description

    def verdict(self, value):
        if isinstance(value, bool) and bool not in np.atleast_1d(self.types).tolist():
            return INVALID
        return VALID if isinstance(value, self.types) else INVALID


class Check(Constraint):
    """A value checked by ``fn(value) -> Verdict`` (:data:`VALID`, :data:`INVALID` or
    :func:`invalid` with a reason)."""

    def __init__(self, fn, description: str):
        self.fn, self.description = fn, description

    def verdict(self, value):
        return self.fn(value)


NONE = Options(None)
BOOL = InstanceOf((bool, np.bool_), "a bool")
DICT = InstanceOf(dict, "a dict")
CALLABLE = Check(lambda v: VALID if callable(v) else INVALID, "a callable")
#: ``random_state`` everywhere (see :func:`as_seed`)
RANDOM_STATE = [NONE, Interval("int", 0, 2**32 - 1),
                InstanceOf(np.random.RandomState, "a numpy RandomState")]


def validate(values: dict, constraints: dict, owner: str) -> None:
    """Check ``values[name]`` against ``constraints[name]`` for every name in ``values``.

    Raises
    ------
    InvalidParameterError
        Naming the first parameter that fits none of its constraints, what it may be and
        what it got.
    """
    for name, value in values.items():
        verdicts = [c.verdict(value) for c in constraints[name]]
        if any(v.ok for v in verdicts):
            continue
        allowed = " or ".join(str(c) for c in constraints[name])
        why = "; ".join(v.reason for v in verdicts if v.reason)
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be {allowed}; got {value!r}"
            + (f" ({why})." if why else "."))


def as_seed(random_state) -> int:
    """``random_state`` (None, int or RandomState) -> an int seed, as the package uses it.

    An int is used as given (so ``random_state=0`` seeds torch with 0); None draws from
    numpy's global RNG and a RandomState from itself, as scikit-learn's
    ``check_random_state`` does.
    """
    if random_state is None:
        return int(np.random.randint(2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    return int(random_state)

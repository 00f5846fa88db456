"""The one way skcxr's figures reach matplotlib (an optional dependency): :func:`pyplot`,
with an error that says how to install it."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot``; an ImportError naming the install when matplotlib is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("skcxr.plotting needs matplotlib: pip install matplotlib") from exc
    return plt

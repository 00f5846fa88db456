"""Views of an image: the identity, a left-right flip and small shifts (:data:`VIEWS`),
exact and deterministic, so each view's frozen outputs can be cached. Test-time
augmentation averages the probabilities of the views of ``tta`` (:data:`TTA_PRESETS`);
``augment="views"`` draws one per image and epoch. Public in :mod:`skcxr.images`
(:data:`~skcxr.images.VIEWS`, :func:`~skcxr.images.apply_view`); the preprocessing step
that shows a view is :class:`skcxr._steps.View`.
"""

from __future__ import annotations

import torch

from ._validation import INVALID, NONE, VALID, Check

#: Test-time augmentation views: the identity, a horizontal flip, and shifts by
#: ``SHIFT`` of the image size with black filling in (exact, deterministic, cacheable).
VIEWS = ("none", "hflip", "shift_left", "shift_right", "shift_up", "shift_down")
SHIFT = 0.04
#: ``tta=`` presets: the views whose probabilities are averaged.
TTA_PRESETS = {"flip": ("none", "hflip"), "shift": ("none",) + VIEWS[2:], "flip+shift": VIEWS}


def apply_view(t: torch.Tensor, view: str) -> torch.Tensor:
    """Show one ``(C, H, W)`` image (or ``(n, C, H, W)`` batch) as seen in ``view``.

    Parameters
    ----------
    t : torch.Tensor of shape (C, H, W) or (n, C, H, W)
        The image or batch.
    view : str
        One of :data:`VIEWS`: "none", "hflip", or a shift by :data:`SHIFT` of the size
        ("shift_left", "shift_right", "shift_up", "shift_down") with black filling in.

    Returns
    -------
    torch.Tensor
        The view, of ``t``'s shape and dtype (``t`` itself for "none").
    """
    if view == "none":
        return t
    if view == "hflip":
        return t.flip(-1)
    h, w = t.shape[-2:]
    dy, dx = {"shift_left": (0, -1), "shift_right": (0, 1), "shift_up": (-1, 0),
              "shift_down": (1, 0)}[view]
    dy, dx = dy * max(1, round(SHIFT * h)), dx * max(1, round(SHIFT * w))
    out = torch.zeros_like(t)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        t[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def tta_views(tta) -> tuple[str, ...]:
    """The views of a (validated) ``tta`` value: None -> ("none",)."""
    if tta is None:
        return ("none",)
    return TTA_PRESETS[tta] if isinstance(tta, str) else tuple(tta)


def _tta(value):
    if isinstance(value, str):
        return VALID if value in TTA_PRESETS else INVALID
    ok = (isinstance(value, (tuple, list)) and len(value) > 0
          and all(isinstance(v, str) and v in VIEWS for v in value)
          and len(set(value)) == len(value))
    return VALID if ok else INVALID


#: The allowed values of the classifier's ``tta``.
TTA_CONSTRAINT = [NONE, Check(_tta, f"one of {tuple(TTA_PRESETS)} or a tuple of views from "
                                    f"{VIEWS}")]

"""Training-time augmentation presets (torchvision transforms v2) for the studies' protocols.

Augmentations apply to one ``(C, H, W)`` image tensor after resizing (uint8 where the source
is 8-bit), on training rows only; validation and prediction never see them.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ._views import VIEWS, apply_view


class RandomView:
    """Each call shows the image in one of ``views`` (:data:`skcxr.images.VIEWS`), drawn
    uniformly from the global torch RNG.

    The preset ``augment="views"``. Its views are exact, deterministic pixel operations, so
    where the frozen prefix is fixed a fit computes each view's prefix outputs once per
    image (cached like ``tta``'s) and every epoch draws from them: the augmentation costs no
    prefix pass per epoch (see :func:`skcxr._training.training_datasets`). Elsewhere it is an
    ordinary per-image augmentation.
    """

    def __init__(self, views=VIEWS):
        self.views = tuple(views)

    def draw(self) -> str:
        return self.views[int(torch.randint(len(self.views), ()))]

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return apply_view(t, self.draw())

    def __repr__(self) -> str:
        return f"RandomView({self.views})"

#: The ``augment`` presets: name -> factory taking the input size.
PRESETS = {
    # study 000
    "flip": lambda size: v2.RandomHorizontalFlip(),
    # studies 001 and 003
    "standard": lambda size: v2.Compose([
        v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
        v2.RandomHorizontalFlip(),
    ]),
    # exact views (flip, 4% shifts): cached prefix outputs, no prefix pass per epoch
    "views": lambda size: RandomView(),
    # study 002
    "crop": lambda size: v2.Compose([
        v2.RandomResizedCrop(list(size), scale=(0.7, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]),
}


def make_augment(augment, size: tuple[int, int]):
    """Resolve the (validated) ``augment`` parameter into a callable or None.

    ``"flip"``: random horizontal flip. ``"standard"``: rotation +-10 degrees, shift 10%,
    zoom 0.9-1.1, shear 5 degrees, brightness/contrast 0.2 and horizontal flip. ``"crop"``:
    RandomResizedCrop to the input size (scale 0.7-1) and horizontal flip. ``"views"``: one of
    the exact views of ``tta`` (identity, left-right flip, shifts by 4%) per image and epoch
    (:class:`RandomView`), whose prefix outputs are cached. Any callable
    taking and returning an image tensor (e.g. a ``torchvision.transforms.v2.Compose``) is
    used as given.
    """
    if augment is None or callable(augment):
        return augment
    return PRESETS[augment](size)

"""Training-time augmentation presets (torchvision transforms v2) for the studies' protocols.

Augmentations apply to one ``(C, H, W)`` image tensor after resizing (uint8 where the source
is 8-bit), on training rows only; validation and prediction never see them.
"""

from __future__ import annotations

from torchvision.transforms import v2

PRESETS = ("flip", "standard", "crop")


def make_augment(augment, size: tuple[int, int]):
    """Resolve the ``augment`` parameter into a callable or None.

    ``"flip"``: random horizontal flip (study 000). ``"standard"``: rotation +-10 degrees,
    shift 10%, zoom 0.9-1.1, shear 5 degrees, brightness/contrast 0.2 and horizontal flip
    (studies 001 and 003). ``"crop"``: RandomResizedCrop to the input size (scale 0.7-1) and
    horizontal flip (study 002). Any callable taking and returning an image tensor
    (e.g. a ``torchvision.transforms.v2.Compose``) is used as given.
    """
    if augment is None:
        return None
    if callable(augment):
        return augment
    if augment == "flip":
        return v2.RandomHorizontalFlip()
    if augment == "standard":
        return v2.Compose([
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.RandomHorizontalFlip(),
        ])
    if augment == "crop":
        return v2.Compose([
            v2.RandomResizedCrop(list(size), scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ])
    raise ValueError(
        f"augment must be None, one of {PRESETS} or a callable transform; got {augment!r}."
    )

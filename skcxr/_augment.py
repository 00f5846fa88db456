"""Training-time augmentation presets (torchvision transforms v2) for the studies' protocols.

Augmentations apply to one ``(C, H, W)`` image tensor after resizing (uint8 where the source
is 8-bit), on training rows only; validation and prediction never see them.
"""

from __future__ import annotations

from torchvision.transforms import v2

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
    RandomResizedCrop to the input size (scale 0.7-1) and horizontal flip. Any callable
    taking and returning an image tensor (e.g. a ``torchvision.transforms.v2.Compose``) is
    used as given.
    """
    if augment is None or callable(augment):
        return augment
    return PRESETS[augment](size)

"""Optimizers and learning-rate schedules by name: the tables behind the classifier's
``optimizer`` and ``lr_scheduler`` parameters, and :class:`LRShape`, the one-cycle and
cosine-with-warm-up schedules over a fit's batches. Plain torch: :mod:`skcxr._training`
hands these to skorch.
"""

from __future__ import annotations

import numpy as np
import torch

#: ``optimizer`` -> class, and the defaults skcxr adds to ``optimizer_kwargs``.
OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                     "sgd": torch.optim.SGD}
OPTIMIZER_DEFAULTS = {"sgd": {"momentum": 0.9}}


class LRShape:
    """A learning-rate schedule over a fit's batches, as the factor of each parameter
    group's ``lr`` at step ``t`` (for ``LambdaLR``; an object, not a function, so the
    scheduler's ``state_dict`` keeps it as data and a resumed fit continues it).

    ``"onecycle"`` (fastai's ``fit_one_cycle``, Smith 2018): from ``1/div`` up to 1 over
    the first ``pct_start`` of the steps, then down to ``1/div_final``, both halves cosine.
    ``"cosine_warmup"``: linear from ``1/warmup_steps`` up to 1 over the first ``warmup``
    of the steps, then cosine down to 0.
    """

    def __init__(self, kind: str, total_steps: int, *, pct_start: float = 0.25,
                 div: float = 25.0, div_final: float = 1e5, warmup: float = 0.05):
        self.kind, self.total_steps = kind, max(1, int(total_steps))
        self.pct_start, self.div, self.div_final = float(pct_start), float(div), float(div_final)
        self.warmup = float(warmup)

    def __call__(self, step: int) -> float:
        last = max(1, self.total_steps - 1)
        if self.kind == "onecycle":
            up = max(1, round(self.pct_start * last))
            if step < up:
                return _cosine(1 / self.div, 1.0, step / up)
            return _cosine(1.0, 1 / self.div_final, min(1.0, (step - up) / max(1, last - up)))
        warm = max(1, round(self.warmup * self.total_steps))
        if step < warm:
            return (step + 1) / warm
        return _cosine(1.0, 0.0, min(1.0, (step - warm) / max(1, last - warm)))


def _cosine(start: float, end: float, p: float) -> float:
    return float(end + (start - end) * (1 + np.cos(np.pi * p)) / 2)


def one_cycle(optimizer, total_steps, pct_start=0.25, div=25.0, div_final=1e5, last_epoch=-1):
    """``lr_scheduler="onecycle"``: :class:`LRShape` ``"onecycle"``, stepped every batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRShape(
        "onecycle", total_steps, pct_start=pct_start, div=div, div_final=div_final),
        last_epoch=last_epoch)


def cosine_warmup(optimizer, total_steps, warmup=0.05, last_epoch=-1):
    """``lr_scheduler="cosine_warmup"``: :class:`LRShape` ``"cosine_warmup"``, stepped every
    batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRShape("cosine_warmup", total_steps,
                                                                warmup=warmup),
                                             last_epoch=last_epoch)


#: ``lr_scheduler`` -> torch scheduler, and the defaults skcxr adds to
#: ``lr_scheduler_kwargs`` (``T_max`` of "cosine" is ``max_epochs``).
SCHEDULER_CLASSES = {"step": torch.optim.lr_scheduler.StepLR,
                     "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
                     "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
                     "onecycle": one_cycle, "cosine_warmup": cosine_warmup}
SCHEDULER_DEFAULTS = {"step": {"step_size": 10, "gamma": 0.1}, "cosine": {},
                      "plateau": {"patience": 1}, "onecycle": {}, "cosine_warmup": {}}
#: schedules over batches (``total_steps``: ``max_epochs`` times the batches of an epoch)
BATCH_SCHEDULERS = ("onecycle", "cosine_warmup")

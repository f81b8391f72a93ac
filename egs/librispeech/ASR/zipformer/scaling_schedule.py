"""ScheduledFloat: a float that follows a schedule of the training batch count.

Zipformer2's dropout rates, skip rates and balancer limits are piecewise-linear
functions of the batch count (icefall's scaling.py); ``set_batch_count(model,
n)`` moves every schedule in a model.  In eval mode a schedule gives its default.
"""

from typing import Optional, Tuple, Union

import torch
from torch import nn


class PiecewiseLinear:
    """y(x) through the points (x0, y0), (x1, y1), ... (x increasing); constant outside."""

    def __init__(self, *points: Tuple[float, float]):
        self.pairs = [(float(x), float(y)) for x, y in points]
        increasing = all(a[0] < b[0] for a, b in zip(self.pairs, self.pairs[1:]))
        assert self.pairs and increasing, self.pairs

    def __call__(self, x: float) -> float:
        pairs = self.pairs
        if x <= pairs[0][0]:
            return pairs[0][1]
        for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return pairs[-1][1]


class ScheduledFloat(nn.Module):
    """A float that depends on the training batch count: use it as ``float(module.p)``.

    It is a Module only so that ``model.modules()`` reaches it; the training
    loop sets ``batch_count`` (see set_batch_count).  In eval mode, or before
    the batch count is set, the value is ``default``.

    Example: ``ScheduledFloat((0.0, 0.3), (20000.0, 0.1))`` goes from 0.3 at
    batch 0 to 0.1 at batch 20000 and stays there.
    """

    def __init__(self, *points: Tuple[float, float], default: float = 0.0):
        super().__init__()
        self.batch_count: Optional[float] = None
        self.name: Optional[str] = None
        self.default = default
        self.schedule = PiecewiseLinear(*points)

    def extra_repr(self) -> str:
        return f"batch_count={self.batch_count}, schedule={self.schedule.pairs}"

    def __float__(self) -> float:
        if self.batch_count is None or not self.training or torch.jit.is_tracing():
            return float(self.default)
        return self.schedule(self.batch_count)


FloatLike = Union[float, ScheduledFloat]


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Tell every ScheduledFloat (and module with a ``batch_count``) of `model` the batch count.

    icefall's train.py calls this every 10 batches with
    ``batch_idx_train * max_duration * world_size / ref_duration``; it also
    names the modules for their diagnostics.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    for name, module in model.named_modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
        if hasattr(module, "name"):
            module.name = name

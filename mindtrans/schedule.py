"""Learning-rate schedules: linear warm-up, then inverse-square-root or linear decay."""
import math

import mindspore as ms
from mindspore import nn, ops

from mindtrans.train_config import SCHEDULES


def learning_rate(step: int, peak: float, warmup: int, kind: str = "inverse_sqrt", total: int = None) -> float:
    """The rate at optimizer step `step` (0-based), for plots and tests.

    inverse_sqrt: peak * min((step+1)/warmup, sqrt(warmup/(step+1))) (the paper's schedule,
    rescaled so that its maximum is `peak`); linear: warm-up, then straight down to 0 at `total`.
    """
    s = step + 1
    warm = s / warmup if warmup > 0 else 1.0
    if kind == "inverse_sqrt":
        return peak * min(warm, math.sqrt(warmup / s) if warmup > 0 else 1.0 / math.sqrt(s))
    if kind == "linear":
        if total is None:
            raise ValueError("the linear schedule needs the total number of steps")
        return peak * min(warm, max(0.0, (total - s) / max(1, total - warmup)))
    if kind == "constant":
        return peak * min(warm, 1.0)
    raise ValueError(f"unknown schedule {kind!r}: use one of {SCHEDULES}")


class WarmupSchedule(nn.learning_rate_schedule.LearningRateSchedule):
    """`learning_rate` as a MindSpore schedule, evaluated inside the compiled train step."""

    def __init__(self, peak: float, warmup: int, kind: str = "inverse_sqrt", total: int = None):
        super().__init__()
        learning_rate(0, peak, warmup, kind, total)  # validates the arguments
        self.peak, self.warmup, self.kind = float(peak), float(max(warmup, 0)), kind
        self.total = float(total or 1)

    def construct(self, global_step):
        s = global_step.astype(ms.float32) + 1.0
        warm = s / self.warmup if self.warmup > 0 else ops.ones_like(s)
        if self.kind == "inverse_sqrt":
            decay = ops.sqrt(self.warmup / s) if self.warmup > 0 else ops.rsqrt(s)
        elif self.kind == "linear":
            decay = ops.maximum((self.total - s) / max(1.0, self.total - self.warmup), 0.0)
        else:
            decay = ops.ones_like(s)
        return self.peak * ops.minimum(warm, decay)

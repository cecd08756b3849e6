"""An exponential moving average of the weights (YOLOX's and Ultralytics' ModelEMA), used for
validation, best.pt and so prediction.

After every optimizer step each floating-point tensor of the average moves towards the
model's: ``ema = d * ema + (1 - d) * model`` with the decay ramped up from 0, ``d = decay *
(1 - exp(-updates / warmup))``, so that the average follows the fast-changing early weights
and settles later; integer buffers (BatchNorm's batch counter) are copied. The average and its
update count are saved in last.pt, so a resumed run continues it exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from rcnnlab.engine.loop import HookBase


def ema_decay(updates: int, decay: float, warmup: int) -> float:
    """The decay of the `updates`-th update: ``decay * (1 - exp(-updates / warmup))``."""
    return decay * (1.0 - math.exp(-updates / warmup))


class WeightAverage(HookBase):
    """Keeps the moving average of `model`'s weights and makes it the loop's evaluated model."""

    name = "ema"

    def __init__(self, model: nn.Module, *, decay: float, warmup: int):
        self.decay, self.warmup = decay, warmup
        self.average = copy.deepcopy(model).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def before_train(self) -> None:
        """Validation and best.pt use the average from now on."""
        self.loop.eval_model = self.average

    @torch.no_grad()
    def after_step(self) -> None:
        """Move the average towards the weights the optimizer just set."""
        self.updates += 1
        d = ema_decay(self.updates, self.decay, self.warmup)
        model_state = self.loop.model.state_dict()
        for key, value in self.average.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(model_state[key].detach(), alpha=1.0 - d)
            else:
                value.copy_(model_state[key])

    def state_dict(self) -> dict:
        """The average's weights and its update count."""
        return {"weights": self.average.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore them."""
        self.average.load_state_dict(state["weights"])
        self.updates = state["updates"]

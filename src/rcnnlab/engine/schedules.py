"""Learning-rate schedules, stepped once per iteration (warm-up is in iterations)."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_factor(
    *,
    schedule: str,
    total_iters: int,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    eta_min: float = 0.0,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The multiplier of the base LR at iteration `it` (for torch's LambdaLR).

    Linear warm-up from `warmup_factor` to 1 over `warmup_iters`, then
    - cosine: 1 -> `eta_min` over the remaining iterations (eta_min is a share of the base LR);
    - multistep: multiplied by `gamma` at each milestone (given in iterations);
    - constant: 1.
    """
    if schedule not in ("cosine", "multistep", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}: use cosine, multistep or constant")
    steps = sorted(milestones or [])
    warmup_iters = min(warmup_iters, max(total_iters - 1, 0))

    def factor(it: int) -> float:
        if it < warmup_iters:
            alpha = it / warmup_iters
            return warmup_factor * (1 - alpha) + alpha
        if schedule == "cosine":
            span = max(total_iters - warmup_iters, 1)
            progress = min((it - warmup_iters) / span, 1.0)
            return eta_min + (1 - eta_min) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "multistep":
            return gamma ** sum(it >= m for m in steps)
        return 1.0

    return factor

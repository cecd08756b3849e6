"""Figures of what a training method did over a run (matplotlib, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rcnnlab.methods.scale_weighting import ACTION_NAMES, IntervalRecord


def plot_scale_weights(history: Sequence[IntervalRecord], out_png: Path) -> Path:
    """Multi-scale loss weighting over training: the weight of each FPN level, the interval
    loss per level, and (RLO) the action probabilities, against iteration."""
    from matplotlib.figure import Figure

    its = [r.iteration for r in history]
    rlo = any(r.probabilities for r in history)
    fig = Figure(figsize=(5 * (3 if rlo else 2), 3.6), layout="constrained")
    axes = fig.subplots(1, 3 if rlo else 2, squeeze=False)[0]
    levels = len(history[0].weights)
    for i in range(levels):
        # a weight holds from the end of one interval to the end of the next: draw it as steps
        axes[0].step(its, [r.weights[i] for r in history], where="post", label=f"level {i}")
        axes[1].plot(its, [r.interval_loss[i] for r in history], marker=".", label=f"level {i}")
    axes[0].set(xlabel="iteration", ylabel="loss weight", title="Weight per FPN level")
    axes[1].set(xlabel="iteration", ylabel="mean loss over the interval", yscale="log",
                title="Interval loss per FPN level")
    if rlo:
        rows = [(r.iteration, r.probabilities) for r in history if r.probabilities]
        for a, name in enumerate(ACTION_NAMES):
            axes[2].step([it for it, _ in rows], [p[a] for _, p in rows], where="post",
                         label=f"a{a} {name}")
        axes[2].set(xlabel="iteration", ylabel="probability", ylim=(0, 1),
                    title="RLO action probabilities")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png

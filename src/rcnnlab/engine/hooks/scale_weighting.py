"""Multi-scale loss weighting (AVW / RLO, Luo et al.): the loss to minimise becomes the weighted
sum of the per-FPN-level losses, the weights updated every `train.scale_interval` iterations
(:mod:`rcnnlab.methods.scale_weighting` holds the method)."""

from __future__ import annotations

from torch import Tensor

from rcnnlab.engine.hooks.metrics import MetricsWriter
from rcnnlab.engine.loop import HookBase
from rcnnlab.methods.scale_weighting import ScaleLossWeighting
from rcnnlab.models.heads import level_losses
from rcnnlab.runs.distributed import all_reduce_mean
from rcnnlab.runs.rundir import RunDir, append_csv_row


class ScaleWeighting(HookBase):
    """Weights the step's per-level losses; logs each interval to `scale_weights.csv` and
    TensorBoard, and the current weights (`w_level<i>`) in the epoch's metrics. Under
    data-parallel training every rank updates the weights from the levels' losses averaged over
    the ranks, so all ranks keep the same weights; only rank 0 (given `run` and `writer`)
    writes."""

    name = "scale_weighting"

    def __init__(self, weighting: ScaleLossWeighting, run: RunDir | None,
                 writer: MetricsWriter | None):
        self.weighting, self.run, self.writer = weighting, run, writer

    def adjust_loss(self, outputs: dict[str, Tensor], loss: Tensor) -> Tensor:
        """The weighted sum of the levels' losses (which sum to `loss` unweighted)."""
        levels = level_losses(outputs)
        weighted = self.weighting.weighted_total(list(levels))
        record = self.weighting.update(all_reduce_mean(levels.detach().tolist()))
        if record is not None and self.run is not None:
            for i, w in enumerate(record.weights):
                self.writer.scalar(f"scale_weighting/w_level{i}", w, record.iteration)
            for a, prob in enumerate(record.probabilities or []):
                self.writer.scalar(f"scale_weighting/p_action{a}", prob, record.iteration)
            append_csv_row(self.run.scale_weights_csv, record.as_row())
        return weighted

    def after_epoch(self) -> None:
        """The weights in force at the end of the epoch."""
        self.loop.row.update({f"w_level{i}": w for i, w in enumerate(self.weighting.weights())})

    def state_dict(self) -> dict:
        """The method's statistics, weights and (RLO) probabilities and random state."""
        return self.weighting.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore them."""
        self.weighting.load_state_dict(state)

"""The epoch's mean training losses: the total, its three groups, the two parts of the anchor
group and every other scalar the model returned (the policy gradient's `pg_*` figures). Each
loss is logged under one name: a group of one loss (`loss_cls`, `loss_bbox`) stands for it."""

from __future__ import annotations

from rcnnlab.engine.loop import HookBase
from rcnnlab.runs.distributed import all_reduce_mean

# The four losses of torchvision's Faster R-CNN, in the order its forward returns them.
RAW_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
# Three groups of them: the RoI head's classification and box regression, and the RPN
# ("anchor") objectness + box terms.
LOSS_GROUPS = {
    "loss_cls": ("loss_classifier",),
    "loss_bbox": ("loss_box_reg",),
    "loss_anchor": ("loss_objectness", "loss_rpn_box_reg"),
}


# Losses that are a group on their own, logged under the group's name only.
_GROUP_NAMED = {keys[0] for keys in LOSS_GROUPS.values() if len(keys) == 1}


def grouped(means: dict[str, float]) -> dict[str, float]:
    """`loss` (the sum of the four) and the three groups, from the four losses' means."""
    row = {"loss": sum(means[k] for k in RAW_LOSSES)}
    row.update({group: sum(means[k] for k in keys) for group, keys in LOSS_GROUPS.items()})
    return row


class StepLosses(HookBase):
    """Averages the model's scalar outputs over the epoch's steps into the metrics row."""

    def before_epoch(self) -> None:
        """Start the epoch's sums."""
        self.sums = dict.fromkeys(RAW_LOSSES, 0.0)
        self.steps = 0

    def after_step(self) -> None:
        """Add this step's scalars (the per-level loss vectors are the weighting's)."""
        for key, value in self.loop.outputs.items():
            if value.dim() == 0:
                self.sums[key] = self.sums.get(key, 0.0) + value.item()
        self.steps += 1

    def after_epoch(self) -> None:
        """Write the total, the groups and the other means (over every rank) into the row."""
        keys = list(self.sums)
        means = dict(zip(keys, all_reduce_mean([self.sums[k] / max(self.steps, 1)
                                                for k in keys]), strict=True))
        self.loop.row.update(grouped(means))
        self.loop.row.update({k: v for k, v in means.items() if k not in _GROUP_NAMED})

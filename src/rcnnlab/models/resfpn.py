"""Residual refinement blocks on top of an FPN backbone.

:class:`ResidualFPNBackbone` wraps any backbone that returns an ``OrderedDict`` of feature maps
with ``out_channels`` channels each (torchvision's ``BackboneWithFPN``) and passes every output
level through its own residual block::

    out = ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x))))))

the block this project was specified with (3x3 conv-BN-ReLU-3x3 conv-BN, identity skip, ReLU).

Design choices:

* **The ReLU after the addition is kept**, as specified, although FPN outputs are signed (the
  FPN ends in a plain 3x3 conv; about half of its activations are negative) and the heads were
  built for signed features: with the block, the heads see non-negative maps. For a detector
  trained from scratch the heads adapt; for a *pretrained* FPN it changes the features at step 0
  (measure before relying on it with COCO weights).
* **Last BN weight initialised to zero** ("zero-gamma", Goyal et al. 2017): the residual branch
  outputs exactly 0 at start, so each block starts as ReLU(x) and learns a correction from
  there. The zero gamma still receives a
  gradient (d out / d gamma = the normalised conv output), so the branch switches itself on.
* **Every level gets a block, the ``pool`` level included.** The RPN head is shared across all
  levels, so all of them should go through the same kind of transform; otherwise, as the blocks
  train, the pool level (a strided copy of the top level) would drift apart in statistics from
  the rest. Blocks are not shared between levels. On a pool map of a few pixels a block costs
  next to nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["ResidualBlock", "ResidualFPNBackbone"]


class ResidualBlock(nn.Module):
    """``ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x))))))`` with the channel count unchanged.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Convs carry no bias: each is followed by a BN whose beta plays that role.
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        # Zero-gamma: the branch outputs 0 at start, so the block starts as ReLU(x).
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Return ReLU(``x`` plus the learned residual)."""
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class ResidualFPNBackbone(nn.Module):
    """Wrap an FPN backbone and refine each of its output levels with a :class:`ResidualBlock`.

    Args:
        backbone: module returning an ``OrderedDict[str, Tensor]`` of feature maps, each with
            ``backbone.out_channels`` channels (e.g. torchvision's ``BackboneWithFPN``).
        level_names: the keys ``backbone`` returns, in order (``["0", "1", "2", "3", "pool"]``
            for a ResNet FPN); one block is created per key.

    Attributes:
        base: the wrapped backbone (its parameters appear under ``base.``).
        blocks: one :class:`ResidualBlock` per level, keyed by level name.
        out_channels: same as the wrapped backbone's, as FasterRCNN requires.
    """

    def __init__(self, backbone: nn.Module, level_names: Sequence[str]) -> None:
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("the wrapped backbone must have an out_channels attribute")
        self.base = backbone
        self.out_channels: int = backbone.out_channels
        self.blocks = nn.ModuleDict(
            {name: ResidualBlock(self.out_channels) for name in level_names}
        )

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Run the wrapped backbone, then each level's block; the keys are unchanged."""
        features = self.base(x)
        if list(features) != list(self.blocks):
            raise RuntimeError(
                f"wrapped backbone returned levels {list(features)}, but blocks were built for "
                f"{list(self.blocks)}; pass the backbone's own level names to ResidualFPNBackbone"
            )
        return OrderedDict((name, self.blocks[name](feat)) for name, feat in features.items())

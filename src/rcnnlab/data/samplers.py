"""Repeat-factor sampling (Gupta, Dollár, Girshick, "LVIS: A Dataset for Large Vocabulary Instance
Segmentation", CVPR 2019, appendix B.2): images holding rare classes are shown more often.

Per class ``r_c = max(1, sqrt(t / f_c))``, ``f_c`` the fraction of training images holding class c;
per image ``r_i = max`` over its classes (1 for an image without boxes). Both the factors and the
per-epoch stochastic rounding follow detectron2's ``RepeatFactorTrainingSampler``
(``repeat_factors_from_category_frequency`` and ``_get_epoch_indices``):
https://github.com/facebookresearch/detectron2/blob/main/detectron2/data/samplers/distributed_sampler.py

Two differences, both because rcnnlab trains on what ``CocoDetection`` yields: ``f_c`` is taken over
all images, negatives included (detectron2 drops images without annotations before counting by
default, ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), and crowd boxes do not count (they are not
training targets). And detectron2's sampler is an infinite stream for iteration-based training,
while :class:`RepeatFactorSampler` yields fixed-length epochs, see its docstring.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import torch
from torch import Tensor

from rcnnlab.data.coco import CocoData


def repeat_factors(data: CocoData, threshold: float) -> Tensor:
    """Float32 [num_images] LVIS repeat factors of ``data.images``, in that order.

    ``threshold`` is ``t``: a class in fewer than a fraction ``t`` of the images is repeated, an
    image whose rarest class has ``f_c = t / 4`` twice (detectron2's LVIS configs use 0.001).
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    classes_of = [
        {a["category_id"] for a in data.annotations.get(img["id"], []) if not a.get("iscrowd", 0)}
        for img in data.images
    ]
    images_with = Counter(c for classes in classes_of for c in classes)
    n = len(data.images)
    class_factor = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in images_with.items()}
    return torch.tensor([max((class_factor[c] for c in classes), default=1.0)
                         for classes in classes_of], dtype=torch.float32)


class RepeatFactorSampler(torch.utils.data.Sampler[int]):
    """Dataset indices, each image repeated ``r_i`` times per epoch in expectation, shuffled.

    One epoch: detectron2's ``_get_epoch_indices`` (each image ``trunc(r_i)`` times, plus once more
    with probability ``frac(r_i)``, one uniform draw per image) then a random permutation, all
    drawn from ``generator`` in detectron2's order. That gives a random length (its mean is
    ``sum(r_i)``), so every epoch is cut to exactly ``len(self) = round(sum(r_i))`` indices: a
    longer draw loses its permuted tail (a uniform random subset), a shorter one is topped up from
    the start of a further draw. Epochs are independent of each other, so a DataLoader's
    ``len(loader) = ceil(len(self) / batch_size)`` (with ``drop_last=False``) holds every epoch, an
    iteration-based LR schedule ends where planned, and an image's expected count per epoch is
    ``r_i`` up to the rounding of the length (a relative ``0.5 / sum(r_i)`` at most) and the
    cut's small dependence on the image's own draw.

    Determinism: indices depend only on the generator's state, as with ``RandomSampler``; saving
    ``generator.get_state()`` between epochs and restoring it on resume reproduces the following
    epochs. Without a generator, each epoch seeds a fresh one from torch's global RNG.
    """

    def __init__(self, repeat_factors: Tensor, generator: torch.Generator | None = None):
        factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        if factors.ndim != 1 or factors.numel() == 0 or (factors < 0).any() or factors.sum() <= 0:
            raise ValueError("repeat_factors must be a non-empty 1-D tensor of non-negative "
                             "factors with a positive sum")
        self.generator = generator
        self._int_part = torch.trunc(factors)
        self._frac_part = factors - self._int_part
        self._length = max(1, round(float(factors.double().sum())))

    def __len__(self) -> int:
        return self._length

    def _draw(self, generator: torch.Generator) -> Tensor:
        """One detectron2 epoch: stochastically rounded repeats, randomly permuted."""
        rands = torch.rand(len(self._frac_part), generator=generator)
        repeats = self._int_part + (rands < self._frac_part).float()
        indices = torch.repeat_interleave(torch.arange(len(repeats)), repeats.long())
        return indices[torch.randperm(len(indices), generator=generator)]

    def __iter__(self) -> Iterator[int]:
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        draws, drawn = [], 0
        while drawn < self._length:
            draws.append(self._draw(generator))
            drawn += len(draws[-1])
        yield from torch.cat(draws)[: self._length].tolist()


class ShardedSampler(torch.utils.data.Sampler[int]):
    """Rank `rank`'s share of each epoch of `sampler`, for data-parallel training.

    Every rank holds an identically seeded `sampler` (a shuffle or a
    :class:`RepeatFactorSampler`), so every rank draws the same epoch; the epoch is padded by
    its own first indices to a multiple of `world_size` (as torch's ``DistributedSampler``
    pads) and rank r takes indices r, r + world_size, ... Together the ranks see the epoch
    once, and the i-th batch of all ranks together is the i-th batch of one process with a
    `world_size` times larger batch, in a different order. The sampler's state stays its
    generator's, saved and restored for resuming as in a single process.
    """

    def __init__(self, sampler: torch.utils.data.Sampler[int], rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        indices = list(self.sampler)
        total = len(self) * self.world_size
        while len(indices) < total:
            indices += indices[: total - len(indices)]
        yield from indices[self.rank:total:self.world_size]

"""Tests for rcnnlab.data.samplers: LVIS repeat factors and the repeat-factor sampler."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from rcnnlab.data.coco import load_coco
from rcnnlab.data.samplers import RepeatFactorSampler, repeat_factors
from tests.conftest import write_coco

A, B = 1, 2  # category ids


def _data(tmp_path, classes_per_image: list[list[int]], crowd: dict[int, int] | None = None):
    """A CocoData with one image per entry, holding one box of each listed category id; `crowd`
    adds a crowd box of a category to an image (index -> category id)."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 60, "height": 40}
              for i in range(len(classes_per_image))]
    anns = []
    for i, cats in enumerate(classes_per_image):
        for k, cat in enumerate(cats):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                         "bbox": [2 + 20 * k, 2, 10, 10]})
    for i, cat in (crowd or {}).items():
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                     "bbox": [40, 20, 10, 10], "iscrowd": 1})
    cats = [{"id": A, "name": "A"}, {"id": B, "name": "B"}]
    return load_coco(write_coco(tmp_path, images=images, annotations=anns, categories=cats))


def _detectron2_epoch(factors: torch.Tensor, g: torch.Generator) -> list[int]:
    """detectron2's RepeatFactorTrainingSampler._get_epoch_indices + its shuffle, transcribed
    (facebookresearch/detectron2, detectron2/data/samplers/distributed_sampler.py)."""
    int_part = torch.trunc(factors)
    frac_part = factors - int_part
    rands = torch.rand(len(frac_part), generator=g)
    rep_factors = int_part + (rands < frac_part).float()
    indices = []
    for dataset_index, rep_factor in enumerate(rep_factors):
        indices.extend([dataset_index] * int(rep_factor.item()))
    indices = torch.tensor(indices, dtype=torch.int64)
    return indices[torch.randperm(len(indices), generator=g)].tolist()


def _counts(indices: list[int], n: int) -> list[int]:
    return torch.bincount(torch.tensor(indices), minlength=n).tolist()


# --------------------------------------------------------------------------- repeat factors


def test_repeat_factors_match_the_lvis_formula(tmp_path):
    # 10 images: A in image 0 only (f_A = 0.1), B in all (f_B = 1).
    data = _data(tmp_path, [[A, B]] + [[B]] * 9)
    # t = 0.5: r_A = sqrt(0.5 / 0.1) = sqrt(5) = 2.2360680, r_B = max(1, sqrt(0.5)) = 1.
    r = repeat_factors(data, 0.5)
    assert r.dtype == torch.float32 and r.shape == (10,)
    assert r.tolist() == pytest.approx([math.sqrt(5)] + [1.0] * 9, rel=1e-6)
    assert r[0].item() == pytest.approx(2.2360680, abs=1e-6)
    # t = 2: r_A = sqrt(20) = 4.4721360, r_B = sqrt(2) = 1.4142136; image 0 takes the max.
    r = repeat_factors(data, 2.0)
    assert r.tolist() == pytest.approx([math.sqrt(20)] + [math.sqrt(2)] * 9, rel=1e-6)
    assert repeat_factors(data, 0.0).tolist() == [1.0] * 10


def test_repeat_factors_count_negatives_and_not_crowds(tmp_path):
    # A in image 0; B in images 0..4; image 5 has only a crowd A box; images 6..9 are negatives.
    # Over all 10 images: f_A = 1/10 (the crowd box does not count), f_B = 5/10.
    data = _data(tmp_path, [[A, B]] + [[B]] * 4 + [[]] * 5, crowd={5: A})
    # t = 2: r_A = sqrt(2 / 0.1) = 4.4721360, r_B = sqrt(2 / 0.5) = 2; images 5..9 hold no
    # (non-crowd) class -> 1.
    r = repeat_factors(data, 2.0)
    assert r.tolist() == pytest.approx([math.sqrt(20)] + [2.0] * 4 + [1.0] * 5, rel=1e-6)


def test_repeat_factors_refuse_a_negative_threshold(tmp_path):
    with pytest.raises(ValueError):
        repeat_factors(_data(tmp_path, [[A]]), -0.1)


# --------------------------------------------------------------------------- sampler


def test_sampler_epoch_is_detectron2s_with_integer_factors():
    factors = torch.tensor([3.0, 1.0, 2.0, 0.0])
    sampler = RepeatFactorSampler(factors, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 6
    reference = torch.Generator().manual_seed(0)
    for _ in range(3):
        epoch = list(sampler)
        assert epoch == _detectron2_epoch(factors, reference)
        assert _counts(epoch, 4) == [3, 1, 2, 0]
        assert epoch != sorted(epoch)  # shuffled


def test_sampler_first_draw_is_detectron2s_with_fractional_factors():
    factors = torch.tensor([math.sqrt(5)] + [1.3] * 9 + [0.5] * 6)  # sum 16.936 -> len 17
    draw_lengths = set()
    for seed in range(20):
        sampler = RepeatFactorSampler(factors, generator=torch.Generator().manual_seed(seed))
        expected = _detectron2_epoch(factors, torch.Generator().manual_seed(seed))
        epoch = list(sampler)
        assert len(sampler) == len(epoch) == 17
        # A longer draw is cut, a shorter one topped up from the next: the prefix is detectron2's.
        k = min(17, len(expected))
        assert epoch[:k] == expected[:k]
        draw_lengths.add(len(expected))
    assert min(draw_lengths) < 17 < max(draw_lengths)  # both cases were exercised


def test_sampler_mean_count_approaches_the_repeat_factor(tmp_path):
    # The hand-made dataset: r = (sqrt(5), 1 x 9), sum 11.236 -> 11 indices per epoch.
    factors = repeat_factors(_data(tmp_path, [[A, B]] + [[B]] * 9), 0.5)
    sampler = RepeatFactorSampler(factors, generator=torch.Generator().manual_seed(1))
    epochs = 4000
    counts = torch.zeros(10)
    for _ in range(epochs):
        epoch = list(sampler)
        assert len(epoch) == 11
        counts += torch.bincount(torch.tensor(epoch), minlength=10)
    mean = counts / epochs
    # Every epoch has 11 indices, not 11.236: each image's mean count is r_i * 11 / 11.236
    # (2.189 and 0.979), up to sampling noise (~0.3 %) and the cut's dependence on the image's
    # own draw (an epoch where image 0 drew 3 copies is the one that gets cut: ~ -0.6 % for it).
    scale = 11 / (math.sqrt(5) + 9)
    assert mean[0].item() == pytest.approx(math.sqrt(5) * scale, rel=0.015)
    assert mean[1:].tolist() == pytest.approx([scale] * 9, rel=0.015)
    assert mean[0].item() / mean[1:].mean().item() == pytest.approx(math.sqrt(5), rel=0.02)


def test_sampler_mean_count_matches_the_factors_when_they_sum_to_an_integer():
    # 50 images each at 1, 1.5 and 2.7: sum 260 -> 260 indices per epoch, no rounding of length.
    factors = torch.tensor([1.0] * 50 + [1.5] * 50 + [2.7] * 50)
    sampler = RepeatFactorSampler(factors, generator=torch.Generator().manual_seed(2))
    assert len(sampler) == 260
    epochs = 400
    counts = torch.zeros(150)
    for _ in range(epochs):
        counts += torch.bincount(torch.tensor(list(sampler)), minlength=150)
    group_means = (counts / epochs).reshape(3, 50).mean(dim=1)
    assert group_means.tolist() == pytest.approx([1.0, 1.5, 2.7], rel=0.01)


def test_sampler_is_deterministic_and_resumable():
    factors = torch.tensor([math.sqrt(5)] + [1.0] * 9 + [1.7] * 5)

    def epochs(seed: int, n: int = 3) -> list[list[int]]:
        sampler = RepeatFactorSampler(factors, generator=torch.Generator().manual_seed(seed))
        return [list(sampler) for _ in range(n)]

    assert epochs(7) == epochs(7)
    assert epochs(7) != epochs(8)
    first = epochs(7)
    assert first[0] != first[1]  # each epoch draws afresh

    g = torch.Generator().manual_seed(7)
    sampler = RepeatFactorSampler(factors, generator=g)
    list(sampler)
    state = g.get_state()  # what the trainer checkpoints after an epoch
    second = list(sampler)
    resumed = RepeatFactorSampler(factors, generator=torch.Generator())
    resumed.generator.set_state(state)
    assert list(resumed) == second == first[1]

    torch.manual_seed(3)
    unseeded = list(RepeatFactorSampler(factors))
    torch.manual_seed(3)
    assert list(RepeatFactorSampler(factors)) == unseeded


def test_sampler_length_drives_the_dataloader():
    factors = torch.tensor([math.sqrt(5)] + [1.0] * 9)  # len 11
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(list(range(10)), batch_size=4,
                        sampler=RepeatFactorSampler(factors, generator=g), generator=g)
    assert len(loader) == math.ceil(11 / 4) == 3
    for _ in range(5):
        batches = list(loader)
        assert [len(b) for b in batches] == [4, 4, 3]


@pytest.mark.parametrize("factors", [[], [0.0, 0.0], [1.0, -1.0], [[1.0, 2.0]]])
def test_sampler_refuses_bad_factors(factors):
    with pytest.raises(ValueError):
        RepeatFactorSampler(torch.tensor(factors))

"""LR schedule values at hand-computed iterations."""

import math

import pytest

from rcnnlab.engine.schedules import lr_factor


def test_warmup_then_cosine():
    f = lr_factor(schedule="cosine", total_iters=110, warmup_iters=10, warmup_factor=0.1,
                  eta_min=0.0)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.1 * 0.5 + 0.5)  # halfway through warm-up
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # halfway through the cosine
    assert f(110) == pytest.approx(0.0)


def test_cosine_floor():
    f = lr_factor(schedule="cosine", total_iters=100, eta_min=0.05)
    assert f(100) == pytest.approx(0.05)
    assert f(50) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_multistep():
    f = lr_factor(schedule="multistep", total_iters=100, milestones=[30, 80], gamma=0.1)
    assert [f(29), f(30), f(79), f(80)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(schedule="poly", total_iters=10)

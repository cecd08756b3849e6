"""train.time_budget: the epochs, their length and the LR schedule fitted to a wall-time budget.

The planning is checked on a simulated clock (each step, validation and checkpoint advances it
by a known amount), so the arithmetic is tested without timing anything; one tiny real run checks
the wiring (log, time_budget.json, the record)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from rcnnlab import api
from rcnnlab.config import TrainConfig
from rcnnlab.engine.hooks import time_budget
from rcnnlab.engine.hooks.time_budget import TimeBudget
from rcnnlab.engine.optim import build_scheduler
from rcnnlab.engine.progress import ProgressReporter
from tests.tiny import tiny_config


def simulate(monkeypatch, *, budget_min=10.0, full=100, s_iter=1.0, val_s=12.0, other_s=2.0,
             slow_from_epoch=None, slowdown=1.0, resume_after=None, **cfg):
    """Run the hook through a loop on a fake clock; returns (elapsed seconds, loop, lrs)."""
    clock = [0.0]
    monkeypatch.setattr(time_budget.time, "perf_counter", lambda: clock[0])
    t = TrainConfig(**{"epochs": 12, "batch_size": 4, "warmup_iters": 10, "eta_min": 0.01,
                       **cfg})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    loop = SimpleNamespace(epoch=0, epochs=t.epochs, iteration=0, iters_per_epoch=full,
                           train_seconds=0.0, row={}, scheduler=build_scheduler(optimizer, t, full))
    hook = TimeBudget(budget_min, t, full_epoch=full, valid_images=200, run=None)
    hook.loop = loop
    lrs = []
    hook.before_train()
    while loop.epoch < loop.epochs:
        loop.row = {}
        hook.before_epoch()
        steps, start = 0, clock[0]
        slow = slowdown if slow_from_epoch is not None and loop.epoch >= slow_from_epoch else 1
        while steps < min(loop.iters_per_epoch, full):
            clock[0] += s_iter * slow
            optimizer.step()
            loop.scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            loop.iteration += 1
            steps += 1
            hook.after_step()
        loop.train_seconds += clock[0] - start
        loop.epoch += 1
        if loop.epoch % t.eval_every == 0 or loop.epoch == loop.epochs:
            clock[0] += val_s
            loop.row["val_seconds"] = val_s
        clock[0] += other_s
        hook.after_epoch()
        if resume_after == loop.epoch:  # a new process takes up the saved state
            state = hook.state_dict()
            hook = TimeBudget(budget_min, t, full_epoch=full, valid_images=200, run=None)
            hook.loop = loop
            hook.load_state_dict(state)
            clock[0] += 5.0  # the restart's own time does not count
            hook.before_train()
            resume_after = None
    hook.after_train()
    return clock[0], loop, lrs, hook


def test_plan_fills_the_budget_and_ends_the_schedule(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="rcnnlab.engine.hooks.time_budget"):
        elapsed, loop, lrs, hook = simulate(monkeypatch)
    # Before any validation it is estimated at 0.7 x 200 images / 4 x 1 s = 35 s: a full epoch
    # and its validation ~135 s, 597 s hold 4.4 of them -> 5 shorter epochs first; measured
    # (12 s validation, 2 s checkpoint) an epoch is 114 s, and 5.2 fit -> 6 shorter epochs.
    assert "-> 5 epochs of" in caplog.text
    assert loop.epochs == 6 and loop.epoch == 6
    assert 0.95 * 600 <= elapsed <= 600
    assert elapsed >= 0.98 * 600  # the budget is used, not left over
    assert hook.plan["iters_per_epoch"] < 100 and hook.plan["epochs_run"] == 6
    # the cosine ends at its floor on the last iteration, warm-up kept
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)
    assert lrs[0] < lrs[9] and max(lrs) == pytest.approx(1.0, abs=1e-3)


def test_plan_follows_a_slowdown_and_never_overruns(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="rcnnlab.engine.hooks.time_budget"):
        elapsed, loop, lrs, _ = simulate(monkeypatch, slow_from_epoch=2, slowdown=1.8)
    assert elapsed <= 600 * 1.01 and elapsed >= 0.95 * 600
    assert "more epoch(s) of" in caplog.text
    assert lrs[-1] == pytest.approx(0.01, abs=0.02)


def test_sudden_slowdown_ends_training_before_the_budget_is_gone(monkeypatch, caplog):
    # from epoch 5 on a step takes 6x longer: the last epochs can no longer fit
    with caplog.at_level(logging.INFO, logger="rcnnlab.engine.hooks.time_budget"):
        elapsed, loop, _, _ = simulate(monkeypatch, slow_from_epoch=4, slowdown=6.0)
    assert elapsed <= 600 + 6.0 + 2.0  # at most one step and the checkpoint over
    assert "training ends with epoch" in caplog.text


def test_validation_every_few_epochs_and_resume_keep_the_budget(monkeypatch):
    elapsed, loop, lrs, hook = simulate(monkeypatch, eval_every=3, resume_after=2)
    assert 0.95 * 600 <= elapsed <= 605
    assert hook.val_times  # carried over the resume
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)


def test_a_tiny_run_logs_writes_and_records_its_plan(synth_dir, tmp_path, caplog):
    cfg = tiny_config(synth_dir, tmp_path, "train.time_budget=0.25", "train.record=true",
                      "augment.no_aug_epochs=1")
    with caplog.at_level(logging.INFO, logger="rcnnlab.engine.hooks.time_budget"):
        fit = api.train(cfg, reporter=ProgressReporter(quiet=True))
    plan = json.loads((fit.run_dir / "time_budget.json").read_text())
    assert plan["epochs_run"] == fit.epochs and plan["iterations_run"] == fit.iterations
    assert "(estimated) ->" in caplog.text and "training and validation took" in caplog.text
    # (how close to the budget a real run ends is wall time, which tests do not assert: the
    # simulated-clock tests above check the arithmetic, docs/scaling.md quotes a measured run)
    assert plan["took_minutes"] > 0 and plan["budget_minutes"] == 0.25
    report = (fit.run_dir / "report.md").read_text()
    assert "| time budget | 0.25 min:" in report and "(chosen by the time budget)" in report


def test_warm_up_is_cut_to_a_tenth_of_a_short_run(monkeypatch):
    # 2 minutes at 1 s a step hold about 100 iterations: a 200-iteration warm-up would cover
    # the whole run and the learning rate would never decay
    elapsed, loop, lrs, hook = simulate(monkeypatch, budget_min=2.0, full=40, val_s=2.0,
                                        warmup_iters=200)
    total = loop.iteration
    assert 80 <= total <= 120
    assert hook.plan["warmup_iters"] == int(0.1 * hook.plan["total_iterations"])
    # the warm-up is over by the first plan (after 13 timed steps, the cosine already under
    # way), not after 200 iterations
    assert max(lrs[:16]) >= 0.85 and lrs[0] < 0.01
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)  # the cosine reaches its floor


def test_a_long_run_keeps_its_warm_up(monkeypatch):
    elapsed, loop, lrs, hook = simulate(monkeypatch, warmup_iters=30)  # ~540 iterations
    assert hook.plan["warmup_iters"] == 30
    assert lrs[28] < lrs[30] and lrs[30] == pytest.approx(max(lrs), abs=1e-3)


def test_validations_are_counted_not_enumerated():
    hook = TimeBudget(10.0, TrainConfig(eval_every=3), full_epoch=10, valid_images=10, run=None)
    for first, last in [(1, 1), (1, 9), (2, 10), (4, 4), (5, 4), (7, 20)]:
        assert hook._validations(first, last) == sum(
            1 for e in range(first, last + 1) if e % 3 == 0 or e == last), (first, last)
    # a budget of centuries plans ~10^10 epochs: counted at once, never one by one
    assert hook._validations(1, 10**10) == 10**10 // 3 + 1


def test_a_budget_beyond_a_year_is_refused():
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=1e9)

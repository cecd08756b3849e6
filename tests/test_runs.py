"""The run folder (RunDir), checkpoints (Checkpoint) and the training loop's hook protocol."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from rcnnlab.config import load_config
from rcnnlab.engine.loop import HookBase, TrainLoop
from rcnnlab.runs.checkpoint import Checkpoint, save_checkpoint
from rcnnlab.runs.rundir import RunDir


def test_metrics_csv_round_trip_with_one_nan_rule(tmp_path):
    run = RunDir(tmp_path / "run")
    run.append_metrics({"epoch": 1, "loss": 0.5, "val_AP": math.nan})
    run.append_metrics({"epoch": 2, "loss": 0.25, "val_AP": 0.125, "val_APl": None})
    rows = run.read_metrics()
    # a new column widens the header; empty cells and nan both read as None
    assert rows == [{"epoch": 1.0, "loss": 0.5, "val_AP": None, "val_APl": None},
                    {"epoch": 2.0, "loss": 0.25, "val_AP": 0.125, "val_APl": None}]
    run.truncate_metrics(1)
    assert [r["epoch"] for r in run.read_metrics()] == [1.0]
    run.truncate_metrics(0)  # the header stays
    assert run.read_metrics() == [] and run.metrics_csv.read_text().startswith("epoch,loss")
    assert not list(run.root.glob("*.tmp"))  # written through temporary files, all renamed
    assert RunDir(tmp_path / "absent").read_metrics() == []


def test_eval_json_and_environment(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_environment() is None and run.read_evals() == {}
    run.write_environment([["machine", "x"]])
    run.write_eval("test", {"AP": 0.5})
    assert run.read_environment() == [["machine", "x"]]
    assert run.read_evals() == {"test": {"AP": 0.5}}
    run.eval_json("valid").write_text("{")
    with pytest.raises(ValueError, match="eval_valid.json: not valid JSON.*Fix"):
        run.read_evals()


def _checkpoint(**extra) -> Checkpoint:
    cfg = load_config(None, ["eval.default_threshold=0.4"])
    return Checkpoint(model={"w": torch.ones(2)}, config=cfg,
                      categories=[{"id": 0, "name": "0"}], threshold=0.6, **extra)


def test_checkpoint_round_trip_and_weights_only(tmp_path):
    full = _checkpoint(epoch=3, iteration=30, best_map=0.5, best_epoch=2,
                       resume={"optimizer": {}, "scheduler": {}, "rng": {}, "hooks": {}})
    full.save(tmp_path / "last.pt")
    back = Checkpoint.load(tmp_path / "last.pt")
    assert (back.epoch, back.iteration, back.best_map, back.threshold) == (3, 30, 0.5, 0.6)
    assert back.category_ids == [0] and back.path == tmp_path / "last.pt"
    assert back.config == full.config and torch.equal(back.model["w"], torch.ones(2))
    full.weights_only().save(tmp_path / "best.pt")
    best = Checkpoint.load(tmp_path / "best.pt")
    assert best.resume is None and best.epoch == 3


def test_checkpoints_of_the_first_version_still_load(tmp_path):
    cfg = load_config(None, ["eval.default_threshold=0.4"]).model_dump(mode="json")
    train = cfg["train"]
    del train["roi_loss"]
    train.update(objective="policy_gradient", cls_loss="ce")  # the keys of those days
    save_checkpoint(tmp_path / "old.pt", {
        "model": {"w": torch.ones(1)}, "config": cfg, "categories": [{"id": 1, "name": "a"}],
        "epoch": 2, "optimizer": {"s": 1}, "scheduler": {}, "rng": {}, "pg_rng": torch.ones(3),
        "scale_weighting": None})
    old = Checkpoint.load(tmp_path / "old.pt")
    assert old.config.train.roi_loss == "policy_gradient" and old.epoch == 2
    assert old.threshold == 0.4  # no tuned threshold: the config's default
    assert old.resume["optimizer"] == {"s": 1}
    assert torch.equal(old.resume["hooks"]["policy_gradient"]["generator"], torch.ones(3))
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="foreign.pt: not a readable rcnnlab checkpoint"):
        Checkpoint.load(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "weights.pt", {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="no 'model' entry.*Fix"):
        Checkpoint.load(tmp_path / "weights.pt")


class _Linear(nn.Module):
    """A model with torchvision's training interface: (images, targets) -> loss dict."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        x = torch.stack([img.sum() for img in images])
        return {"loss_a": (self.w * x).mean(), "loss_b": self.w.abs().sum(),
                "figure": torch.tensor(7.0)}


class _Recorder(HookBase):
    def __init__(self, calls, name):
        self.calls, self.label = calls, name

    def before_train(self):
        self.calls.append((self.label, "before_train"))

    def before_epoch(self):
        self.calls.append((self.label, "before_epoch", self.loop.epoch))

    def adjust_loss(self, outputs, loss):
        self.calls.append((self.label, "adjust_loss", round(loss.item(), 3)))
        return loss * 2  # each hook sees the loss the previous one returned

    def after_step(self):
        self.calls.append((self.label, "after_step", self.loop.iteration))

    def after_epoch(self):
        self.calls.append((self.label, "after_epoch", dict(self.loop.row)))

    def after_train(self):
        self.calls.append((self.label, "after_train"))


def test_the_loop_calls_hooks_in_order_and_caps_the_epoch():
    model = _Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    batch = ([torch.ones(1, 2, 2)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    calls: list[tuple] = []
    loop = TrainLoop(model, [batch] * 5, optimizer, scheduler, epochs=2, iters_per_epoch=2,
                     device=torch.device("cpu"), grad_clip=None,
                     hooks=[_Recorder(calls, "a"), _Recorder(calls, "b")])
    loop.train()
    assert (loop.epoch, loop.iteration, loop.images_seen) == (2, 4, 4)
    assert calls[:2] == [("a", "before_train"), ("b", "before_train")]
    # the loss is the sum of the loss_* outputs (4 + 1), then each hook's adjustment
    assert calls[4:6] == [("a", "adjust_loss", 5.0), ("b", "adjust_loss", 10.0)]
    assert loop.loss == 20.0
    assert [c for c in calls if c[1] == "after_step"] == [
        (h, "after_step", i) for i in (1, 2, 3, 4) for h in "ab"]
    ends = [c[2] for c in calls if c[1] == "after_epoch"]
    assert ends[0] == {"epoch": 1, "iterations": 2, "lr": 0.0}
    assert calls[-2:] == [("a", "after_train"), ("b", "after_train")]


def test_after_train_runs_when_training_is_interrupted():
    calls: list[tuple] = []

    class Stop(HookBase):
        def after_step(self):
            raise KeyboardInterrupt

    model = _Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = TrainLoop(model, [([torch.ones(1, 2, 2)], [{"boxes": torch.zeros(0, 4),
                                                        "labels": torch.zeros(0)}])],
                     optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
                     epochs=1, iters_per_epoch=1, device=torch.device("cpu"), grad_clip=None,
                     hooks=[Stop(), _Recorder(calls, "r")])
    with pytest.raises(KeyboardInterrupt):
        loop.train()
    assert calls[-1] == ("r", "after_train")


@pytest.mark.parametrize(("grad_clip", "fix"), [(None, "or set train.grad_clip"),
                                                (10.0, "or lower train.grad_clip (now 10)")])
def test_a_diverged_loss_is_a_user_error_naming_the_fix(grad_clip, fix):
    from rcnnlab.errors import TrainingDiverged

    class Diverged(_Linear):
        def forward(self, images, targets):
            return {"loss_a": self.w.sum() * float("nan")}

    model = Diverged()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = TrainLoop(model, [([torch.ones(1, 2, 2)], [{"boxes": torch.zeros(0, 4),
                                                        "labels": torch.zeros(0)}])],
                     optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
                     epochs=1, iters_per_epoch=1, device=torch.device("cpu"),
                     grad_clip=grad_clip, hooks=[])
    expected = (r"loss became nan at iteration 0 .*Fix: lower train\.lr, raise "
                r"train\.warmup_iters, " + re.escape(fix))
    with pytest.raises(TrainingDiverged, match=expected):
        loop.train()
    assert torch.equal(model.w, torch.ones(1))  # no step was taken on it


def test_the_weight_average_follows_a_hand_computed_decay_sequence():
    from types import SimpleNamespace

    from rcnnlab.engine.hooks.ema import WeightAverage, ema_decay

    assert ema_decay(1, 0.9, 2) == pytest.approx(0.9 * (1 - math.exp(-0.5)))
    assert ema_decay(10_000, 0.9, 2) == pytest.approx(0.9)
    model = nn.BatchNorm1d(1)  # a float weight and an integer batch counter
    hook = WeightAverage(model, decay=0.9, warmup=2)
    hook.loop = SimpleNamespace(model=model)
    expected = 1.0  # the weight starts at 1
    for step, value in enumerate([3.0, 5.0, -1.0], 1):
        with torch.no_grad():
            model.weight.fill_(value)
        model.num_batches_tracked.fill_(step)
        hook.after_step()
        d = 0.9 * (1 - math.exp(-step / 2))
        expected = d * expected + (1 - d) * value
        assert hook.average.weight.item() == pytest.approx(expected, rel=1e-6)
        assert hook.average.num_batches_tracked.item() == step  # copied, not averaged
    state = hook.state_dict()
    again = WeightAverage(nn.BatchNorm1d(1), decay=0.9, warmup=2)
    again.load_state_dict(state)
    assert again.updates == 3 and again.average.weight.item() == pytest.approx(expected)
    assert not any(p.requires_grad for p in hook.average.parameters())


def test_mixed_precision_steps_and_keeps_the_scalers_state():
    from rcnnlab.engine.precision import MixedPrecision
    from rcnnlab.errors import ConfigError

    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA. Fix: train.amp=bf16"):
        MixedPrecision("fp16", cpu)
    with MixedPrecision("bf16", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with MixedPrecision("off", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    # fp16's scaler (CUDA in practice; its CPU twin here): an overflowing step is skipped and
    # the scale halves, and that state survives a save and a load
    amp = MixedPrecision("off", cpu)
    amp.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    amp.backward(model(torch.tensor([[float("inf")]])).sum())
    amp.step(optimizer, model.parameters(), grad_clip=None)
    assert torch.equal(model.weight, before) and amp.scaler.get_scale() == 512.0
    resumed = MixedPrecision("off", cpu)
    resumed.scaler = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(amp.state_dict())
    assert resumed.scaler.get_scale() == 512.0


def test_a_checkpoint_save_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from rcnnlab.runs import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1})

    def full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_checkpoint(path, {"epoch": 2})
    assert not list(tmp_path.glob("*.tmp"))
    assert checkpoint.load_checkpoint(path)["epoch"] == 1  # the previous one, intact


def test_files_that_are_no_checkpoint_are_one_error_each(tmp_path):
    import pickle

    from rcnnlab.errors import RunError
    from rcnnlab.runs.checkpoint import load_checkpoint

    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"a": 1}))
    save_checkpoint(tmp_path / "whole.pt", {"epoch": 1, "w": torch.zeros(1000)})
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:500])
    for name, words in (("empty.pt", "is empty (0 bytes)"),
                        ("raw.pt", "no checkpoint archive"), ("cut.pt", "no checkpoint archive")):
        with pytest.raises(RunError, match=re.escape(words)) as caught:
            load_checkpoint(tmp_path / name)
        assert "Fix: give the best.pt or last.pt" in str(caught.value)

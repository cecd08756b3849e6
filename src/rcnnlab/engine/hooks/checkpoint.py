"""Checkpoints: `best.pt` whenever validation mAP improves, `last.pt` after every epoch (with
the optimizer, scheduler, random states and every hook's state), and resuming from it."""

from __future__ import annotations

import logging

import torch

from rcnnlab.config import Config
from rcnnlab.engine.loop import HookBase
from rcnnlab.errors import RunError
from rcnnlab.runs.checkpoint import Checkpoint, load_fitting, rng_state, set_rng_state
from rcnnlab.runs.distributed import broadcast_object, gather_objects, world
from rcnnlab.runs.rundir import RunDir

log = logging.getLogger(__name__)


class Checkpointer(HookBase):
    """Saves best.pt and last.pt after each epoch (registered after the metrics writer, so a
    run killed in between redoes an epoch rather than losing its row) and resumes runs.

    Under data-parallel training every rank runs it: each epoch the ranks' random states and
    per-rank hook states are gathered into rank 0's last.pt, and on resume rank 0 reads last.pt
    and sends it to the others (which need no copy of the run folder). Only rank 0 (`main`)
    writes."""

    def __init__(self, run: RunDir, cfg: Config, categories: list[dict],
                 generator: torch.Generator, *, main: bool = True):
        self.run, self.cfg, self.categories, self.main = run, cfg, categories, main
        self.generator = generator  # the loader's: its state is the sampling order to come
        self.best_map, self.best_epoch = -1.0, 0
        self.threshold = cfg.eval.default_threshold  # kept as `tune` stored it, on resume
        # best.pt as saved by this process, on the CPU: what comes after training starts from
        # it without reading it back (None when the best epoch came before a resume)
        self.best: Checkpoint | None = None

    def checkpoint(self) -> Checkpoint:
        """The run's state now (best.pt is this without `resume`)."""
        loop = self.loop
        return Checkpoint(
            model=loop.model.state_dict(), config=self.cfg, categories=self.categories,
            threshold=self.threshold, epoch=loop.epoch, iteration=loop.iteration,
            best_map=self.best_map, best_epoch=self.best_epoch,
            train_seconds=loop.train_seconds, images_seen=loop.images_seen,
            resume={"optimizer": loop.optimizer.state_dict(),
                    "scheduler": loop.scheduler.state_dict(),
                    "precision": loop.precision.state_dict(),
                    "rng": rng_state(self.generator),
                    "hooks": {h.name: h.state_dict() for h in loop.hooks if h.name}})

    def _rank_state(self) -> dict:
        """This rank's own part of the resume state."""
        return {"rng": rng_state(self.generator),
                "hooks": {h.name: h.state_dict() for h in self.loop.hooks
                          if h.name and h.per_rank}}

    def after_epoch(self) -> None:
        """best.pt when the epoch's validation mAP is the best so far; then last.pt."""
        ranks = gather_objects(self._rank_state()) if world().distributed else None
        if not self.main:
            return
        ap = self.loop.row.get("val_AP")
        state = self.checkpoint()
        if ranks is not None:
            state.resume["ranks"] = ranks
        if ap is not None and ap > self.best_map:
            self.best_map, self.best_epoch = ap, self.loop.epoch
            state.best_map, state.best_epoch = self.best_map, self.best_epoch
            best = state.weights_only()
            best.model = self.loop.eval_model.state_dict()  # the weights validation scored
            best.save(self.run.best_pt)
            best.model = {k: v.detach().to("cpu", copy=True) for k, v in best.model.items()}
            best.path, self.best = self.run.best_pt, best
        state.save(self.run.last_pt)

    def resume(self) -> None:
        """Continue from last.pt: weights, optimizer, scheduler, counters, random states, every
        hook's state; metrics.csv forgets the epochs after it."""
        path = self.run.last_pt
        ckpt = None
        if self.main:
            ckpt = Checkpoint.load(path)
            if ckpt.resume is None:
                raise RunError(f"{path}: holds the weights only (a best.pt), not the optimizer "
                               "state that resuming needs. Fix: resume from the run's "
                               "checkpoints/last.pt, or start a new run from these weights "
                               "with train.finetune_from")
            if ckpt.category_ids != [c["id"] for c in self.categories]:
                raise RunError(f"{path}: cannot resume: the checkpoint's categories differ "
                               "from the data's. Fix: resume with the data it was trained on")
        ckpt = broadcast_object(ckpt)
        loop, resume = self.loop, ckpt.resume
        load_fitting(loop.model, ckpt.model, path,
                     "Fix: resume with the config the run was trained with (its config.yaml), "
                     "or start a new run")
        loop.optimizer.load_state_dict(resume["optimizer"])
        loop.scheduler.load_state_dict(resume["scheduler"])
        loop.precision.load_state_dict(resume.get("precision", {}))
        loop.epoch, loop.iteration = ckpt.epoch, ckpt.iteration
        loop.train_seconds, loop.images_seen = ckpt.train_seconds, ckpt.images_seen
        self.best_map, self.best_epoch, self.threshold = (ckpt.best_map, ckpt.best_epoch,
                                                          ckpt.threshold)
        hooks = dict(resume["hooks"])
        here, ranks = world(), resume.get("ranks")
        if ranks is not None and len(ranks) == here.size:
            set_rng_state(ranks[here.rank]["rng"], self.generator)
            hooks.update(ranks[here.rank]["hooks"])
        else:
            set_rng_state(resume["rng"], self.generator)
            if here.distributed:  # saved by another number of processes
                log.warning("resuming on %d processes a run saved by %d: the ranks' random "
                            "streams start afresh from train.seed", here.size,
                            len(ranks) if ranks else 1)
                seed = here.seed(self.cfg.train.seed) + loop.epoch
                torch.manual_seed(seed)
        for hook in loop.hooks:
            if hook.name and hooks.get(hook.name) is not None:
                hook.load_state_dict(hooks[hook.name])
        if self.main:
            self.run.truncate_metrics(loop.epoch)
        log.info("resumed %s at epoch %d (iteration %d)", self.run.root, loop.epoch,
                 loop.iteration)

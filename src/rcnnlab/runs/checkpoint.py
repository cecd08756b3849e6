"""Checkpoints: a typed `Checkpoint` written atomically, read back with weights_only=True.

On disk a checkpoint is a flat dict of plain types and tensors (what `torch.load(...,
weights_only=True)` accepts): the weights, what inference needs (config, categories, tuned
threshold) and the training totals. `last.pt` adds a `resume` entry with the optimizer,
scheduler, random states and each training hook's state; `best.pt` leaves it out, which keeps
it a third of the size with AdamW (two moments per weight).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnnlab.config import Config, config_from_dict
from rcnnlab.errors import MissingFileError, RunError
from rcnnlab.files import atomic_writer
from rcnnlab.models.architecture import build_model

log = logging.getLogger(__name__)

# Entries of checkpoints written before the resume state had its own entry.
_LEGACY_RESUME = ("optimizer", "scheduler", "rng", "pg_rng", "scale_weighting")


@dataclass
class Checkpoint:
    """A trained detector's weights, what inference needs, and (last.pt) how to resume."""

    model: dict[str, torch.Tensor]  # the detector's state_dict
    config: Config  # the resolved config the run trained with
    categories: list[dict[str, Any]]  # the dataset's categories: model label k -> categories[k-1]
    threshold: float  # sequence threshold: eval.default_threshold until `tune` stores one
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken
    best_map: float = -1.0  # highest validation mAP so far, and its epoch
    best_epoch: int = 0
    train_seconds: float = 0.0  # time spent in training steps (validation excluded)
    images_seen: int = 0
    resume: dict[str, Any] | None = None  # last.pt only: optimizer, scheduler, rng, hooks
    path: Path | None = field(default=None, compare=False)  # where it was read from

    @property
    def category_ids(self) -> list[int]:
        """The dataset's category ids in label order."""
        return [c["id"] for c in self.categories]

    def weights_only(self) -> Checkpoint:
        """This checkpoint without the resume state (what best.pt holds)."""
        return Checkpoint(**{f.name: getattr(self, f.name) for f in fields(self)
                             if f.name not in ("resume", "path")})

    def to_dict(self) -> dict[str, Any]:
        """The saved form (plain types and tensors only)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        out["config"] = self.config.model_dump(mode="json")
        if self.resume is None:
            del out["resume"]
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any], path: Path | None = None) -> Checkpoint:
        """Rebuild from the saved form; names the file and the fix when it is not ours."""
        where = path or "checkpoint"
        for key in ("model", "config", "categories"):
            if key not in state:
                raise RunError(f"{where}: no '{key}' entry; not a checkpoint written by "
                                 "rcnnlab train. Fix: pass a foreign weights file as "
                                 "model.weights instead")
        cfg = config_from_dict(state["config"])
        resume = state.get("resume")
        if resume is None and "optimizer" in state:  # written before `resume` had its entry
            resume = {"optimizer": state["optimizer"], "scheduler": state["scheduler"],
                      "rng": state["rng"],
                      "hooks": {"policy_gradient": {"generator": state["pg_rng"]},
                                "scale_weighting": state.get("scale_weighting")}}
        known = {f.name for f in fields(cls)} - {"config", "resume", "path", "threshold"}
        return cls(**{k: v for k, v in state.items() if k in known and k not in _LEGACY_RESUME},
                   config=cfg, resume=resume, path=path,
                   threshold=state.get("threshold", cfg.eval.default_threshold))

    def save(self, path: str | Path) -> Path:
        """Write atomically (see `save_checkpoint`)."""
        return save_checkpoint(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint file."""
        path = Path(path)
        return cls.from_dict(load_checkpoint(path), path)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` via a temporary file, fsync and an atomic rename
    (`rcnnlab.files.atomic_writer`).

    A run killed while saving leaves the previous checkpoint intact, never a truncated one; a
    full disk leaves no temporary file and is an OSError naming `path`.
    """
    with atomic_writer(path, "wb") as fh:
        torch.save(state, fh)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file as its saved dict, on the CPU, with torch's safe loader.

    The file is memory-mapped: tensors are read when used, so reading only the categories or
    the totals of a 340 MB last.pt costs milliseconds.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint not found. Fix: give a run folder or a .pt "
                                "file written by rcnnlab train")
    fix = ("Fix: give the best.pt or last.pt rcnnlab train wrote (a copy cut short, or a "
           "file saved by other code, does not load)")
    if path.stat().st_size == 0:
        raise RunError(f"{path}: is empty (0 bytes), not a checkpoint. {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several kinds for a corrupt or foreign file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        if "zip" in reason or "mmap" in reason:  # torch's words for "no (whole) zip archive"
            reason = "no checkpoint archive: truncated, or not saved by torch.save"
        raise RunError(f"{path}: not a readable rcnnlab checkpoint ({type(exc).__name__}: "
                       f"{reason}). {fix}") from None
    if not isinstance(state, dict):
        raise RunError(f"{path}: holds a {type(state).__name__}, not an rcnnlab checkpoint")
    return state


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder -> its checkpoints/<which>.pt (falling back to last.pt); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                if name != f"{which}.pt":  # a run stopped before its first validation
                    log.warning("%s: no checkpoints/%s.pt, so its %s is used", path, which,
                                name)
                return candidate
        raise MissingFileError(f"{path}: no checkpoints/{which}.pt or last.pt. Fix: train the run "
                                "first (rcnnlab train) or give a .pt file")
    return path


def detector_from_checkpoint(ckpt: Checkpoint,
                             device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained detector a checkpoint holds, built once for inference (in eval mode, on
    `device`): the layout of training (frozen BN where weights were pretrained), every tensor
    from the checkpoint, so nothing is fetched."""
    model = build_model(ckpt.config.model, num_classes=len(ckpt.categories) + 1,
                        load_weights=False)
    load_fitting(model, ckpt.model, ckpt.path, "Fix: use a checkpoint as rcnnlab train wrote it "
                 "(its config, categories and weights belong together)")
    model = model.to(device).eval()
    if ckpt.config.train.channels_last:  # predicts in the memory layout it was trained in
        model.to(memory_format=torch.channels_last)
    return model


def load_fitting(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | None,
                 fix: str) -> None:
    """`model.load_state_dict(state)`, or one line naming the file, the first tensor that does
    not fit and the fix (torch's own message lists every tensor over several lines)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0] if lines else "unknown cause"
        first = first if len(first) <= 160 else first[:160] + " ..."  # key lists run long
        raise RunError(f"{path}: its weights do not fit the model ({first}). {fix}") from None


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state a training run draws from, in weights_only-safe types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what rng_state saved."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value

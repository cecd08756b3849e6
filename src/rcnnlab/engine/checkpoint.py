"""Checkpoints: plain dicts written atomically and read back with weights_only=True."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` via a temporary file and an atomic rename.

    A run killed while saving leaves the previous checkpoint intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint on the CPU with torch's safe loader (no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found. Fix: give a run folder or a .pt "
                                "file written by rcnnlab train")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable rcnnlab checkpoint ({exc})") from None


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


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder -> its checkpoints/<which>.pt (falling back to last.pt); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path}: no checkpoints/{which}.pt or last.pt. Fix: train the run "
                                "first (rcnnlab train) or give a .pt file")
    return path


def load_detector(path: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """Rebuild a trained detector from a checkpoint: returns (model in eval mode, checkpoint)."""
    from rcnnlab.config import config_from_dict
    from rcnnlab.models.build import build_model

    ckpt_path = resolve_checkpoint(path, which)
    ckpt = load_checkpoint(ckpt_path)
    for key in ("model", "config", "categories"):
        if key not in ckpt:
            raise ValueError(f"{ckpt_path}: no '{key}' entry; not a checkpoint written by rcnnlab "
                             "train. Fix: pass a foreign weights file as model.weights instead")
    cfg = config_from_dict(ckpt["config"])
    # Same layout as in training (frozen BN where weights were pretrained), but the tensors all
    # come from the checkpoint: nothing is fetched.
    model = build_model(num_classes=len(ckpt["categories"]) + 1, load_weights=False,
                        **cfg.model.build_kwargs())
    model.load_state_dict(ckpt["model"])
    ckpt["path"] = str(ckpt_path)
    return model.to(device).eval(), ckpt

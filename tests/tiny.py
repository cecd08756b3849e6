"""The tiny run the end-to-end tests train: generated house numbers, a small ResNet-18 FPN."""

from __future__ import annotations

from pathlib import Path

from rcnnlab.config import Config, load_config

TINY = [
    "model.arch=resnet18_fpn", "model.native_size=true", "model.min_size=64",
    "model.max_size=256", "model.rpn_pre_nms_top_n_train=200",
    "model.rpn_post_nms_top_n_train=100", "model.rpn_pre_nms_top_n_test=100",
    "model.rpn_post_nms_top_n_test=50", "model.box_batch_size_per_image=32",
    "model.rpn_batch_size_per_image=64", "train.batch_size=2", "train.warmup_iters=2",
    "train.threads=2", "eval.batch_size=4", "train.record=false",
]


def tiny_config(synth_dir: Path, run_root: Path, *extra: str) -> Config:
    """The tiny run on the generated set in `synth_dir`, writing under `run_root`."""
    data = [f"data.{s}_json={synth_dir / s / 'annotations.json'}" for s in ("train", "valid",
                                                                           "test")]
    return load_config(None, [*TINY, *data, f"out_dir={run_root}", "name=tiny", *extra])

"""Shared fixtures: tiny generated COCO datasets and the path of the real shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")
    return path


def write_coco(folder: Path, *, images=None, annotations=None, categories=None,
               make_files: bool = True, size=(60, 40)) -> Path:
    """Write a small COCO json (+ blank images) into `folder`; returns the json path."""
    folder.mkdir(parents=True, exist_ok=True)
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]},
        {"id": 2, "file_name": "b.png", "width": size[0], "height": size[1]},
    ]
    annotations = annotations if annotations is not None else [
        {"id": 1, "image_id": 1, "category_id": 0, "bbox": [5, 5, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 5, 10, 20]},
    ]
    categories = categories if categories is not None else [
        {"id": 0, "name": "0"}, {"id": 1, "name": "1"}]
    if make_files:
        for img in images:
            Image.new("RGB", (img.get("width", size[0]), img.get("height", size[1])),
                      (120, 120, 120)).save(folder / img["file_name"])
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    """Two 60x40 images, one with two boxes (category ids 0 and 1), one negative."""
    return write_coco(tmp_path / "tiny")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """A generated house-number set: 8 train, 4 valid, 4 test images."""
    from rcnnlab.data.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n_train=8, n_valid=4, n_test=4, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny trained run on its own generated set that reports every box (score threshold
    0), so that it has detections to write; shared by the tests that only read it."""
    from rcnnlab import api
    from rcnnlab.data.synth import generate_dataset
    from rcnnlab.engine.progress import ProgressReporter
    from tests.tiny import tiny_config

    data = tmp_path_factory.mktemp("tiny_run_data")
    generate_dataset(data, n_train=8, n_valid=4, n_test=4, seed=3)
    cfg = tiny_config(data, tmp_path_factory.mktemp("tiny_run"), "train.epochs=1",
                      "train.iters_per_epoch=2", "model.box_score_thresh=0.0")
    return api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir

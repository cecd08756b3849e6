"""benchmarks/peer_yolo.py's pure parts: the YOLO labels, the YOLO -> COCO detections, the split."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from rcnnlab.config import load_config
from rcnnlab.data.coco import load_coco
from rcnnlab.data.splits import load_splits
from tests.conftest import shared_path, write_coco

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_yolo.py"
CATEGORIES = [{"id": 9, "name": "9"}, {"id": 3, "name": "3"}, {"id": 5, "name": "5"}]


@pytest.fixture(scope="module")
def peer():
    """The script, imported as a module (benchmarks/ is no package); it imports no ultralytics
    and sets no environment variable at import."""
    spec = importlib.util.spec_from_file_location("peer_yolo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["peer_yolo"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("peer_yolo", None)


def test_class_index_is_the_position_in_id_order(peer):
    assert peer.class_index(CATEGORIES) == {3: 0, 5: 1, 9: 2}


def test_label_lines_are_normalised_centre_and_size(peer):
    image = {"id": 1, "width": 200, "height": 100}
    annotations = [
        {"bbox": [20, 10, 40, 30], "category_id": 5},  # centre (40, 25), size 40 x 30
        {"bbox": [0, 0, 200, 100], "category_id": 9},  # the whole image
        {"bbox": [5, 5, 10, 10], "category_id": 3, "iscrowd": 1},  # a region, not trained on
        {"bbox": [150, 60, 50, 40], "category_id": 3},  # touches the bottom-right corner
    ]
    assert peer.yolo_label_lines(image, annotations, peer.class_index(CATEGORIES)) == [
        "1 0.200000 0.250000 0.200000 0.300000",
        "2 0.500000 0.500000 1.000000 1.000000",
        "0 0.875000 0.800000 0.250000 0.400000",
    ]


def test_yolo_split_links_images_and_writes_labels(peer, tmp_path):
    images = [{"id": 7, "file_name": "a.png", "width": 60, "height": 40},
              {"id": 8, "file_name": "b.png", "width": 60, "height": 40}]
    annotations = [{"id": 1, "image_id": 7, "category_id": 9, "bbox": [6, 4, 12, 8]}]
    data = load_coco(write_coco(tmp_path / "src", images=images, annotations=annotations,
                                categories=CATEGORIES))
    root = tmp_path / "yolo"
    yaml_path = peer.write_yolo_dataset(data, data, root)
    link = root / "images" / "train" / "a.png"
    assert link.is_symlink() and link.resolve() == (tmp_path / "src" / "a.png").resolve()
    assert (root / "labels" / "train" / "a.txt").read_text() == \
        "2 0.200000 0.200000 0.200000 0.200000\n"
    assert (root / "labels" / "val" / "b.txt").read_text() == ""  # a negative image
    import yaml

    spec = yaml.safe_load(yaml_path.read_text())
    assert spec["names"] == {0: "3", 1: "5", 2: "9"}
    assert (spec["train"], spec["val"]) == ("images/train", "images/val")


def test_yolo_detections_map_class_to_category_id_and_xyxy_to_xywh(peer):
    dets = peer.yolo_detections(
        42, torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.5, 1.5, 2.5, 4.5]]),
        torch.tensor([2.0, 0.0]), torch.tensor([0.9, 0.25]), [3, 5, 9])
    assert dets == [
        {"image_id": 42, "category_id": 9, "bbox": [10.0, 20.0, 40.0, 60.0], "score":
         pytest.approx(0.9)},
        {"image_id": 42, "category_id": 3, "bbox": [0.5, 1.5, 2.0, 3.0], "score":
         pytest.approx(0.25)},
    ]
    assert peer.yolo_detections(1, [], [], [], [3]) == []


def test_score_split_perfect_detections(peer):
    gt = {"images": [{"id": 1, "width": 100, "height": 50}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30]},
                          {"id": 2, "image_id": 1, "category_id": 9, "bbox": [40, 10, 20, 30]}],
          "categories": CATEGORIES}
    dets = [{"image_id": 1, "category_id": 9, "bbox": [40, 10, 20, 30], "score": 0.8},
            {"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "score": 0.6},
            {"image_id": 1, "category_id": 5, "bbox": [70, 10, 20, 30], "score": 0.1}]
    metrics, seq = peer.score_split(gt, dets, threshold=0.5)
    assert metrics.AP50 == pytest.approx(1.0)
    assert seq == 1.0  # "39" read left to right; the 0.1 detection is below the threshold
    assert peer.score_split(gt, dets, threshold=0.05)[1] == 0.0  # "395"


def test_orand_splits_are_disjoint_and_cover_the_source(peer, tmp_path):
    source = shared_path("orand-car-a", "instances_train.json")
    splits = peer.orand_splits(source.parents[1], tmp_path)
    # the test split is exactly what the orand recipe holds out of the source
    cfg = load_config("orand", [f"data.train_json={source}"])
    recipe = load_splits(cfg.data, need=("train", "valid"))
    ids = {name: {img["id"] for img in getattr(splits, name).images}
           for name in ("train", "valid", "test")}
    assert ids["test"] == {img["id"] for img in recipe["valid"].images}
    assert ids["train"] | ids["valid"] == {img["id"] for img in recipe["train"].images}
    assert not ids["train"] & ids["valid"]
    assert [len(ids[s]) for s in ("train", "valid", "test")] == [875, 97, 108]
    assert splits.digits


def test_written_splits_are_what_rcnnlab_trains_on(peer, tmp_path):
    from rcnnlab import api

    splits = peer.numbers_splits(shared_path("number-extraction-yolo").parent, tmp_path)
    assert [len(getattr(splits, s).images) for s in ("train", "valid", "test")] == [57, 6, 13]
    items = peer.write_splits(splits, tmp_path / "splits")
    overrides = peer.rcnnlab_overrides(items, minutes=1, seed=3, out=tmp_path, name="x",
                                       threads=None)
    cfg = api.configure(None, overrides)  # the plan, as the benchmark trains it
    assert cfg.plan is not None and cfg.train.time_budget == 1 and cfg.train.seed == 3
    assert cfg.data.val_fraction == 0  # the valid split is given
    loaded = load_splits(cfg.data, need=("train", "valid", "test"))
    for name in ("train", "valid", "test"):
        ours, theirs = loaded[name], getattr(splits, name)
        assert [i["id"] for i in ours.images] == [i["id"] for i in theirs.images]
        assert ours.num_boxes == theirs.num_boxes  # the boxes travel unchanged
    building = peer.building_splits(shared_path("building-characters-yolo").parent, tmp_path)
    assert [len(getattr(building, s).images) for s in ("train", "valid", "test")] == \
        [888, 36, 37]
    assert not building.digits


def test_datasets_parse_with_their_own_seeds(peer):
    assert peer.parse_datasets(["orand:0,1,2", "building"], [5]) == [
        ("orand", [0, 1, 2]), ("building", [5])]
    with pytest.raises(SystemExit, match="unknown dataset"):
        peer.parse_datasets(["coco"], [0])


def test_summary_compares_with_yolos_better_size(peer):
    def row(detector, seed, m):
        return peer.Row("building", detector, seed, 10.0, 5, m, m, m, None, None, 10.0, 50.0)

    lines = peer.summary([row("rcnnlab", 0, 0.70), row("yolov8n-320", 0, 0.60),
                          row("yolov8n-640", 0, 0.65)])
    assert lines[-1] == ("building: rcnnlab mAP 0.700 vs yolov8n-640 (YOLO's better size) "
                         "0.650: +0.050")
    assert any("0.700±0.000" in line for line in lines)


def test_labels_read_back_by_ultralytics_give_the_coco_box(peer, tmp_path, monkeypatch):
    # offline, with settings in tmp_path; the variables its import sets are put back after it
    for key, value in {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0",
                       "YOLO_CONFIG_DIR": str(tmp_path),
                       "OMP_NUM_THREADS": str(torch.get_num_threads())}.items():
        monkeypatch.setenv(key, value)
    before = dict(os.environ)
    try:
        pytest.importorskip("ultralytics", reason="ultralytics is not installed (rcnnlab[peer])")
        from ultralytics.utils.ops import xywhn2xyxy
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)
    image = {"id": 1, "width": 175, "height": 58}
    line = peer.yolo_label_lines(image, [{"bbox": [8, 7, 16, 40], "category_id": 5}],
                                 peer.class_index(CATEGORIES))[0]
    cls, *xywhn = line.split()
    assert cls == "1"
    box = xywhn2xyxy(torch.tensor([[float(v) for v in xywhn]]), w=175, h=58)[0].tolist()
    assert box == pytest.approx([8, 7, 24, 47], abs=1e-3)

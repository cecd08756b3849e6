"""Dataset statistics: exact counts on a hand-made split, COCO size ranges at their boundaries,
the text / Markdown reports, the figure, and the real orand-car-a split."""

import json
from pathlib import Path

import numpy as np
import pytest

from rcnnlab.data.coco import CocoData, load_coco
from rcnnlab.data.stats import compute_stats, format_stats, plot_stats, stats_table_markdown

from .conftest import shared_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ann(aid, image_id, cat, bbox, crowd=0):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": crowd}


@pytest.fixture
def hand_made() -> CocoData:
    """4 images (2 negatives, one of them with only a crowd box), 5 boxes, 2 crowd boxes,
    areas on both sides of 32² and 96², and a category without instances."""
    images = [
        {"id": 10, "file_name": "a.png", "width": 200, "height": 100},
        {"id": 11, "file_name": "b.png", "width": 200, "height": 100},
        {"id": 12, "file_name": "c.png", "width": 50, "height": 40},
        {"id": 13, "file_name": "d.png", "width": 50, "height": 40},
    ]
    annotations = {
        10: [_ann(1, 10, 0, [0, 0, 31, 33]),  # area 1023: small
             _ann(2, 10, 0, [0, 0, 32, 32]),  # area 1024 = 32²: medium (both in pycocotools)
             _ann(3, 10, 1, [0, 0, 96, 96]),  # area 9216 = 96²: large (both in pycocotools)
             _ann(4, 10, 1, [0, 0, 93, 99])],  # area 9207: medium
        11: [_ann(5, 11, 2, [10, 10, 10, 20]),  # area 200: small
             _ann(6, 11, 1, [0, 0, 50, 50], crowd=1)],
        12: [],
        13: [_ann(7, 13, 2, [0, 0, 5, 5], crowd=1)],
    }
    categories = [{"id": 0, "name": "zero"}, {"id": 1, "name": "one"},
                  {"id": 2, "name": "two"}, {"id": 5, "name": "five"}]
    return CocoData(Path("hand.json"), Path("."), images, annotations, categories)


def test_counts_classes_and_negatives(hand_made):
    s = compute_stats(hand_made)
    assert (s.num_images, s.num_boxes, s.num_crowd, s.num_negatives) == (4, 5, 2, 2)
    assert [(c.category_id, c.name, c.instances) for c in s.classes] == [
        (0, "zero", 2), (1, "one", 2), (2, "two", 1), (5, "five", 0)]  # crowd not counted
    assert [c.share for c in s.classes] == pytest.approx([40.0, 40.0, 20.0, 0.0])
    assert s.boxes_per_image.tolist() == [4, 1, 0, 0]
    assert s.boxes_per_image_summary() == {"min": 0, "median": 0.5, "mean": 1.25, "max": 4}


def test_coco_size_ranges_are_half_open_at_32_and_96_squared(hand_made):
    s = compute_stats(hand_made)
    # small: 1023, 200; medium: 1024, 9207; large: 9216
    assert s.size_ranges == {"small": 2, "medium": 2, "large": 1}
    assert s.size_range_shares == pytest.approx({"small": 40.0, "medium": 40.0, "large": 20.0})
    assert s.on_area_boundary == 2  # 1024 and 9216, which pycocotools puts in two ranges each


def test_image_sizes_and_box_shape_percentiles(hand_made):
    s = compute_stats(hand_made)
    assert s.image_size_summary() == {
        "width": {"min": 50, "median": 125, "mean": 125, "max": 200},
        "height": {"min": 40, "median": 70, "mean": 70, "max": 100}}
    assert s.num_distinct_sizes == 2
    shape = s.box_shape_percentiles()
    widths, heights = [31, 32, 96, 93, 10], [33, 32, 96, 99, 20]
    for key, values in (("width", widths), ("height", heights)):
        assert shape[key] == pytest.approx({f"p{q}": np.percentile(values, q) for q in (5, 50, 95)})
    assert shape["width"]["p50"] == 32 and shape["height"]["p50"] == 33
    assert shape["aspect_h_over_w"]["p50"] == pytest.approx(33 / 31)


def test_reports_text_markdown_and_json(hand_made):
    s = compute_stats(hand_made)
    text = format_stats(s)
    lines = text.splitlines()
    assert lines[0] == "hand.json"
    assert "images 4, of which negatives (no box) 2; boxes 5; crowd annotations 2" in text
    assert ["5", "five", "0", "0.0"] in [line.split() for line in lines]
    assert ["total", "5", "100.0"] in [line.split() for line in lines]
    assert ["small", "[0,", "32^2)", "2", "40.0"] in [line.split() for line in lines]
    assert "2 boxes have an area of exactly 32^2 or 96^2" in text

    md = stats_table_markdown(s)
    assert "| id | name | instances | share % |" in md
    assert "| 0 | zero | 2 | 40.0 |" in md
    assert "|  | total | 5 | 100.0 |" in md

    d = json.loads(json.dumps(s.as_dict()))
    assert d["images"] == 4 and d["negatives"] == 2 and d["crowd"] == 2
    assert d["size_ranges"]["large"] == {"boxes": 1, "share": 20.0}
    assert d["classes"][3] == {"category_id": 5, "name": "five", "instances": 0, "share": 0.0}


def test_loaded_split_and_an_empty_one(tiny_coco, tmp_path):
    s = compute_stats(load_coco(tiny_coco))
    assert (s.num_images, s.num_boxes, s.num_negatives) == (2, 2, 1)
    assert s.size_ranges == {"small": 2, "medium": 0, "large": 0}  # 10x20 boxes

    empty = compute_stats(CocoData(Path("empty.json"), tmp_path, [], {}, [{"id": 1, "name": "a"}]))
    assert empty.num_boxes == 0 and empty.boxes_per_image_summary() is None
    assert empty.classes[0].share is None
    assert ["total", "0", "-"] in [line.split() for line in format_stats(empty).splitlines()]
    json.dumps(empty.as_dict())
    assert plot_stats(empty, tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def test_real_orand_car_a(tmp_path):
    data = load_coco(shared_path("orand-car-a", "instances_train.json"))
    s = compute_stats(data)
    assert (s.num_images, s.num_boxes, s.num_crowd, s.num_negatives) == (1080, 4898, 0, 0)
    assert len(s.classes) == 10 and sum(c.instances for c in s.classes) == 4898
    assert [c.name for c in s.classes] == [str(d) for d in range(10)]
    assert sum(c.share for c in s.classes) == pytest.approx(100.0)
    assert s.size_ranges["large"] == 0  # cheque digits: the largest box is about 74x74 px
    assert s.size_ranges["small"] + s.size_ranges["medium"] == 4898
    png = plot_stats(s, tmp_path / "figs" / "stats.png")
    assert png.stat().st_size > 10_000 and png.read_bytes().startswith(PNG_MAGIC)

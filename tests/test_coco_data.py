"""COCO loading: label mapping, repairs with counts, and one clear error per bad input."""

import json

import pytest

from rcnnlab.data.coco import CocoDetection, DatasetError, holdout_split, load_coco

from .conftest import shared_path, write_coco


def test_category_zero_is_a_real_class_and_negatives_stay(tiny_coco):
    data = load_coco(tiny_coco)
    assert data.category_ids == [0, 1]
    assert data.label_of == {0: 1, 1: 2}  # label 0 stays background
    assert [img["id"] for img in data.images] == [1, 2]
    assert data.annotations[2] == []  # image without boxes kept as a negative
    image, target = CocoDetection(data)[0]
    assert image.shape == (3, 40, 60)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[5, 5, 15, 25], [20, 5, 30, 25]]  # xyxy
    _, negative = CocoDetection(data)[1]
    assert negative["boxes"].shape == (0, 4)


def test_boxes_clipped_and_degenerate_dropped_with_counts(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 0, "bbox": [-5, 10, 20, 10]},  # clipped left
        {"id": 2, "image_id": 1, "category_id": 0, "bbox": [50, 30, 30, 30]},  # right+bottom
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},  # zero width
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [70, 10, 5, 5]},  # wholly outside
    ]
    data = load_coco(write_coco(tmp_path, annotations=anns))
    assert [a["bbox"] for a in data.annotations[1]] == [[0, 10, 15, 10], [50, 30, 10, 10]]
    assert data.repairs["boxes clipped to the image"] == 2
    assert data.repairs["boxes dropped: degenerate (< 1 px after clipping)"] == 2
    assert "2 boxes clipped" in caplog.text


def test_missing_image_file(tmp_path):
    path = write_coco(tmp_path)
    (tmp_path / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"ann\.json: image id 2: file .*b\.png does not exist"
                       r".*skip_missing_images"):
        load_coco(path)
    data = load_coco(path, skip_missing_images=True)
    assert [img["id"] for img in data.images] == [1]
    assert data.repairs["images skipped: file missing"] == 1


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [ {"id": 1,, } ]}')
    with pytest.raises(DatasetError, match=r"bad\.json: malformed JSON at line 1, column"):
        load_coco(path)


def test_unknown_category_id(tmp_path):
    anns = [{"id": 7, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DatasetError, match=r"annotation id 7 has unknown category id 5 "
                       r"\(known: \[0, 1\]\)"):
        load_coco(write_coco(tmp_path, annotations=anns))


@pytest.mark.parametrize("kind", ["image", "annotation", "category"])
def test_duplicate_ids(tmp_path, kind):
    images = [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
              {"id": 1 if kind == "image" else 2, "file_name": "b.png", "width": 60, "height": 40}]
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 1, 5, 5]},
            {"id": 1 if kind == "annotation" else 2, "image_id": 1, "category_id": 0,
             "bbox": [1, 1, 5, 5]}]
    cats = [{"id": 0, "name": "0"}, {"id": 0 if kind == "category" else 1, "name": "1"}]
    path = write_coco(tmp_path, images=images, annotations=anns, categories=cats)
    with pytest.raises(DatasetError, match=f"duplicate {kind} id"):
        load_coco(path)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../x.png"])
def test_file_name_escaping_the_root(tmp_path, name):
    images = [{"id": 1, "file_name": name, "width": 60, "height": 40}]
    path = write_coco(tmp_path / "d", images=images, annotations=[], make_files=False)
    with pytest.raises(DatasetError, match="escapes the image root"):
        load_coco(path)


def test_a_symbolic_link_inside_the_root_is_followed(tmp_path):
    elsewhere = tmp_path / "shared_images"
    write_coco(elsewhere, images=[{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
               annotations=[])
    root = tmp_path / "d"
    root.mkdir()
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    images = [{"id": 1, "file_name": "linked/a.png", "width": 60, "height": 40}]
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [5, 5, 10, 20]}]
    data = load_coco(write_coco(root, images=images, annotations=anns, make_files=False))
    assert data.num_boxes == 1
    assert CocoDetection(data).load_image(0).shape[-2:] == (40, 60)


def test_xyxy_that_still_fits_as_xywh_warns(tmp_path, caplog):
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100}
              for i in range(1, 21)]
    # Boxes x 20..40, y 10..40 written as [x1, y1, x2, y2]: as xywh they fit, twice too big.
    anns = [{"id": i, "image_id": i, "category_id": 0, "bbox": [20 + i, 10, 40 + i, 40]}
            for i in range(1, 21)]
    data = load_coco(write_coco(tmp_path, images=images, annotations=anns))
    assert data.num_boxes == 20  # kept: a warning, since real boxes can look like this
    assert "all 20 boxes are wider than their x" in caplog.text
    assert "[x1, y1, x2 - x1, y2 - y1]" in caplog.text


def test_real_xywh_datasets_do_not_look_like_xyxy(caplog):
    load_coco(shared_path("orand-car-a", "instances_train.json"))
    load_coco(shared_path("building-characters-yolo", "data.yaml"), split="train")
    assert "wider than their x" not in caplog.text


def test_xyxy_written_as_xywh(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 50} for i in range(1, 6)]
    # Real boxes around x 40..60, y 10..40, written as [x1, y1, x2, y2].
    anns = [{"id": i, "image_id": i, "category_id": 0, "bbox": [40 + i, 10, 60 + i, 40]}
            for i in range(1, 6)]
    with pytest.raises(DatasetError, match=r"look like \[x1, y1, x2, y2\].*x2 - x1"):
        load_coco(write_coco(tmp_path, images=images, annotations=anns))


def test_bad_bbox_and_unknown_image(tmp_path):
    with pytest.raises(DatasetError, match=r"annotation id 1 bbox is \[1, 2, 3\]"):
        load_coco(write_coco(tmp_path / "a", annotations=[
            {"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 2, 3]}]))
    with pytest.raises(DatasetError, match="annotation id 1 refers to unknown image id 9"):
        load_coco(write_coco(tmp_path / "b", annotations=[
            {"id": 1, "image_id": 9, "category_id": 0, "bbox": [1, 2, 3, 4]}]))


def test_missing_sections(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetError, match="no 'images' list"):
        load_coco(path)


def test_real_roboflow_export_loads_as_is():
    path = shared_path("orand-car-a", "instances_train.json")
    data = load_coco(path)
    assert data.image_root.name == "images"  # found without configuration
    assert len(data.images) == 1080 and data.num_boxes == 4898
    assert data.category_ids == list(range(10))
    assert data.images[0]["id"] == 0  # 0-based image ids kept
    train, valid = holdout_split(data, 0.1, seed=0)
    assert len(valid.images) == 108 and len(train.images) == 972
    assert not {i["id"] for i in train.images} & {i["id"] for i in valid.images}
    for part in (train, valid):
        classes = {a["category_id"] for anns in part.annotations.values() for a in anns}
        assert classes == set(range(10))
    again, _ = holdout_split(data, 0.1, seed=0)
    assert [i["id"] for i in again.images] == [i["id"] for i in train.images]


def test_nan_or_infinite_boxes_are_dropped_counted_and_named(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [5, 5, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 5, 10, 20]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, float("inf"), 20]}]
    data = load_coco(write_coco(tmp_path, annotations=anns))  # json writes them as NaN/Infinity
    assert data.num_boxes == 1 and data.repairs["boxes dropped: NaN or infinite coordinates"] == 2
    assert not data.repairs["boxes clipped to the image"]  # no box made up by clipping
    assert "annotation ids 2, 3 have a NaN or infinite bbox coordinate" in caplog.text


def test_the_image_folder_is_where_most_files_are(tmp_path):
    """The first record's file missing: the images/ folder is still found, the error names it,
    and skipping missing images counts that one."""
    from PIL import Image

    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(4)]
    anns = [{"id": i, "image_id": i, "category_id": 0, "bbox": [5, 5, 10, 20]} for i in range(4)]
    path = write_coco(tmp_path, images=images, annotations=anns, make_files=False)
    (tmp_path / "images").mkdir()
    for img in images[1:]:
        Image.new("RGB", (60, 40)).save(tmp_path / "images" / img["file_name"])
    with pytest.raises(DatasetError, match=r"image id 0: file .*images/0\.png does not exist"):
        load_coco(path)
    data = load_coco(path, skip_missing_images=True)
    assert data.image_root == tmp_path / "images" and len(data.images) == 3
    assert data.repairs["images skipped: file missing"] == 1

"""Converters to COCO: the real shared YOLO and SVHN sets, hand-made VOC and YOLO edge cases."""

import logging
import shutil
from collections import Counter
from pathlib import Path

import h5py
import pytest
from PIL import Image

from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import DatasetError, load_coco
from rcnnlab.data.convert import write_coco
from rcnnlab.data.svhn import svhn_to_coco
from rcnnlab.data.voc import voc_to_coco
from rcnnlab.data.yolo import yolo_to_coco
from rcnnlab.evaluation.sequence import numbers_from_coco

from .conftest import shared_path

# Counted by hand per label file with `awk 'NF > 0' FILE | wc -l`: `wc -l` alone undercounts
# by one a file, since these files do not end in a newline (and `cat labels/*.txt` glues the
# last line of a file to the first of the next). Per class: `awk '{print $1}'`, file by file.
YOLO_SPLITS = {
    # split: (images, boxes, most boxes on one image, boxes per class index 0..9)
    "valid": (63, 624, 27, [108, 111, 128, 68, 42, 52, 28, 33, 20, 34]),
    "test": (13, 54, 27, [11, 5, 7, 1, 2, 7, 4, 10, 4, 3]),
}


def _loads_without_repairs(coco: dict, image_root: Path, out_json: Path) -> None:
    data = load_coco(write_coco(coco, out_json), image_root)
    assert not data.repairs
    assert len(data.images) == len(coco["images"])
    assert data.num_boxes == len(coco["annotations"])


def _inside(coco: dict) -> bool:
    size = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    return all(
        x >= 0 and y >= 0 and x + w <= size[a["image_id"]][0] and y + h <= size[a["image_id"]][1]
        and w >= 1 and h >= 1
        for a in coco["annotations"] for x, y, w, h in [a["bbox"]])


# ------------------------------------------------------------------------------- YOLO, real

@pytest.mark.parametrize("split", sorted(YOLO_SPLITS))
def test_yolo_real_split_counts_classes_and_boxes(split, tmp_path):
    root = shared_path("number-extraction-yolo")
    n_images, n_boxes, most, per_class = YOLO_SPLITS[split]
    coco, image_root = yolo_to_coco(root, split)

    assert image_root == root / split / "images"
    assert coco["categories"] == [{"id": i, "name": str(i)} for i in range(10)]  # data.yaml
    assert len(coco["images"]) == coco["info"]["images"] == n_images
    assert len(coco["annotations"]) == coco["info"]["annotations"] == n_boxes
    assert max(Counter(a["image_id"] for a in coco["annotations"]).values()) == most
    by_class = Counter(a["category_id"] for a in coco["annotations"])
    assert [by_class[i] for i in range(10)] == per_class  # YOLO class index = category id
    assert {(img["width"], img["height"]) for img in coco["images"]} == {(640, 640)}
    assert _inside(coco)
    info = coco["info"]
    assert (info["boxes_clipped"], info["negative_images"], info["polygons_as_boxes"]) == (0, 0, 0)
    assert [a["id"] for a in coco["annotations"]] == list(range(1, n_boxes + 1))
    _loads_without_repairs(coco, image_root, tmp_path / "sub" / f"{split}.json")


def test_yolo_real_first_box_converted_from_normalised(tmp_path):
    root = shared_path("number-extraction-yolo")
    coco, image_root = yolo_to_coco(root / "valid")  # a split folder: data.yaml in the parent
    first = coco["images"][0]
    label = (root / "valid" / "labels" / Path(first["file_name"]).with_suffix(".txt").name)
    # First line: "7 0.7953125 0.5890625 0.0203125 0.0453125" on a 640 x 640 image:
    # cx 509, cy 377, w 13, h 29 px -> x 509 - 6.5, y 377 - 14.5.
    assert label.read_text().splitlines()[0] == "7 0.7953125 0.5890625 0.0203125 0.0453125"
    ann = coco["annotations"][0]
    assert (ann["image_id"], ann["category_id"]) == (first["id"], 7)
    assert ann["bbox"] == pytest.approx([502.5, 362.5, 13.0, 29.0])
    assert ann["area"] == pytest.approx(13.0 * 29.0)
    assert coco["info"]["images"] == 63 and image_root == root / "valid" / "images"


# ----------------------------------------------------------------------- YOLO, hand-made

def _yolo_split(folder: Path, labels: dict[str, str | None], size=(100, 50)) -> None:
    """images/ + labels/ in `folder`: one PNG per key; label text None = no label file."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    for stem, text in labels.items():
        Image.new("RGB", size).save(folder / "images" / f"{stem}.png")
        if text is not None:
            (folder / "labels" / f"{stem}.txt").write_text(text)


def test_yolo_polygon_clipping_negatives_and_dict_names(tmp_path):
    (tmp_path / "data.yaml").write_text("nc: 2\nnames: {0: cat, 1: dog}\n")
    _yolo_split(tmp_path / "train", {
        "a": "1 0.1 0.2 0.5 0.2 0.3 0.6\n",  # polygon (3 points) -> its bounding box
        "b": "0 0.05 0.5 0.2 0.4\n"  # pokes out on the left: clipped
             "\n"
             "0 0.5 0.5 0.005 0.5",  # 0.5 px wide: dropped (no newline at the end, as Roboflow)
        "c": "",  # empty label file: a negative
        "d": None,  # no label file: a negative
    })
    (tmp_path / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")

    coco, image_root = yolo_to_coco(tmp_path, "train")
    assert image_root == tmp_path / "train" / "images"
    assert coco["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    assert [(img["id"], img["file_name"]) for img in coco["images"]] == [
        (1, "a.png"), (2, "b.png"), (3, "c.png"), (4, "d.png")]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]]
    assert boxes == [(1, 1, pytest.approx([10, 10, 40, 20])),  # x 0.1..0.5, y 0.2..0.6
                     (2, 0, pytest.approx([0, 15, 15, 20]))]  # x -5..15 clipped to 0..15
    info = coco["info"]
    assert info["polygons_as_boxes"] == 1 and info["boxes_clipped"] == 1
    assert info["boxes_dropped_degenerate"] == 1
    assert info["negative_images"] == 2 and info["missing_label_files"] == 1
    assert info["labels_without_image"] == 1
    _loads_without_repairs(coco, image_root, tmp_path / "train.json")
    # a file mixing boxes and polygons is what a missing line break makes: refused
    (tmp_path / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.2\n"
                                                         "1 0.1 0.2 0.5 0.2 0.3 0.6\n")
    with pytest.raises(DatasetError, match=r"a\.txt: line 2 .*a polygon among the box lines"):
        yolo_to_coco(tmp_path, "train")


def test_yolo_ultralytics_layout_and_names_argument(tmp_path):
    for sub in ("images", "labels"):
        (tmp_path / sub / "val").mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "val" / "x.jpg")
    (tmp_path / "labels" / "val" / "x.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DatasetError, match="no data.yaml"):
        yolo_to_coco(tmp_path, "val")
    # "valid" (Roboflow's name) finds Ultralytics' images/val.
    coco, image_root = yolo_to_coco(tmp_path, "valid", names=["a", "b", "c"])
    assert image_root == tmp_path / "images" / "val"
    assert coco["categories"][2] == {"id": 2, "name": "c"}
    assert coco["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 10.0]
    with pytest.raises(DatasetError, match=r"give split= one of \['val'\]"):
        yolo_to_coco(tmp_path)


@pytest.mark.parametrize(("line", "message"), [
    ("0 0.5 0.5 0.1", "4 columns"),
    ("0 0.5 0.5 0.1 0.1 0.9", "6 columns"),
    ("0 0.5 0.5 0.1 abc", "not all numbers"),
    ("2 0.5 0.5 0.1 0.1", r"class 2 is not a class index \(0..1\)"),
    ("0.5 0.5 0.5 0.1 0.1", "class 0.5 is not a class index"),
    ("0 320 240 50 60", r"box values outside \[0, 1\].*Fix: normalise"),
])
def test_yolo_bad_line_names_file_and_line(tmp_path, line, message):
    (tmp_path / "data.yaml").write_text("names: ['0', '1']\nnc: 2\n")
    _yolo_split(tmp_path / "valid", {"img": f"1 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(ValueError, match=rf"img\.txt: line 2 '{line}': {message}"):
        yolo_to_coco(tmp_path, "valid")


def test_yolo_byte_order_marks_are_read_past(tmp_path):
    # Some Windows editors start UTF-8 files with a byte-order mark.
    (tmp_path / "data.yaml").write_bytes(b"\xef\xbb\xbfnames: ['0', '1']\nnc: 2\n")
    _yolo_split(tmp_path / "valid", {"img": None})
    (tmp_path / "valid" / "labels" / "img.txt").write_bytes(b"\xef\xbb\xbf1 0.5 0.5 0.2 0.2\n")
    coco, _ = yolo_to_coco(tmp_path, "valid")
    assert [a["category_id"] for a in coco["annotations"]] == [1]
    (tmp_path / "valid" / "labels" / "img.txt").write_bytes(b"\xff\xfe1\x000\x00")
    with pytest.raises(DatasetError, match=r"img\.txt: not a UTF-8 text file"):
        yolo_to_coco(tmp_path, "valid")


def test_yolo_pose_keypoints_are_not_a_polygon(tmp_path):
    # 11 columns would read as a 5-point polygon; kpt_shape says box + 2 keypoints (x, y, v).
    (tmp_path / "data.yaml").write_text("names: [person]\nkpt_shape: [2, 3]\n")
    _yolo_split(tmp_path / "train", {"p": "0 0.5 0.5 0.2 0.4 0.1 0.1 2 0.9 0.9 2\n"})
    coco, _ = yolo_to_coco(tmp_path, "train")
    assert coco["annotations"][0]["bbox"] == pytest.approx([40, 15, 20, 20])
    assert coco["info"]["polygons_as_boxes"] == 0


def test_yolo_yaml_nc_mismatch(tmp_path):
    (tmp_path / "data.yaml").write_text("names: ['0', '1']\nnc: 3\n")
    _yolo_split(tmp_path / "valid", {"img": ""})
    with pytest.raises(DatasetError, match="data.yaml: nc is 3 but names lists 2 classes"):
        yolo_to_coco(tmp_path, "valid")


# ------------------------------------------------------------------------------- SVHN, real

def _mat_entries(mat_path: Path) -> int:
    with h5py.File(mat_path, "r") as mat:
        return mat["digitStruct/name"].shape[0]


@pytest.mark.parametrize(("split", "numbers"), [
    ("train", {1: "19", 2: "23", 3: "25"}),
    ("test", {1: "5", 2: "210", 3: "6"}),
])
def test_svhn_real_sample_reads_the_numbers(split, numbers, tmp_path, caplog):
    mat = shared_path("svhn-sample", split, "digitStruct.mat")
    with caplog.at_level(logging.WARNING):
        coco, image_root = svhn_to_coco(mat)
    assert image_root == mat.parent
    assert coco["categories"] == [{"id": d + 1, "name": str(d)} for d in range(10)]
    assert [(img["id"], img["file_name"]) for img in coco["images"]] == [
        (1, "1.png"), (2, "2.png"), (3, "3.png")]
    assert numbers_from_coco(coco, digit_names(coco["categories"])) == numbers
    skipped = _mat_entries(mat) - 3  # the .mat lists 39 (train) / 40 (test) entries
    assert coco["info"]["skipped_missing_images"] == skipped > 30
    assert f"{skipped} entries skipped: image file missing" in caplog.text
    assert _inside(coco)
    _loads_without_repairs(coco, image_root, tmp_path / f"{split}.json")


def test_svhn_real_boxes_and_label_ten_is_zero():
    train, _ = svhn_to_coco(shared_path("svhn-sample", "train", "digitStruct.mat"))
    # SVHN train 1.png: digits 1 and 9 at left 246/323, top 77/81, width 81/96, height 219/219.
    assert [(a["category_id"], a["bbox"]) for a in train["annotations"] if a["image_id"] == 1] == [
        (2, [246.0, 77.0, 81.0, 219.0]), (10, [323.0, 81.0, 96.0, 219.0])]
    assert train["images"][0] == {"id": 1, "file_name": "1.png", "width": 741, "height": 350}

    test, _ = svhn_to_coco(shared_path("svhn-sample", "test", "digitStruct.mat"))
    # test 2.png: labels 2, 1, 10 in the .mat; 10 is digit 0 -> category 1 (named "0").
    assert [(a["category_id"], a["bbox"]) for a in test["annotations"] if a["image_id"] == 2] == [
        (3, [99.0, 5.0, 14.0, 23.0]), (2, [114.0, 8.0, 8.0, 23.0]), (1, [121.0, 6.0, 12.0, 23.0])]


def test_svhn_image_dir_and_bad_files(tmp_path):
    mat = shared_path("svhn-sample", "test", "digitStruct.mat")
    shutil.copy(mat.parent / "2.png", tmp_path)
    coco, image_root = svhn_to_coco(mat, image_dir=tmp_path)
    assert image_root == tmp_path
    assert [img["file_name"] for img in coco["images"]] == ["2.png"]
    assert coco["info"]["skipped_missing_images"] == _mat_entries(mat) - 1
    not_hdf5 = tmp_path / "digitStruct.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DatasetError, match="digitStruct.mat: not a MATLAB v7.3"):
        svhn_to_coco(not_hdf5)


# ------------------------------------------------------------------------ VOC, hand-made

def _voc_xml(filename: str, objects: list[tuple], size: tuple[int, int] | None) -> str:
    size_xml = "" if size is None else (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    objs = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, difficult, x1, y1, x2, y2 in objects)
    return (f"<annotation><folder>VOC</folder><filename>{filename}</filename>"
            f"{size_xml}{objs}</annotation>")


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """VOC/Annotations with a.xml (size given), b.xml (no size), c.xml (image missing)."""
    ann, jpeg = tmp_path / "VOC" / "Annotations", tmp_path / "VOC" / "JPEGImages"
    ann.mkdir(parents=True)
    jpeg.mkdir()
    Image.new("RGB", (100, 80)).save(jpeg / "a.jpg")
    Image.new("RGB", (50, 40)).save(jpeg / "b.png")
    (ann / "a.xml").write_text(_voc_xml("a.jpg", [
        ("dog", 0, 1, 1, 100, 80),  # the whole image, 1-based inclusive
        ("cat", 1, 11, 21, 30, 40),  # difficult
    ], size=(100, 80)))
    (ann / "b.xml").write_text(_voc_xml("b.png", [
        ("bird", 0, 5, 6, 14, 15),
        ("cat", 0, 0, 10, 9, 19),  # written 0-based: pokes out by a pixel, clipped
    ], size=None))
    (ann / "c.xml").write_text(_voc_xml("c.jpg", [("dog", 0, 1, 1, 5, 5)], size=(10, 10)))
    return ann


def test_voc_boxes_classes_difficult_and_size_fallback(voc, tmp_path):
    coco, image_root = voc_to_coco(voc)
    assert image_root == voc.parent / "JPEGImages"
    assert coco["categories"] == [
        {"id": 1, "name": "bird"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "dog"}]
    assert coco["images"] == [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 50, "height": 40},  # size read from the image
    ]
    got = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"], a.get("difficult"))
           for a in coco["annotations"]]
    assert got == [
        (1, 3, [0.0, 0.0, 100.0, 80.0], 0, None),  # x = xmin - 1, w = xmax - xmin + 1
        (1, 2, [10.0, 20.0, 20.0, 20.0], 1, 1),  # difficult -> crowd (ignored in eval)
        (2, 1, [4.0, 5.0, 10.0, 10.0], 0, None),
        (2, 2, [0.0, 9.0, 9.0, 10.0], 0, None),  # x -1 clipped to 0
    ]
    info = coco["info"]
    assert (info["skipped_missing_images"], info["sizes_read_from_images"]) == (1, 1)
    assert (info["boxes_clipped"], info["difficult_objects"]) == (1, 1)
    _loads_without_repairs(coco, image_root, tmp_path / "voc.json")

    ordered, _ = voc_to_coco(voc, classes=["dog", "cat", "bird", "cow"])
    assert [c["name"] for c in ordered["categories"]] == ["dog", "cat", "bird", "cow"]
    assert [a["category_id"] for a in ordered["annotations"]] == [1, 2, 3, 2]
    with pytest.raises(DatasetError, match=r"a\.xml: classes \['dog'\] are not in the given"):
        voc_to_coco(voc, classes=["cat", "bird"])


def test_voc_malformed_xml_and_bad_box(voc):
    (voc / "b.xml").write_text("<annotation><filename>b.png</filename><object>")
    with pytest.raises(DatasetError, match=r"b\.xml: malformed XML \(.*line 1"):
        voc_to_coco(voc)
    (voc / "b.xml").write_text(_voc_xml("b.png", [("cat", 0, 20, 5, 10, 15)], size=(50, 40)))
    with pytest.raises(DatasetError, match=r"b\.xml: object 1 \(cat\): xmax < xmin"):
        voc_to_coco(voc)


# ------------------------------------------------------------------ YOLO data.yaml, no conversion
def test_a_data_yaml_is_read_where_a_coco_json_is(tmp_path):
    root = shared_path("number-extraction-yolo")
    for split, key, n in (("valid", None, 63), ("test", None, 13), ("train", "val", 63)):
        ref = root / "data.yaml" if key is None else f"{root / 'data.yaml'}:{key}"
        data = load_coco(ref, split=split)
        coco, _ = yolo_to_coco(root, "valid" if key else split)
        assert len(data.images) == n == len(coco["images"])
        assert sum(map(len, data.annotations.values())) == len(coco["annotations"])
        assert [c["name"] for c in data.categories] == [str(d) for d in range(10)]
    # Roboflow's "../train/images" names a folder this sample does not have: one clear error
    with pytest.raises(DatasetError, match=r"data.yaml: the train images folder "
                                           r"'../train/images' .* does not exist"):
        load_coco(root / "data.yaml", split="train")
    # the key form reads without a role (stats, show); a bare yaml there says how
    assert len(load_coco(f"{root / 'data.yaml'}:test").images) == 13
    with pytest.raises(DatasetError, match="a YAML file where a COCO json is read. Fix: give "
                                           "data.yaml:val"):
        load_coco(root / "data.yaml")


def test_data_yolo_fills_the_splits_it_names_and_training_runs_on_them(tmp_path):
    from rcnnlab import api
    from rcnnlab.config import load_config
    from rcnnlab.data.splits import load_splits
    from rcnnlab.engine.progress import ProgressReporter
    from tests.tiny import TINY

    for split in ("train", "val"):  # the Ultralytics layout: images/<split>, labels/<split>
        folder = tmp_path / "ds" / "images" / split
        labels = tmp_path / "ds" / "labels" / split
        folder.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (96, 64), (40 * i, 90, 160)).save(folder / f"{i}.png")
            (labels / f"{i}.txt").write_text("1 0.3 0.5 0.2 0.5\n2 0.6 0.5 0.2 0.5\n")
    (tmp_path / "ds" / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames: ['0', '1', '2']\n")
    cfg = load_config(None, [*TINY, f"data.yolo={tmp_path / 'ds' / 'data.yaml'}",
                             "train.epochs=1", "train.iters_per_epoch=1",
                             f"out_dir={tmp_path / 'runs'}"])
    splits = load_splits(cfg.data, need=("train", "valid"))
    assert [len(splits[s].images) for s in ("train", "valid")] == [4, 4]
    fit = api.train(cfg, reporter=ProgressReporter(quiet=True))
    assert fit.iterations == 1 and (fit.run_dir / "checkpoints" / "best.pt").is_file()

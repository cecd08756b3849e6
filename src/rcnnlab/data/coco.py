"""COCO json loading with validation, and the torch Dataset that feeds the detector.

Any category ids are accepted (Roboflow exports use 0 as a real class); the model's label is the
category's index in id order + 1, because torchvision reserves label 0 for background. Problems
with the file are reported once, naming the file, the record and the fix; repairs (clipping,
dropping degenerate boxes) are counted and logged, never silent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision import tv_tensors

from rcnnlab.data.images import DEFAULT_MAX_PIXELS, image_size, read_image
from rcnnlab.data.yolo import yaml_reference, yolo_yaml_split
from rcnnlab.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


@dataclass
class CocoData:
    """A validated COCO split: records by image, categories, and the repairs made while loading."""

    json_path: Path
    image_root: Path
    images: list[dict]  # the image records, in file order (width/height: the files' own)
    annotations: dict[int, list[dict]]  # image id -> its annotations (bbox repaired, xywh)
    categories: list[dict]  # sorted by id
    repairs: Counter = field(default_factory=Counter)  # what was clipped / dropped / skipped
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused when read

    @property
    def category_ids(self) -> list[int]:
        """Dataset category ids in label order (label = index + 1)."""
        return [c["id"] for c in self.categories]

    @property
    def label_of(self) -> dict[int, int]:
        """Dataset category id -> contiguous model label (1-based; 0 is background)."""
        return {cid: i + 1 for i, cid in enumerate(self.category_ids)}

    @property
    def num_boxes(self) -> int:
        """Number of annotations kept."""
        return sum(len(v) for v in self.annotations.values())

    def to_coco_dict(self) -> dict:
        """The split as a COCO dict (what the evaluator reads as ground truth)."""
        anns = [a for img in self.images for a in self.annotations.get(img["id"], [])]
        return {"images": self.images, "annotations": anns, "categories": self.categories}


def _fail(path: Path, what: str, fix: str) -> DatasetError:
    return DatasetError(f"{path}: {what}. Fix: {fix}")


def read_json(path: str | Path) -> dict:
    """Read a COCO json file, with an error naming the line and column when it is malformed."""
    path = Path(path)
    if path.is_dir():
        raise _fail(path, "a folder, not a COCO json",
                    "give the json file in it (or a YOLO dataset's data.yaml)")
    if not path.is_file():
        raise _fail(path, "file not found", "check the path (data.*_json in the config)")
    if path.suffix.lower() in (".yaml", ".yml"):
        raise _fail(path, "a YAML file where a COCO json is read",
                    f"give {path.name}:val (or :train, :test) to read one of a YOLO data.yaml's "
                    "splits, or set data.yolo / data.*_json to it in a config")
    try:
        tree = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise _fail(
            path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            "repair the file (e.g. re-export it) so that `python -m json.tool` accepts it",
        ) from None
    except UnicodeDecodeError:
        raise _fail(path, "not a UTF-8 text file",
                    "give the COCO .json, not an image or archive") from None
    if not isinstance(tree, dict):
        raise _fail(path, "top level is not an object",
                    "a COCO file is {images, annotations, categories}")
    for key in ("images", "categories"):
        if not isinstance(tree.get(key), list):
            raise _fail(path, f"no '{key}' list", f"add the '{key}' list of a COCO detection file")
    tree.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        records = tree[key]
        if not isinstance(records, list):
            raise _fail(path, f"'{key}' is a {type(records).__name__}, not a list",
                        f"make '{key}' a list of records")
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise _fail(path, f"{key} record #{i} is {record!r}, not an object",
                            f"make every '{key}' entry an object with an id")
    for ann in tree["annotations"]:
        if ann.get("iscrowd", 0) not in (0, 1):  # "yes" would silently read as a crowd box
            raise _fail(path, f"annotation id {ann.get('id')} has iscrowd {ann['iscrowd']!r}",
                        "give iscrowd as 0 or 1")
    return tree


def default_image_root(json_path: Path, images: list[dict]) -> Path:
    """The json's folder, or its `images/` subfolder when more of the files are there (every
    record counts: a first record whose file is missing must not send the search astray)."""
    folder = json_path.parent
    sub = folder / "images"
    if not images or not sub.is_dir():
        return folder
    names = [img["file_name"] for img in images if isinstance(img.get("file_name"), str)]
    found_in_sub = sum((sub / name).is_file() for name in names)
    return sub if found_in_sub > sum((folder / name).is_file() for name in names) else folder


def _unique_ids(path: Path, records: list[dict], kind: str) -> None:
    seen: set = set()
    for i, rec in enumerate(records):
        rid = rec.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise _fail(path, f"{kind} record #{i} has id {rid!r}",
                        f"give every {kind} an integer id")
        if rid in seen:
            raise _fail(path, f"duplicate {kind} id {rid} (record #{i})", f"make {kind} ids unique")
        seen.add(rid)


def _warn_shared(path: Path, records: list[dict], field: str, kind: str, why: str) -> None:
    """A counted warning naming the ids of records that share a value of `field`."""
    by_value: dict = {}
    for rec in records:
        if isinstance(rec.get(field), str):
            by_value.setdefault(rec[field], []).append(rec["id"])
    shared = {value: ids for value, ids in by_value.items() if len(ids) > 1}
    if shared:
        shown = "; ".join(f"{value!r}: ids {', '.join(map(str, ids))}"
                          for value, ids in list(shared.items())[:5])
        more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        log.warning("%s: %d %s share their %s (%s%s): %s", path,
                    sum(map(len, shared.values())), kind, field, shown, more, why)


def _check_file_name(path: Path, root: Path, img: dict) -> Path:
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        raise _fail(path, f"image id {img['id']} has no file_name", "add the image's file_name")
    # Judged by the name, not by where links lead: a symbolic link inside the root is the
    # user's own way to share image folders and is followed.
    if Path(name).is_absolute() or os.path.normpath(name).split(os.sep)[0] == "..":
        raise _fail(
            path, f"image id {img['id']} file_name {name!r} escapes the image root {root}",
            "write file names relative to the image folder, without '..' and not absolute "
            "(a symbolic link inside the folder is followed)",
        )
    return (root / name).resolve()


def _looks_like_xyxy(boxes: list[tuple[list[float], dict]]) -> bool:
    """True when boxes overflow their images as xywh but fit perfectly read as x1,y1,x2,y2."""
    if len(boxes) < 5:
        return False
    overflow = fits_xyxy = 0
    for (x, y, w, h), img in boxes:
        width, height = img["width"], img["height"]
        if x + w > width + 1 or y + h > height + 1:
            overflow += 1
        if x < w <= width + 1 and y < h <= height + 1:
            fits_xyxy += 1
    return overflow >= 0.2 * len(boxes) and fits_xyxy >= 0.95 * len(boxes)


def _fits_both_readings(boxes: list[tuple[list[float], dict]]) -> int:
    """The number of (finite) boxes when boxes that fit their images may still be
    [x1, y1, x2, y2] read as xywh, else 0.

    Read that way every box has x < w and y < h (x2 > x1), which real xywh boxes rarely all do
    (0-55% of the boxes of four real datasets); a fifth of them must also sit far enough from
    the image's corner for the two readings to differ (tight crops of one object, x and y near
    0, read the same either way).
    """
    finite = [(x, y, w, h) for (x, y, w, h), _ in boxes
              if all(math.isfinite(v) for v in (x, y, w, h))]
    if len(finite) < 20 or not all(x < w and y < h for x, y, w, h in finite):
        return 0
    offset = sum(x > 0.1 * w or y > 0.1 * h for x, y, w, h in finite)
    return len(finite) if offset >= 0.2 * len(finite) else 0


def load_coco(
    json_path: str | Path,
    image_root: str | Path | None = None,
    *,
    check_files: bool = True,
    skip_missing_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    split: str | None = None,
) -> CocoData:
    """Load and validate a COCO detection json, or a split of a YOLO dataset through its
    data.yaml: `path/data.yaml` reads the entry of `split` ("train", "valid" = `val:`, "test"),
    `path/data.yaml:KEY` the entry KEY (`rcnnlab.data.convert.yolo_yaml_split`: converted in
    memory, then checked as a COCO file is).

    Errors (one clear message each): malformed JSON, duplicate ids, an annotation whose image or
    category id is unknown, a file_name that escapes the image root, a missing image file (unless
    `skip_missing_images`, which drops the record with a count), a bbox that is not 4 numbers,
    and an annotation set whose boxes look like xyxy written as xywh. Repairs (counted, logged):
    boxes clipped to the image, degenerate boxes dropped, crowd boxes left out of training.

    With `check_files`, every image's header is read (`rcnnlab.data.images.image_size`: EXIF
    rotation applied, more than `max_image_pixels` refused): where the json's width/height
    differ from the file's, the file's size wins, with a warning naming the records.
    """
    reference = yaml_reference(json_path)
    if reference is not None and reference[0].is_file() and (split or reference[1]):
        json_path, key = reference
        tree, yolo_images = yolo_yaml_split(json_path, split or key, key)
        image_root = image_root or yolo_images
    else:
        json_path = Path(json_path)
        tree = read_json(json_path)
    images, categories, anns = tree["images"], tree["categories"], tree["annotations"]
    if not categories:
        raise _fail(json_path, "the 'categories' list is empty",
                    "list the dataset's classes as {id, name} records in 'categories'")
    _unique_ids(json_path, images, "image")
    _unique_ids(json_path, categories, "category")
    _unique_ids(json_path, anns, "annotation")
    _warn_shared(json_path, images, "file_name", "image records", "the same image is then "
                 "trained (and may be split) twice; keep one record per file")
    _warn_shared(json_path, categories, "name", "categories", "their detections cannot be told "
                 "apart by name; merge them or rename one")
    root = Path(image_root) if image_root else default_image_root(json_path, images)
    repairs: Counter = Counter()

    kept_images, resized = [], []
    for img in images:
        target = _check_file_name(json_path, root, img)
        if check_files and not target.is_file():
            if skip_missing_images:
                repairs["images skipped: file missing"] += 1
                continue
            raise _fail(
                json_path, f"image id {img['id']}: file {target} does not exist",
                "restore the file, fix data.*_images, or set data.skip_missing_images=true",
            )
        img = dict(img)
        given = (img.get("width"), img.get("height"))
        if check_files or target.is_file():
            img["width"], img["height"] = image_size(
                target, max_pixels=max_image_pixels,
                what=f"{json_path}: image id {img['id']} ({img['file_name']}): ")
            if given != (img["width"], img["height"]) and given != (None, None):
                resized.append(f"{img['id']} ({given[0]}x{given[1]} -> "
                               f"{img['width']}x{img['height']})")
        elif not all(isinstance(v, int) and v > 0 for v in given):
            raise _fail(json_path, f"image id {img['id']} has no width/height and no file",
                        "add width and height to the record")
        kept_images.append(img)
    if resized:
        repairs["images whose json width/height differ from the file (the file's size is "
                "used)"] += len(resized)
        log.warning("%s: width/height differ from the image file for image ids %s%s",
                    json_path, ", ".join(resized[:10]),
                    f" and {len(resized) - 10} more" if len(resized) > 10 else "")
    by_id = {img["id"]: img for img in kept_images}
    all_image_ids = {img["id"] for img in images}
    cat_ids = {c["id"] for c in categories}

    raw_boxes = []
    for ann in anns:
        if ann.get("image_id") not in all_image_ids:
            raise _fail(json_path, f"annotation id {ann['id']} refers to unknown image id "
                        f"{ann.get('image_id')!r}", "remove the annotation or add its image record")
        if ann.get("category_id") not in cat_ids:
            raise _fail(json_path, f"annotation id {ann['id']} has unknown category id "
                        f"{ann.get('category_id')!r} (known: {sorted(cat_ids)})",
                        "add the category to 'categories' or correct the annotation")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
            raise _fail(json_path, f"annotation id {ann['id']} bbox is {bbox!r}",
                        "give bbox as [x, y, width, height] in pixels")
        if ann["image_id"] in by_id:
            raw_boxes.append((bbox, by_id[ann["image_id"]]))
        else:
            repairs["annotations skipped: image missing"] += 1
    if _looks_like_xyxy(raw_boxes):
        raise _fail(json_path, "the boxes look like [x1, y1, x2, y2] written where COCO wants "
                    "[x, y, width, height] (many overflow their image as xywh, all fit as xyxy)",
                    "convert each bbox to [x1, y1, x2 - x1, y2 - y1]")
    suspect = _fits_both_readings(raw_boxes)
    if suspect:
        log.warning("%s: all %d boxes are wider than their x and taller than their y, as "
                    "[x1, y1, x2, y2] boxes read as [x, y, width, height] always are: if they "
                    "are x1, y1, x2, y2, convert each bbox to [x1, y1, x2 - x1, y2 - y1]",
                    json_path, suspect)

    per_image: dict[int, list[dict]] = {img["id"]: [] for img in kept_images}
    not_finite = []
    for ann in anns:
        img = by_id.get(ann["image_id"])
        if img is None:
            continue
        if not all(math.isfinite(v) for v in ann["bbox"]):
            not_finite.append(ann["id"])  # clipping would make up a box out of nothing
            continue
        fixed = _repair_box(ann, img, repairs)
        if fixed is not None:
            per_image[img["id"]].append(fixed)
    if not_finite:
        repairs["boxes dropped: NaN or infinite coordinates"] += len(not_finite)
        log.warning("%s: annotation ids %s have a NaN or infinite bbox coordinate: dropped",
                    json_path, ", ".join(map(str, not_finite[:10]))
                    + (f" and {len(not_finite) - 10} more" if len(not_finite) > 10 else ""))
    for what, n in repairs.items():
        log.warning("%s: %d %s", json_path, n, what)
    return CocoData(json_path, root, kept_images, per_image,
                    sorted(categories, key=lambda c: c["id"]), repairs, max_image_pixels)


def _repair_box(ann: dict, img: dict, repairs: Counter) -> dict | None:
    """Clip a box to its image; None (counted) when it is degenerate."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(img["width"]), x + w), min(float(img["height"]), y + h)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        repairs["boxes dropped: degenerate (< 1 px after clipping)"] += 1
        return None
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        repairs["boxes clipped to the image"] += 1
    out = dict(ann)
    out["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    out["area"] = (x2 - x1) * (y2 - y1)
    out.setdefault("iscrowd", 0)
    return out


def require_boxes(data: CocoData, role: str) -> None:
    """Refuse a split without a box to learn from or to score against (crowd boxes, which
    training leaves out, do not count): it would train on nothing, or score 1.0 by default."""
    boxes = [a for anns in data.annotations.values() for a in anns]
    if any(not a.get("iscrowd", 0) for a in boxes):
        return
    dropped = sum(n for what, n in data.repairs.items() if what.startswith("boxes dropped"))
    found = (f"{len(data.images)} images, {len(boxes)} crowd boxes, {dropped} boxes dropped as "
             "unusable" if data.images else "no images")
    raise DatasetError(f"{data.json_path}: the {role} split has no boxes ({found}). Fix: give "
                       f"a {role} json with annotations (bbox and category_id per object)")


def warn_empty_classes(data: CocoData, role: str) -> list[str]:
    """Warn (counted, named) about categories without a box in the split: the detector gets no
    example of them and will never find one. Returns their names."""
    counts = {int(c["id"]): 0 for c in data.categories}
    for anns in data.annotations.values():
        for a in anns:
            if not a.get("iscrowd", 0) and int(a["category_id"]) in counts:
                counts[int(a["category_id"])] += 1
    empty = [str(c["name"]) for c in data.categories if counts[int(c["id"])] == 0]
    if empty:
        log.warning("%s: %d of %d classes have no %s box (%s): the detector will never find "
                    "them; add examples, or drop them from the categories", data.json_path,
                    len(empty), len(counts), role, ", ".join(empty[:10]) +
                    (", ..." if len(empty) > 10 else ""))
    return empty


def subset(data: CocoData, image_ids: list[int]) -> CocoData:
    """A CocoData holding only the given images (same categories and root)."""
    keep = set(image_ids)
    images = [img for img in data.images if img["id"] in keep]
    anns = {i: data.annotations[i] for i in (img["id"] for img in images)}
    return CocoData(data.json_path, data.image_root, images, anns, data.categories, Counter(),
                    data.max_image_pixels)


def holdout_split(data: CocoData, fraction: float, seed: int) -> tuple[CocoData, CocoData]:
    """Deterministic train/valid split that puts every class in valid where it can.

    Images are shuffled with `seed`; first, for each class (rarest first) one image holding it is
    moved to valid if valid has none yet; then valid is filled up to `fraction` of the images.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"the held-out fraction {fraction:g} (--fraction, data.val_fraction) "
                          "must lie between 0 and 1. Fix: e.g. 0.1 to hold out a tenth")
    ids = [img["id"] for img in data.images]
    rng = random.Random(seed)
    rng.shuffle(ids)
    n_valid = max(1, round(fraction * len(ids)))
    classes_of = {i: {a["category_id"] for a in data.annotations.get(i, [])} for i in ids}
    counts = Counter(c for cs in classes_of.values() for c in cs)
    valid: list[int] = []
    covered: set[int] = set()
    for cat in sorted(counts, key=lambda c: (counts[c], c)):
        if cat in covered or counts[cat] < 2 or len(valid) >= n_valid:
            continue
        pick = next(i for i in ids if cat in classes_of[i] and i not in valid)
        valid.append(pick)
        covered |= classes_of[pick]
    chosen = set(valid)
    valid += [i for i in ids if i not in chosen][: n_valid - len(valid)]
    valid_set = set(valid)
    train = [i for i in ids if i not in valid_set]
    return subset(data, train), subset(data, valid)


class CocoDetection(torch.utils.data.Dataset):
    """Images and targets for torchvision detectors: (uint8 CHW image, target dict).

    The target holds `boxes` (xyxy float, absolute pixels, a tv_tensors.BoundingBoxes so v2
    transforms move them), `labels` (contiguous 1..K), `image_id` and the original size.
    Crowd boxes are left out of training targets (they stay in the evaluation ground truth).
    """

    def __init__(self, data: CocoData, transforms=None):
        self.data = data
        self.transforms = transforms
        self._label_of = data.label_of

    def __len__(self) -> int:
        return len(self.data.images)

    def load_image(self, index: int) -> torch.Tensor:
        """The image as a uint8 RGB CHW tensor (`rcnnlab.data.images.read_image`)."""
        img = self.data.images[index]
        return read_image(self.data.image_root / img["file_name"],
                          max_pixels=self.data.max_image_pixels,
                          what=f"{self.data.json_path}: image id {img['id']}: ")

    def target(self, index: int, size: tuple[int, int]) -> dict:
        """The training target of one image (`size` is the loaded image's (h, w))."""
        img = self.data.images[index]
        anns = [a for a in self.data.annotations.get(img["id"], []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
            "labels": labels,
            "image_id": img["id"],
        }

    def __getitem__(self, index: int):
        image = self.load_image(index)
        target = self.target(index, tuple(image.shape[-2:]))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch):
    """Detection batches are lists: images differ in size."""
    return tuple(zip(*batch, strict=True))

"""Converters to COCO detection json: YOLO txt, SVHN digitStruct.mat and Pascal VOC xml.

Every converter returns ``(coco, image_root)``: a COCO dict whose image ``file_name`` values are
relative to ``image_root`` and which loads through :func:`rcnnlab.data.coco.load_coco` with no
repairs. Nothing is written unless :func:`write_coco` is called.

The converters do the repairs themselves, each counted in ``coco["info"]`` and logged: boxes are
clipped to their image and boxes under 1 px (after clipping) are dropped, the same rule as
``load_coco``. Images without boxes stay as negatives (counted). Bad input raises
:class:`~rcnnlab.data.coco.DatasetError` (a ValueError) naming the file, the record and the fix.

Format decisions (the why is at each converter):

- YOLO: category id = YOLO class index (0..nc-1, names from data.yaml); a polygon line (class +
  three or more x y points) becomes its polygon's bounding box. A label file mixing box and
  polygon lines is refused (as Ultralytics reads such a file, every line becomes points): it is
  what two box lines merged by a missing line break look like.
- SVHN: category id = digit + 1 with names "0".."9"; SVHN's label 10 is digit 0.
- VOC: pixel indices are 1-based and inclusive, so ``xmin..xmax`` becomes
  ``x = xmin - 1, w = xmax - xmin + 1``; ``difficult`` objects become ``iscrowd = 1``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import h5py
import yaml

from rcnnlab.data.images import image_size
from rcnnlab.errors import ConfigError, DatasetError
from rcnnlab.files import write_atomic
from rcnnlab.progress import tracked

log = logging.getLogger(__name__)

# What Ultralytics accepts as images (its IMG_FORMATS, less the video-like and raw ones).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
SVHN_CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(10)]  # category_id = digit + 1
_SVHN_FIELDS = ("label", "left", "top", "width", "height")
_SPLIT_ALIASES = {"val": "valid", "valid": "val"}  # Ultralytics says val, Roboflow valid
# Counts that mean something was changed or left out, logged as warnings when non-zero.
_WARNINGS = {
    "boxes_clipped": "boxes clipped to their image",
    "boxes_dropped_degenerate": "boxes dropped: under 1 px after clipping",
    "skipped_missing_images": "entries skipped: image file missing (check the image folder)",
    "labels_without_image": "label files left out: no image of that name",
}


def _error(path: Path, what: str, fix: str) -> DatasetError:
    return DatasetError(f"{path}: {what}. Fix: {fix}")


class _Builder:
    """Collects the images and boxes of one converted dataset, with the repair counts."""

    def __init__(self, source_format: str, source: Path, image_root: Path, counts: tuple[str, ...]):
        self.source = source
        self.info: dict = {"source_format": source_format, "source": str(source),
                           "image_root": str(image_root)}
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.counts = Counter(dict.fromkeys(
            ("boxes_clipped", "boxes_dropped_degenerate", *counts), 0))
        self.missing: list[str] = []  # image files the source names that are not there

    def add_image(self, image_id: int, file_name: str, width: int, height: int) -> dict:
        image = {"id": image_id, "file_name": file_name, "width": width, "height": height}
        self.images.append(image)
        return image

    def add_box(self, image: dict, category_id: int, x1: float, y1: float, x2: float, y2: float,
                *, iscrowd: int = 0, **extra) -> None:
        """Add an xyxy box (absolute pixels), clipped to the image; dropped if under 1 px."""
        cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
        cx2, cy2 = min(x2, float(image["width"])), min(y2, float(image["height"]))
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            self.counts["boxes_clipped"] += 1
        w, h = cx2 - cx1, cy2 - cy1
        if w < 1.0 or h < 1.0:  # load_coco would drop it: do it here, counted
            self.counts["boxes_dropped_degenerate"] += 1
            return
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image["id"], "category_id": category_id,
            "bbox": [float(cx1), float(cy1), float(w), float(h)], "area": float(w * h),
            "iscrowd": iscrowd, **extra,
        })

    def finish(self, categories: list[dict], **info) -> dict:
        """The COCO dict; counts go in ``info`` and the repairs to the log."""
        with_boxes = {a["image_id"] for a in self.annotations}
        self.counts["negative_images"] = sum(img["id"] not in with_boxes for img in self.images)
        for key, what in _WARNINGS.items():
            if self.counts[key]:
                log.warning("%s: %d %s", self.source, self.counts[key], what)
        if self.missing:
            log.warning("%s: the missing image files include %s", self.source,
                        ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else ""))
        log.info("%s: %d images (%d without boxes), %d boxes", self.source, len(self.images),
                 self.counts["negative_images"], len(self.annotations))
        self.info.update(info, images=len(self.images), annotations=len(self.annotations),
                         **self.counts)
        return {"info": self.info, "images": self.images, "annotations": self.annotations,
                "categories": categories}


def write_coco(coco: dict, out_json: Path) -> Path:
    """Write a COCO dict to ``out_json`` atomically (temporary file + rename); returns the path.

    File names in the json stay relative to the converter's image root (also recorded in
    ``info["image_root"]``): pass that root to ``load_coco`` when the json lives elsewhere.
    """
    return write_atomic(out_json, json.dumps(coco))


# --------------------------------------------------------------------------------------- YOLO

def _yolo_dirs(root: Path, split: str | None) -> tuple[Path, Path]:
    """(images, labels) folders of a split, in the Roboflow or the Ultralytics layout."""
    if split is None:
        candidates = [(root / "images", root / "labels")]
    else:
        names = dict.fromkeys((split, _SPLIT_ALIASES.get(split, split)))
        candidates = [pair for name in names for pair in (
            (root / name / "images", root / name / "labels"),  # Roboflow: <split>/images
            (root / "images" / name, root / "labels" / name),  # Ultralytics: images/<split>
        )]
    for images, labels in candidates:
        if images.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
            if not labels.is_dir():
                raise _error(labels, "labels folder not found (every image would be a negative)",
                             "put the YOLO .txt files in a labels/ folder beside images/")
            return images, labels
    splits = sorted({p.parent.name for p in root.glob("*/images")} | {
        p.name for p in root.glob("images/*") if p.is_dir()})
    what = f"no split folder {split!r}" if split else "no images/ folder with images"
    raise _error(root, what, f"give split= one of {splits}" if splits
                 else "point at a YOLO dataset folder (data.yaml + <split>/images, <split>/labels)")


def _yolo_yaml(yaml_path: Path) -> dict:
    try:
        spec = yaml.safe_load(yaml_path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise _error(yaml_path, "not a UTF-8 text file", "give the dataset's data.yaml") from None
    except yaml.YAMLError as exc:
        raise _error(yaml_path, f"malformed YAML ({' '.join(str(exc).split())})",
                     "repair the file (a YAML mapping with names: and the split folders)") from None
    if not isinstance(spec, dict):
        raise _error(yaml_path, "not a YAML mapping", "give the dataset's data.yaml")
    return spec


def _yolo_names(spec: dict, yaml_path: Path) -> dict[int, str]:
    """Class index -> name from data.yaml's ``names`` (a list, or a {index: name} mapping)."""
    names = spec.get("names")
    if isinstance(names, list):
        classes = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict):
        try:
            classes = {int(k): str(n) for k, n in names.items()}
        except ValueError:
            raise _error(yaml_path, f"names keys {list(names)} are not class indices",
                         "key names by integer class index, e.g. {0: cat, 1: dog}") from None
    else:
        raise _error(yaml_path, f"names is {names!r}", "list the class names (names: [...]), "
                     "or map them by index ({0: cat, ...}), or pass names= to the converter")
    if "nc" in spec and spec["nc"] != len(classes):
        raise _error(yaml_path, f"nc is {spec['nc']} but names lists {len(classes)} classes",
                     "make nc equal to the number of names")
    return classes


def _keypoint_values(spec: dict, yaml_path: Path) -> int:
    """Numbers per label line that data.yaml's ``kpt_shape: [points, 2 or 3]`` adds."""
    shape = spec["kpt_shape"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise _error(yaml_path, f"kpt_shape is {shape!r}",
                     "give kpt_shape as [number of keypoints, 2 or 3], e.g. [17, 3]")
    return math.prod(shape)


def _yolo_box(values: list[float], kpt_values: int) -> tuple[tuple[float, ...], bool] | str:
    """Normalised (cx, cy, w, h) of a label line's numbers, and whether it was a polygon.

    A string is returned instead when the column count fits no YOLO line kind.
    """
    if kpt_values:  # pose datasets: box, then keypoints we do not use
        if len(values) != 4 + kpt_values:
            return f"expected {5 + kpt_values} columns (class, box, keypoints of kpt_shape)"
        return tuple(values[:4]), False
    if len(values) == 4:
        return tuple(values), False
    if len(values) >= 6 and len(values) % 2 == 0:  # class + x y points: its bounding box
        xs, ys = values[0::2], values[1::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), True
    return "expected 5 columns (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...)"


def _merged_boxes(columns: list[str], classes: dict[int, str]) -> int:
    """How many box lines `columns` holds when they are 'class cx cy w h' lines run together
    (5k columns, k >= 2, with a bare class index at every fifth); 0 when they are not. A
    polygon's coordinates are written as decimals, so bare integers there mean classes."""
    if len(columns) < 10 or len(columns) % 5:
        return 0
    heads = columns[5::5]
    if all(c.isdigit() and int(c) in classes for c in heads):
        return len(columns) // 5
    return 0


def _label_lines(label_path: Path) -> list[str]:
    """A label file's lines; a UTF-8 byte-order mark (written by some Windows editors) is
    dropped rather than read as part of the first class index."""
    try:
        return label_path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise _error(label_path, "not a UTF-8 text file",
                     "write one 'class cx cy w h' line per box, as plain text") from None


def _yolo_labels(label_path: Path, classes: dict[int, str], kpt_values: int,
                 counts: Counter) -> list[tuple[int, tuple[float, ...]]]:
    """(class, normalised cx cy w h) of every line of a label file; errors name the line."""
    boxes, kinds = [], {}  # kinds: first line number of each line kind (box / polygon)
    for number, line in enumerate(_label_lines(label_path), 1):
        columns = line.split()
        if not columns:
            continue
        where = f"line {number} {line.strip()!r}"
        try:
            cls_value, *values = (float(c) for c in columns)
        except ValueError:
            raise _error(label_path, f"{where}: not all numbers",
                         "write 'class cx cy w h' as numbers") from None
        if not all(math.isfinite(v) for v in (cls_value, *values)):
            raise _error(label_path, f"{where}: NaN or infinite value", "re-export the label")
        if not cls_value.is_integer() or int(cls_value) not in classes:
            raise _error(label_path, f"{where}: class {columns[0]} is not a class index "
                         f"(0..{len(classes) - 1})",
                         "correct the class or add its name to data.yaml names (and nc)")
        merged = 0 if kpt_values else _merged_boxes(columns, classes)
        if merged:
            raise _error(label_path, f"{where}: {len(columns)} columns read as {merged} box "
                         "lines merged by a missing line break (a bare class index every fifth "
                         "column), not as a polygon",
                         "put each object on its own line (class cx cy w h)")
        box = _yolo_box(values, kpt_values)
        if isinstance(box, str):
            raise _error(label_path, f"{where}: {len(columns)} columns; {box}",
                         "re-export the labels in YOLO format")
        (cx, cy, w, h), polygon = box
        kinds.setdefault(polygon, number)
        if len(kinds) == 2:  # a detection file has boxes, a segmentation file polygons
            first = kinds[not polygon]
            raise _error(label_path, f"{where}: a {'polygon' if polygon else 'box'} among the "
                         f"{'box' if polygon else 'polygon'} lines (the first at line {first}); "
                         "two lines merged by a missing line break read as a polygon",
                         "put each object on its own line (class cx cy w h)")
        # Ultralytics' own check: normalised values outside [0, 1] are pixels or a broken export.
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise _error(label_path, f"{where}: box values outside [0, 1]",
                         "normalise the coordinates (divide x and w by the image width, "
                         "y and h by its height)")
        counts["polygons_as_boxes"] += polygon
        boxes.append((int(cls_value), (cx, cy, w, h)))
    return boxes


def yolo_to_coco(root: Path, split: str | None = None, *,
                 names: list[str] | None = None) -> tuple[dict, Path]:
    """Convert a YOLO (Ultralytics / Roboflow) detection split to a COCO dict.

    ``root`` is the dataset folder, with ``data.yaml`` and the split picked by ``split``
    ("train", "valid"/"val", "test"; ``<split>/images`` + ``<split>/labels`` as Roboflow writes,
    or ``images/<split>`` + ``labels/<split>`` as Ultralytics does), or a split folder holding
    ``images/`` and ``labels/`` (``split`` left None). Class names come from ``names`` when
    given, else from ``data.yaml`` in ``root`` or its parent (a list, or an {index: name} map).

    Category ids are the YOLO class indices (0..nc-1) with the yaml names, so predictions map back
    to the source classes unchanged. Image ids are 1..N in file-name order; sizes come from the
    image headers. Each label line is ``class cx cy w h``, normalised to the image; a line of a
    class and three or more ``x y`` points (YOLO segmentation, or oriented boxes) is converted to
    its polygon's bounding box, counted as ``polygons_as_boxes``. With ``kpt_shape`` in the yaml
    (pose datasets) the keypoints after the box are ignored. Images without a label file
    (``missing_label_files``) or with an empty one stay as negatives; label files without an
    image are counted as ``labels_without_image``.

    Returns (coco, image root: the split's images folder). Raises DatasetError (a ValueError)
    naming the file, line number and fix for a line that is not numbers, has the wrong column
    count, a class outside data.yaml, or box values outside [0, 1].
    """
    root = Path(root)
    images_dir, labels_dir = _yolo_dirs(root, split)
    yaml_path = next((p for p in (root / "data.yaml", root.parent / "data.yaml") if p.is_file()),
                     None)
    spec = _yolo_yaml(yaml_path) if yaml_path else {}
    if names is not None:
        classes = dict(enumerate(str(n) for n in names))
    elif yaml_path:
        classes = _yolo_names(spec, yaml_path)
    else:
        raise _error(root, "no data.yaml here or in the parent folder, and no names given",
                     "pass names=[...] (class names in class-index order) or add data.yaml")
    kpt_values = _keypoint_values(spec, yaml_path) if "kpt_shape" in spec else 0
    return _yolo_split(root, images_dir, labels_dir, classes, kpt_values, split=split,
                       data_yaml=yaml_path)


def _yolo_split(source: Path, images_dir: Path, labels_dir: Path, classes: dict[int, str],
                kpt_values: int, *, split: str | None,
                data_yaml: Path | None) -> tuple[dict, Path]:
    """The COCO dict of one split's images and labels folders (see `yolo_to_coco`)."""
    out = _Builder("yolo", source, images_dir,
                   ("missing_label_files", "labels_without_image", "polygons_as_boxes"))
    image_paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for image_id, image_path in enumerate(tracked(image_paths, f"reading {images_dir}"), 1):
        width, height = image_size(image_path)
        image = out.add_image(image_id, image_path.name, width, height)
        label_path = labels_dir / (image_path.stem + ".txt")
        if not label_path.is_file():
            out.counts["missing_label_files"] += 1
            continue
        for cls, (cx, cy, w, h) in _yolo_labels(label_path, classes, kpt_values, out.counts):
            out.add_box(image, cls, (cx - w / 2) * width, (cy - h / 2) * height,
                        (cx + w / 2) * width, (cy + h / 2) * height)
    stems = {p.stem for p in image_paths}
    out.counts["labels_without_image"] = sum(p.stem not in stems
                                             for p in labels_dir.glob("*.txt"))
    categories = [{"id": i, "name": n} for i, n in sorted(classes.items())]
    coco = out.finish(categories, split=split, data_yaml=str(data_yaml) if data_yaml else None)
    return coco, images_dir


# The data.yaml key of each split rcnnlab names (Ultralytics writes val, Roboflow valid).
YAML_SPLIT_KEYS = {"train": ("train",), "valid": ("val", "valid"), "test": ("test",)}


def yaml_reference(path: str | Path) -> tuple[Path, str | None] | None:
    """A data.yaml given where a COCO json is read: ``data.yaml`` (the split of the role it is
    given for) or ``data.yaml:KEY`` (the folder of that key, e.g. ``data.yaml:val``); None for
    anything else."""
    text = str(path)
    match = re.fullmatch(r"(.+\.ya?ml):(\w+)", text, flags=re.IGNORECASE)
    if match:
        return Path(match.group(1)), match.group(2)
    if text.lower().endswith((".yaml", ".yml")):
        return Path(text), None
    return None


def yolo_yaml_splits(yaml_path: Path) -> list[str]:
    """The splits ("train", "valid", "test") a data.yaml names."""
    spec = _yolo_yaml(Path(yaml_path))
    return [split for split, keys in YAML_SPLIT_KEYS.items() if any(spec.get(k) for k in keys)]


def yolo_yaml_split(yaml_path: Path, split: str, key: str | None = None) -> tuple[dict, Path]:
    """One split of a YOLO dataset, read through its data.yaml as Ultralytics reads it.

    ``split`` is "train", "valid" (the yaml's ``val:``, or ``valid:``) or "test", the role the
    images play; ``key`` names the yaml entry to read instead (``data.yaml:val``). The entry is
    an images folder, relative to the yaml's ``path:`` (itself relative to the yaml's folder) or
    to the yaml's folder. A relative entry that starts with ``../`` and does not exist is tried
    without it, as Ultralytics does for Roboflow's exports. The labels are in the folder of the
    same path with ``images`` replaced by ``labels``. Returns (coco dict, images folder).
    """
    yaml_path = Path(yaml_path)
    spec = _yolo_yaml(yaml_path)
    keys = (key,) if key is not None else YAML_SPLIT_KEYS.get(split)
    if keys is None:
        raise ConfigError(f"{yaml_path}: no split {split!r}: use train, valid or test")
    entry = next((spec[k] for k in keys if spec.get(k)), None)
    if entry is None:
        given = [k for k in ("train", "val", "valid", "test") if spec.get(k)]
        raise _error(yaml_path, f"no {' or '.join(keys)}: entry for the {split} split "
                     f"(it names {', '.join(given) or 'no split'})",
                     f"add `{keys[0]}: <images folder>` to the yaml, or give the {split} split "
                     "another way (data.val_fraction holds valid out of train)")
    if not isinstance(entry, str):
        raise _error(yaml_path, f"{keys[0]}: is {entry!r}; only one images folder per split "
                     "is read", "give a single folder (merge the folders, or convert with "
                     "rcnnlab data convert)")
    base = yaml_path.parent
    if spec.get("path"):
        base = (base / str(spec["path"])).resolve()
    images_dir = base / entry
    if not images_dir.is_dir() and entry.startswith("../") and (base / entry[3:]).is_dir():
        images_dir = base / entry[3:]
    if not images_dir.is_dir():
        raise _error(yaml_path, f"the {split} images folder {entry!r} ({images_dir}) does not "
                     "exist", "correct the entry (relative to the yaml's folder or its path:)")
    images_dir = images_dir.resolve()
    parts = list(images_dir.parts)
    if "images" not in parts:
        raise _error(yaml_path, f"{images_dir}: no 'images' folder in the path, so no "
                     "'labels' folder beside it", "keep the YOLO layout: .../images and "
                     ".../labels")
    i = len(parts) - 1 - parts[::-1].index("images")
    labels_dir = Path(*parts[:i], "labels", *parts[i + 1:])
    if not labels_dir.is_dir():
        raise _error(labels_dir, "labels folder not found (every image would be a negative)",
                     "put the YOLO .txt files in a labels/ folder beside images/")
    classes = _yolo_names(spec, yaml_path)
    kpt_values = _keypoint_values(spec, yaml_path) if "kpt_shape" in spec else 0
    return _yolo_split(yaml_path, images_dir, labels_dir, classes, kpt_values, split=split,
                       data_yaml=yaml_path)


# --------------------------------------------------------------------------------------- SVHN

def _mat_string(dataset: h5py.Dataset) -> str:
    """A MATLAB char array (uint16 code units in HDF5) as a str."""
    return "".join(map(chr, dataset[()].ravel()))


def _mat_numbers(mat: h5py.File, dataset: h5py.Dataset) -> list[float]:
    """A struct field's values: stored inline when the image has one digit, else as references."""
    values = dataset[()].ravel()
    if dataset.dtype == h5py.ref_dtype:
        return [float(mat[ref][()].item()) for ref in values]
    return [float(v) for v in values]


def svhn_to_coco(mat_path: Path, image_dir: Path | None = None) -> tuple[dict, Path]:
    """Convert an SVHN "format 1" ``digitStruct.mat`` (MATLAB v7.3, i.e. HDF5) to a COCO dict.

    Each entry of the .mat has an image ``name`` and a ``bbox`` struct with one ``label``,
    ``left``, ``top``, ``width``, ``height`` per digit. SVHN's label 10 means digit 0; the
    categories are ids 1..10 named "0".."9" (category_id = digit + 1, the project's convention;
    the number is read from the names). ``file_name`` is the image name, relative to
    ``image_dir`` (default: the .mat's folder), and the image id is its numeric stem (``1.png``
    -> 1; the 1-based entry index instead when some name is not numeric). Sizes come from the
    image headers; boxes keep the .mat's order and are clipped to their image (counted).

    Entries whose image file is not in ``image_dir`` are skipped, counted in
    ``info["skipped_missing_images"]`` and logged: only the names are read for every entry, the
    boxes only for the images present. Returns (coco, image_dir).
    """
    mat_path = Path(mat_path)
    image_dir = Path(image_dir) if image_dir is not None else mat_path.parent
    fix = "give SVHN's format-1 digitStruct.mat (train/test/extra .tar.gz of the SVHN site)"
    if not mat_path.is_file():
        raise _error(mat_path, "file not found", fix)
    if not h5py.is_hdf5(mat_path):
        raise _error(mat_path, "not a MATLAB v7.3 (HDF5) file", fix)
    if not image_dir.is_dir():
        raise _error(image_dir, "image folder not found", "pass image_dir= (the PNGs' folder)")
    present = {p.name for p in image_dir.iterdir()}
    try:
        return _svhn_entries(mat_path, image_dir, present, fix)
    except OSError as exc:  # h5py's error for a truncated or damaged file
        raise _error(mat_path, f"cannot be read ({exc}): truncated or damaged", fix) from None


def _svhn_entries(mat_path: Path, image_dir: Path, present: set[str],
                  fix: str) -> tuple[dict, Path]:
    """The entries of the .mat whose image is present, as a COCO dict (see svhn_to_coco)."""
    out = _Builder("svhn", mat_path, image_dir, ("skipped_missing_images",))
    with h5py.File(mat_path, "r") as mat:
        try:
            name_refs = mat["digitStruct/name"][()].ravel()
            bbox_refs = mat["digitStruct/bbox"][()].ravel()
        except KeyError:
            raise _error(mat_path, "no digitStruct/name and digitStruct/bbox", fix) from None
        names = [_mat_string(mat[ref])
                 for ref in tracked(name_refs, f"reading {mat_path.name}'s names")]
        if len(set(names)) != len(names):
            raise _error(mat_path, "an image name is listed twice", fix)
        kept = [(i, name) for i, name in enumerate(names) if name in present]
        out.counts["skipped_missing_images"] = len(names) - len(kept)
        numeric = all(Path(name).stem.isdigit() for _, name in kept)
        for i, name in tracked(kept, f"reading {mat_path.name}'s boxes"):
            image = out.add_image(int(Path(name).stem) if numeric else i + 1, name,
                                  *image_size(image_dir / name))
            try:
                group = mat[bbox_refs[i]]
                fields = [_mat_numbers(mat, group[key]) for key in _SVHN_FIELDS]
            except KeyError:
                raise _error(mat_path, f"entry {i + 1} ({name}): bbox lacks one of "
                             f"{', '.join(_SVHN_FIELDS)}", fix) from None
            if len({len(values) for values in fields}) != 1:
                raise _error(mat_path, f"entry {i + 1} ({name}): bbox fields differ in length",
                             fix)
            for label, left, top, width, height in zip(*fields, strict=True):
                if not (label.is_integer() and 1 <= label <= 10):
                    raise _error(mat_path, f"entry {i + 1} ({name}): label {label:g} is not "
                                 "1..10 (10 means digit 0)", fix)
                digit = int(label) % 10
                out.add_box(image, digit + 1, left, top, left + width, top + height)
    return out.finish(SVHN_CATEGORIES), image_dir


# ---------------------------------------------------------------------------------------- VOC

def _voc_text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else None


def _voc_record(xml_path: Path) -> tuple[str, tuple[int, int] | None, list[tuple]]:
    """(filename, (width, height) or None when absent or zero, objects) of one VOC xml.

    An object is (name, difficult, xmin, ymin, xmax, ymax) as written in the file.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise _error(xml_path, f"malformed XML ({exc})", "repair or re-export the file") from None
    if root.tag != "annotation":
        raise _error(xml_path, f"root element is <{root.tag}>, not <annotation>",
                     "give Pascal VOC annotation files")
    filename = _voc_text(root, "filename")
    if not filename:
        raise _error(xml_path, "no <filename>", "add the image's file name")
    try:
        width, height = (int(float(_voc_text(root, f"size/{k}") or 0)) for k in ("width", "height"))
    except ValueError:
        raise _error(xml_path, "<size> width/height are not numbers", "correct them") from None
    # Some tools write 0 when they never opened the image: read the header then.
    size = (width, height) if width > 0 and height > 0 else None
    objects = []
    for n, obj in enumerate(root.iter("object"), 1):
        name = _voc_text(obj, "name")
        if not name:
            raise _error(xml_path, f"object {n} has no <name>", "add its class name")
        try:
            coords = [float(_voc_text(obj, f"bndbox/{k}"))
                      for k in ("xmin", "ymin", "xmax", "ymax")]
            difficult = int(_voc_text(obj, "difficult") or 0)
        except (TypeError, ValueError):
            raise _error(xml_path, f"object {n} ({name}): bndbox xmin/ymin/xmax/ymax or "
                         "difficult missing or not numbers", "correct the object") from None
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise _error(xml_path, f"object {n} ({name}): xmax < xmin or ymax < ymin",
                         "swap or correct the coordinates")
        objects.append((name, difficult, *coords))
    return filename, size, objects


def voc_to_coco(annotations_dir: Path, image_dir: Path | None = None, *,
                classes: list[str] | None = None) -> tuple[dict, Path]:
    """Convert a folder of Pascal VOC xml files (one per image) to a COCO dict.

    ``image_dir`` defaults to the sibling ``JPEGImages/`` (VOC's layout) when it exists, else
    ``annotations_dir`` itself; ``file_name`` is the xml's ``<filename>`` relative to it. Image ids
    are 1..N in xml file-name order. A missing or zero ``<size>`` is read from the image header
    (counted as ``sizes_read_from_images``); xml files whose image is missing are skipped
    (``skipped_missing_images``).

    Categories are ids 1..K in sorted class-name order, or in the order of ``classes``, which
    then must name every class found (an unknown one is an error, not a silent drop).

    Coordinates: VOC ``bndbox`` values are 1-based pixel indices, both ends inclusive (the
    devkit's convention; labelImg clamps xmin to 1), so the box covers continuous
    ``[xmin - 1, xmax]``: COCO ``x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1,
    h = ymax - ymin + 1`` (as detectron2's VOC loader does). A box over the whole image (1..W)
    becomes exactly ``[0, 0, W, H]``; files written 0-based show up as clipped boxes at x or y 0.

    ``difficult`` objects become ``iscrowd = 1`` and keep ``"difficult": 1``: COCO has no
    difficult flag, and crowd boxes are what VOC's difficult objects are in its own metric,
    ignored (a detection on one is neither a hit nor a false positive) and, in this project,
    left out of training targets. Returns (coco, image_dir). Raises DatasetError (a ValueError)
    naming the file for malformed XML or a bad object.
    """
    annotations_dir = Path(annotations_dir)
    xml_paths = sorted(annotations_dir.glob("*.xml"))
    if not xml_paths:
        raise _error(annotations_dir, "no .xml files", "point at VOC's Annotations/ folder")
    if image_dir is None:
        voc_images = annotations_dir.parent / "JPEGImages"
        image_dir = voc_images if voc_images.is_dir() else annotations_dir
    image_dir = Path(image_dir)
    records = [(path, *_voc_record(path))
               for path in tracked(xml_paths, f"reading {annotations_dir}")]

    found = {obj[0] for *_, objects in records for obj in objects}
    if classes is None:
        names = sorted(found)
    else:
        names = list(classes)
        if len(set(names)) != len(names):
            raise ConfigError(f"classes {names} lists a name twice")
        unknown = found - set(names)
        if unknown:
            path = next(p for p, *_, objects in records if any(o[0] in unknown for o in objects))
            raise _error(path, f"classes {sorted(unknown)} are not in the given classes "
                         f"{names}", "add them to classes= (or leave classes out)")
    category_of = {name: i for i, name in enumerate(names, 1)}

    out = _Builder("voc", annotations_dir, image_dir,
                   ("skipped_missing_images", "sizes_read_from_images", "difficult_objects"))
    for image_id, (_, filename, size, objects) in enumerate(records, 1):
        image_path = image_dir / filename
        if not image_path.is_file():
            out.counts["skipped_missing_images"] += 1
            out.missing.append(filename)
            continue
        if size is None:
            size = image_size(image_path)
            out.counts["sizes_read_from_images"] += 1
        image = out.add_image(image_id, filename, *size)
        for name, difficult, xmin, ymin, xmax, ymax in objects:
            extra = {"difficult": 1} if difficult else {}
            out.counts["difficult_objects"] += bool(difficult)
            out.add_box(image, category_of[name], xmin - 1, ymin - 1, xmax, ymax,
                        iscrowd=int(bool(difficult)), **extra)
    categories = [{"id": i, "name": name} for name, i in category_of.items()]
    return out.finish(categories), image_dir

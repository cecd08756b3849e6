"""YOLO (Ultralytics / Roboflow) detection datasets to COCO: :func:`yolo_to_coco` converts a
split folder, :func:`yolo_yaml_split` reads a split through its data.yaml as Ultralytics does
(what ``data.train_json: data.yaml`` uses), :func:`yaml_reference` tells such a reference.

Format decisions: category id = YOLO class index (0..nc-1, names from data.yaml); a polygon line
(class + three or more x y points) becomes its polygon's bounding box. A label file mixing box
and polygon lines is refused (as Ultralytics reads such a file, every line becomes points): it
is what two box lines merged by a missing line break look like.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import yaml

from rcnnlab.data.convert import CocoBuilder
from rcnnlab.data.convert import dataset_error as _error
from rcnnlab.data.images import image_size
from rcnnlab.errors import ConfigError
from rcnnlab.progress import tracked

__all__ = ["IMAGE_SUFFIXES", "YAML_SPLIT_KEYS", "yaml_reference", "yolo_to_coco",
           "yolo_yaml_split", "yolo_yaml_splits"]

# What Ultralytics accepts as images (its IMG_FORMATS, less the video-like and raw ones).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
_SPLIT_ALIASES = {"val": "valid", "valid": "val"}  # Ultralytics says val, Roboflow valid


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
    out = CocoBuilder("yolo", source, images_dir,
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

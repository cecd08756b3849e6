"""Pascal VOC xml (one file per image) to COCO: :func:`voc_to_coco`.

Format decisions: pixel indices are 1-based and inclusive, so ``xmin..xmax`` becomes
``x = xmin - 1, w = xmax - xmin + 1``; ``difficult`` objects become ``iscrowd = 1``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rcnnlab.data.convert import CocoBuilder
from rcnnlab.data.convert import dataset_error as _error
from rcnnlab.data.images import image_size
from rcnnlab.errors import ConfigError
from rcnnlab.progress import tracked

__all__ = ["voc_to_coco"]


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

    out = CocoBuilder("voc", annotations_dir, image_dir,
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

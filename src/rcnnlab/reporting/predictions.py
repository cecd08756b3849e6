"""The prediction files: `pred.json` holds COCO results (image_id, category_id in the dataset's
own ids, bbox xywh, score); `pred.csv` the number read left to right per image
(`image_id,pred_label`); `image_ids.csv` the file behind each enumerated image id."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from rcnnlab.evaluation.sequence import numbers_from_detections
from rcnnlab.files import atomic_writer, write_atomic


def write_predictions(
    out_dir: Path,
    detections: list[dict],
    image_ids: Sequence[int],
    digits: dict[int, str] | None,
    threshold: float,
    read_iou: float | None = None,
) -> dict[str, Path]:
    """Write pred.json (all detections) and, for digit datasets, pred.csv (numbers at threshold,
    read with `read_iou`: `rcnnlab.evaluation.sequence.read_number`)."""
    paths = {"json": write_atomic(out_dir / "pred.json", json.dumps(detections))}
    if digits is not None:
        numbers = numbers_from_detections(detections, digits, threshold, list(image_ids),
                                          read_iou)
        paths["csv"] = _write_csv(out_dir / "pred.csv", ["image_id", "pred_label"],
                                  [[i, numbers[i]] for i in image_ids])
    return paths


def stream_predictions(out_dir: Path, images: Iterable[tuple[int, list[dict], str | None]],
                       *, digits: bool) -> dict[str, Path]:
    """Write pred.json and (`digits`) pred.csv from each image's (image id, COCO results,
    number read) in image order, as they come: a job over millions of images never holds them
    all. The files are byte for byte those `write_predictions` writes for the same results."""
    paths = {"json": out_dir / "pred.json"}
    if digits:
        paths["csv"] = out_dir / "pred.csv"
    with contextlib.ExitStack() as files:
        detections = files.enter_context(atomic_writer(paths["json"]))
        numbers = (csv.writer(files.enter_context(atomic_writer(paths["csv"],
                                                                errors="surrogateescape")))
                   if digits else None)
        if numbers is not None:
            numbers.writerow(["image_id", "pred_label"])
        separator = ""
        detections.write("[")
        for image_id, found, number in images:
            for record in found:
                # json.dumps of the whole list puts ", " between items, as here
                detections.write(separator + json.dumps(record))
                separator = ", "
            if numbers is not None:
                numbers.writerow([image_id, number])
        detections.write("]")
    return paths


def write_id_map(out_dir: Path, names: Iterable[str], image_ids: Sequence[int]) -> Path:
    """Write image_ids.csv (image_id,file_name) beside the outputs when ids were enumerated:
    each id's file as its source names it (`inference.sources.Source.names`)."""
    return _write_csv(out_dir / "image_ids.csv", ["image_id", "file_name"],
                      zip(image_ids, names, strict=True))


def write_unreadable(path: Path, rows: Iterable[Sequence]) -> Path:
    """Write the images a job could not read: image_id,file_name,error."""
    return _write_csv(path, ["image_id", "file_name", "error"], rows)


def _write_csv(path: Path, header: list[str], rows) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    # a file name that is no valid UTF-8 is written as the bytes the file system holds
    return write_atomic(path, buffer.getvalue(), errors="surrogateescape")

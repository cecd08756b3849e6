"""The prediction files: `pred.json` holds COCO results (image_id, category_id in the dataset's
own ids, bbox xywh, score); `pred.csv` the number read left to right per image
(`image_id,pred_label`); `image_ids.csv` the file behind each enumerated image id."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from rcnnlab.evaluation.sequence import numbers_from_detections
from rcnnlab.runs.rundir import write_atomic


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


def write_id_map(out_dir: Path, files: Sequence[Path], image_ids: Sequence[int]) -> Path:
    """Write image_ids.csv (image_id,file_name) beside the outputs when ids were enumerated."""
    return _write_csv(out_dir / "image_ids.csv", ["image_id", "file_name"],
                      zip(image_ids, (p.name for p in files), strict=True))


def _write_csv(path: Path, header: list[str], rows) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    # a file name that is no valid UTF-8 is written as the bytes the file system holds
    return write_atomic(path, buffer.getvalue(), errors="surrogateescape")

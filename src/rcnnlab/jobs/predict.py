"""`rcnnlab predict` as a job: sharded over processes, logged as it goes, resumable.

The images are cut into batches of `batch_size` consecutive images (batch k holds images
k*B .. k*B+B-1), the batches one process would make. Under torchrun the batches still to do
are dealt out in rounds: in each round rank r detects the round's r-th batch, and rank 0
gathers the round's results and appends them to the log (`jobs.log`) in batch order. Rank 0
alone writes, so the output folder needs to be on rank 0's machine only; every rank reads the
images itself, so each must see the same source (checked by a digest).

`--resume` reads the log back, keeps what is done and redoes a batch that is not wholly logged
(only its missing images are logged again, detected in the very same batch). pred.json and
pred.csv are assembled from the log at the end, so they are byte for byte those of a job that
was never stopped, on any number of processes.

Until the job finishes, the output folder keeps the files of an earlier job as they were:
pred.json, pred.csv, image_ids.csv and unreadable.csv are all written at the end.

An image that cannot be read is logged with its error, counted, listed in `unreadable.csv` and
left out of pred.json / pred.csv: one bad file among millions does not stop a job.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rcnnlab.detector import Detector
from rcnnlab.errors import ConfigError, RunError, UserError
from rcnnlab.evaluation.sequence import numbers_from_detections
from rcnnlab.files import replacing, write_atomic
from rcnnlab.inference.sources import SourceImage
from rcnnlab.jobs.images import JobImages
from rcnnlab.jobs.log import LOG_NAME, ResultsLog
from rcnnlab.reporting.predictions import stream_predictions, write_id_map, write_unreadable
from rcnnlab.runs.distributed import gather_objects, gather_to_main, on_main
from rcnnlab.runs.distributed import world as current_world
from rcnnlab.version import __version__

log = logging.getLogger(__name__)

JOB_NAME = "predict_job.json"
UNREADABLE_NAME = "unreadable.csv"
# what a resumed job must share with the job it continues: anything else changes the output
IDENTITY = ("images", "image_list", "model", "threshold", "batch_size", "read_iou", "eval")

# (index, image) pairs of a batch that were read, and (index, image id, name, error) of those
# that were not
Batch = tuple[list[tuple[int, SourceImage]], list[tuple[int, int, str, str]]]


def run_predict_job(det: Detector, images: JobImages, out_dir: str | Path, *,
                    threshold: float, batch_size: int, resume: bool = False,
                    save_images: bool = False,
                    progress: Callable[[int], None] | None = None,
                    on_total: Callable[[int], None] | None = None) -> dict[str, Path]:
    """Detect every image of `images` with `det` into `out_dir`: predictions.jsonl as images
    finish, then pred.json, pred.csv (digit classes), image_ids.csv (enumerated ids),
    unreadable.csv (if any) and predict_job.json; with `save_images` the drawings in images/.

    Under torchrun every rank calls this with the same arguments; rank 0 returns the paths
    written, the others an empty dict. `on_total` is told the number of images, `progress`
    the images done (those a resumed job had done first)."""
    here, out_dir = current_world(), Path(out_dir)
    identity = _identity(det, images, threshold, batch_size)
    if len(set(gather_objects(identity["image_list"]))) > 1:
        raise RunError(f"{images.source}: the processes see different images. Fix: give every "
                       "machine the same source (a shared folder, or the same list file)")
    if images.video and here.distributed:
        raise ConfigError(f"{images.source}: a video's frames are read in order, by one "
                          "process. Fix: run rcnnlab predict on a video without torchrun, or "
                          "extract its frames into a folder first")
    done: set[int] = on_main(lambda: _prepare(out_dir, images, identity, resume=resume,
                                              processes=here.size))
    if on_total and here.is_main:
        on_total(images.count)
    if progress and done and here.is_main:
        progress(len(done))
    results = ResultsLog(out_dir) if here.is_main else None
    name_of = images.drawing_names() if save_images else None
    start, detected = time.perf_counter(), 0
    for records in _rounds(det, images, done, threshold, batch_size, name_of, out_dir):
        parts = gather_to_main(records)
        for part in parts or []:
            results.append(part)
            detected += len(part)
            if progress:
                progress(len(part))
    if not here.is_main:
        return {}
    results.close()
    seconds = time.perf_counter() - start
    paths, unreadable = _assemble(out_dir, results, images, det.digits is not None)
    if save_images and (out_dir / "images").is_dir():
        paths["images"] = out_dir / "images"
    record = json.loads((out_dir / JOB_NAME).read_text())
    record.update(finished=True, finished_at=_now(), processes=here.size,
                  detected_now=detected, seconds_now=round(seconds, 3),
                  images_per_second_now=round(detected / seconds, 2) if seconds else None,
                  unreadable=unreadable)
    paths["job"] = write_atomic(out_dir / JOB_NAME, json.dumps(record, indent=2) + "\n")
    if record["unreadable"]:
        log.warning("%d of %d images could not be read: listed in %s", record["unreadable"],
                    images.count, paths["unreadable"])
    return paths


def _identity(det: Detector, images: JobImages, threshold: float, batch_size: int) -> dict:
    identity = {"source": images.source, "images": images.count,
                "image_list": images.digest(), "model": det.model_id, "threshold": threshold,
                "batch_size": batch_size, "read_iou": det.cfg.eval.read_iou,
                "eval": det.cfg.eval.inference_kwargs()}
    return json.loads(json.dumps(identity))  # as read back from predict_job.json


# The files a job writes through `rcnnlab.files`; a kill mid-write leaves NAME.tmp beside them.
_OUTPUTS = ("pred.json", "pred.csv", "image_ids.csv", "unreadable.csv", JOB_NAME)


def _remove_leftovers(out_dir: Path) -> None:
    """Remove the temporary files of a write a kill interrupted: only the job's own names (the
    folder may be the user's, --out . by default)."""
    leftovers = [out_dir / f"{name}.tmp" for name in _OUTPUTS]
    leftovers += list((out_dir / "images").glob("*.png.tmp"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)


def _prepare(out_dir: Path, images: JobImages, identity: dict, *, resume: bool,
             processes: int) -> set[int]:
    """Rank 0: check the job folder, recover the log and write predict_job.json; the
    indices already done."""
    results, path = ResultsLog(out_dir), out_dir / JOB_NAME
    earlier = _read_job(path)
    done: set[int] = set()
    if earlier is not None and resume:
        changed = [key for key in IDENTITY if earlier.get(key) != identity[key]]
        if changed:
            what = "; ".join(f"{key} {earlier.get(key)!r}, now {identity[key]!r}"
                             for key in changed)
            raise RunError(f"{path}: the job there was started otherwise ({what}). Fix: resume "
                           "with the command that started it, or give another --out")
        done = results.recover()
        log.info("resuming the job in %s: %d of %d images done", out_dir, len(done),
                 images.count)
    else:
        if earlier is not None and not earlier.get("finished"):
            finished = results.count()
            raise RunError(f"{out_dir}: holds an unfinished prediction job ({finished} of "
                           f"{earlier.get('images')} images done). Fix: add --resume to "
                           f"continue it, or give another --out (or delete {LOG_NAME} there to "
                           "start over)")
        if resume:
            log.info("no job to resume in %s: starting one", out_dir)
        results.start_over()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    started = earlier.get("started_at") if earlier is not None and resume else None
    record = {**identity, "rcnnlab": __version__, "processes": processes,
              "started_at": started or _now(), "finished": False}
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return done


def _read_job(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise RunError(f"{path}: not a job record rcnnlab predict writes (no JSON). Fix: "
                       "delete it and predictions.jsonl to start the job over") from None


def _rounds(det: Detector, images: JobImages, done: set[int], threshold: float,
            batch_size: int, name_of: Callable[[int, str], str] | None,
            out_dir: Path) -> Iterator[list[dict]]:
    """This rank's log records, one list per round (empty when it has no batch left while
    others have)."""
    here = current_world()

    def records_of(batch: Batch) -> list[dict]:
        return _records(det, batch, done, threshold, name_of, out_dir)

    if images.video:  # one process: the frames in order, batches of consecutive ones
        for batch in _video_batches(images, batch_size, done):
            yield records_of(batch)
        return
    # every rank holds rank 0's `done`, so each works out the same batches still to do
    batches = [range(start, min(start + batch_size, images.count))
               for start in range(0, images.count, batch_size)]
    todo = [batch for batch in batches if any(i not in done for i in batch)]
    mine = todo[here.rank::here.size]
    rounds = math.ceil(len(todo) / here.size)
    for batch in _prefetched(images, mine):
        yield records_of(batch)
    for _ in range(len(mine), rounds):
        yield []


def _read(images: JobImages, indices: Sequence[int]) -> Batch:
    read, failed = [], []
    for i in indices:
        try:
            read.append((i, images.load(i)))
        except UserError as exc:
            failed.append((i, images.image_ids[i], images.names[i], str(exc)))
    return read, failed


def _prefetched(images: JobImages, batches: list[Sequence[int]]) -> Iterator[Batch]:
    """The batches read, the next one in a thread while the model works on this one."""
    if not batches:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="rcnnlab-read") as reader:
        pending = reader.submit(_read, images, batches[0])
        for k in range(len(batches)):
            batch = pending.result()
            if k + 1 < len(batches):
                pending = reader.submit(_read, images, batches[k + 1])
            yield batch


def _video_batches(images: JobImages, batch_size: int, done: set[int]) -> Iterator[Batch]:
    """A video's frames in batches of consecutive ones (index = frame number - 1), skipping
    batches wholly done (their frames are decoded all the same)."""
    batch: list[tuple[int, SourceImage]] = []
    for index, frame in enumerate(images.frames()):
        batch.append((index, frame))
        if len(batch) == batch_size:
            if any(i not in done for i, _ in batch):
                yield batch, []
            batch = []
    if batch and any(i not in done for i, _ in batch):
        yield batch, []


def _records(det: Detector, batch: Batch, done: set[int], threshold: float,
             name_of: Callable[[int, str], str] | None, out_dir: Path) -> list[dict]:
    """One batch detected (as one model call) as log records, images already done left out."""
    read, failed = batch
    results = det.detect_batch([image for _, image in read], [threshold] * len(read),
                               keep_images=name_of is not None) if read else []
    records = []
    for (index, image), result in zip(read, results, strict=True):
        if index in done:
            continue
        detections = result.to_coco()
        number = None
        if det.digits is not None:
            number = numbers_from_detections(detections, det.digits, threshold,
                                             [image.image_id], det.cfg.eval.read_iou)[
                image.image_id]
        records.append({"index": index, "image_id": image.image_id, "file": image.name,
                        "number": number, "detections": detections})
        if name_of is not None:
            folder = out_dir / "images"
            folder.mkdir(parents=True, exist_ok=True)
            # through a temporary file: a kill never leaves half a PNG
            with replacing(folder / name_of(image.image_id, image.name)) as tmp:
                result.plot().save(tmp, format="PNG")
    records += [{"index": index, "image_id": image_id, "file": name, "error": error}
                for index, image_id, name, error in failed if index not in done]
    return sorted(records, key=lambda r: r["index"])


def _assemble(out_dir: Path, results: ResultsLog, images: JobImages,
              digits: bool) -> tuple[dict[str, Path], int]:
    """pred.json, pred.csv and unreadable.csv from the log, in image order: their paths and
    the number of images that could not be read."""
    records = results.records()
    if not results.ascending():
        records = iter(sorted(results.records(), key=lambda r: r["index"]))
    unreadable: list[list] = []
    seen: set[int] = set()

    def detected() -> Iterator[tuple[int, list[dict], str | None]]:
        for record in records:
            if record["index"] in seen:
                continue  # logged twice (never by rcnnlab, but a log is a file anyone can edit)
            seen.add(record["index"])
            if "error" in record:
                unreadable.append([record["image_id"], record["file"], record["error"]])
                continue
            yield record["image_id"], record["detections"], record["number"]

    paths = stream_predictions(out_dir, detected(), digits=digits)
    if not images.video and len(seen) != images.count:
        raise RunError(f"{results.path}: logs {len(seen)} of the job's {images.count} images. "
                       "Fix: run the same command with --resume to detect the rest")
    # written with the other files, so that the folder never pairs one job's ids with
    # another's predictions
    if images.enumerated:
        paths["ids"] = write_id_map(out_dir, images.names, images.image_ids)
    else:
        (out_dir / "image_ids.csv").unlink(missing_ok=True)
    if unreadable:
        paths["unreadable"] = write_unreadable(out_dir / UNREADABLE_NAME, unreadable)
    else:
        (out_dir / UNREADABLE_NAME).unlink(missing_ok=True)
    paths["log"] = results.path
    return paths, len(unreadable)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

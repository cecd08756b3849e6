"""What a prediction job reads: the images of a source by position, with their ids and names.

A job refers to an image by its index in the source's order, so the source must list the same
images in the same order every time it is read (on every rank, and again on resume): folders
and globs are sorted, lists and COCO jsons keep their order. `digest` checks that they do.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rcnnlab.data.coco import load_coco
from rcnnlab.inference.sources import Source, SourceImage, read_source_image


@dataclass
class JobImages:
    """The images of a job's source: `count` of them, each with its id and name, read by
    `load(index)`; a video's frames come in order from `frames()` instead (`count` is then its
    container's estimate)."""

    source: str
    count: int
    image_ids: list[int]
    names: list[str]
    load: Callable[[int], SourceImage] | None  # None: a video, read in order by `frames`
    enumerated: bool = False  # ids are 1..N in source order (not from the files or json)
    frames: Callable[[], Iterator[SourceImage]] | None = field(default=None, repr=False)

    @property
    def video(self) -> bool:
        """Whether the images are a video's frames (read in order, in one process)."""
        return self.load is None

    def digest(self) -> str:
        """SHA-256 over every image's id and name in order: two reads of the same source
        agree, a changed or reordered source does not."""
        sha = hashlib.sha256(f"{self.source}|{self.count}".encode(errors="surrogateescape"))
        for image_id, name in zip(self.image_ids, self.names, strict=True):
            sha.update(f"{image_id}\t{name}\n".encode(errors="surrogateescape"))
        return sha.hexdigest()

    def drawing_names(self) -> Callable[[int, str], str]:
        """A PNG name for each image's drawing, from the image's file stem (a video frame:
        stem_frame); files of one stem (from several folders, or a.png and a.jpg) get
        stem_<image id>. The same on every rank, whatever it draws first."""
        stems = Counter(_stem(name) for name in self.names)

        def name_of(image_id: int, name: str) -> str:
            file_name, _, frame = name.partition("#")
            if frame:
                return f"{file_name.replace('.', '_')}_{frame}.png"
            stem = _stem(name)
            return f"{stem}_{image_id}.png" if stems[stem] > 1 else f"{stem}.png"

        return name_of


def _stem(name: str) -> str:
    return Path(name.partition("#")[0]).stem


def job_images(source: str | Path, *, images: str | None = None, max_pixels: int,
               skip_missing_images: bool = False) -> JobImages:
    """The images of an image, a folder, a glob, a .txt list, a video or a COCO json (whose
    images are under `images`, default: beside the json)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        data = load_coco(path, images, skip_missing_images=skip_missing_images,
                         max_image_pixels=max_pixels)
        files = [data.image_root / img["file_name"] for img in data.images]
        ids = [int(img["id"]) for img in data.images]
        names = [str(img["file_name"]) for img in data.images]
        return JobImages(str(source), len(files), ids, names,
                         lambda i: read_source_image(files[i], names[i], ids[i], max_pixels))
    src = Source(source, max_pixels=max_pixels)
    if src.video is not None:
        return JobImages(str(source), len(src), [], [], None, frames=lambda: iter(src))
    return JobImages(str(source), len(src.files), src.image_ids, src.names, src.load,
                     enumerated=src.enumerated)

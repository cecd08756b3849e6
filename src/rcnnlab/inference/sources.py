"""Images to predict on that come without annotations: an image file, a folder, a glob, a text
file listing image paths, a video file (each frame an image), and their ids.

A list file (``.txt``) holds one image path per line; blank lines and lines starting with ``#``
are skipped, and a relative path is read relative to the list file's folder (as YOLO's image
lists are), so a list travels with its images.

Video is decoded with PyAV (the `video` extra): FFmpeg's own decoders behind a small, well-kept
Python API, with wheels that bundle FFmpeg (so nothing else to install), and the library
torchvision's own video reading was built on. OpenCV would add a 60+ MB dependency for one
function.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from rcnnlab.data.images import DEFAULT_MAX_PIXELS, read_image
from rcnnlab.errors import MissingFileError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
LIST_SUFFIXES = {".txt"}


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name (numerically where the stems are numbers)."""
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: not a folder of images. Fix: give a folder or a "
                                "COCO json")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MissingFileError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def read_list(path: Path) -> tuple[list[Path], list[str]]:
    """The image files a list file names (relative ones from the list's folder) and each
    line as written; an entry that is no image file is refused with its line number."""
    files, names = [], []
    with path.open(encoding="utf-8", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if Path(entry).suffix.lower() not in IMAGE_SUFFIXES:
                raise MissingFileError(
                    f"{path}, line {number}: {entry!r} is not an image file "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}). Fix: list one image path per line "
                    "(blank lines and lines starting with # are skipped)")
            files.append(path.parent / entry)
            names.append(entry)
    if not files:
        raise MissingFileError(f"{path}: lists no image files. Fix: write one image path per "
                               "line")
    return files, names


def image_ids_for(files: Sequence[Path]) -> tuple[list[int], bool]:
    """Image ids from numeric file stems ("12.png" -> 12); else 1..N in file order.

    Returns the ids and whether they were enumerated (then the caller writes the mapping).
    """
    stems = [p.stem for p in files]
    if all(re.fullmatch(r"\d+", s) for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems], False
    return list(range(1, len(files) + 1)), True


@dataclass
class SourceImage:
    """One image of a source: float CHW in [0, 1], its name (a file name, or `<video>#<frame>`)
    and its image id."""

    image: torch.Tensor
    name: str
    image_id: int


class Source:
    """An image, a folder, a glob, a list file or a video, as `SourceImage`s in order.

    `files` are the image files (empty for a video), `names` how the source names each (a
    folder's file names; a glob's matched paths; a list's lines as written), `image_ids` their
    ids (numeric stems, else 1..N; `enumerated` says which), `len()` the number of images (a
    video's frame count as its container states it, which may be an estimate).
    """

    def __init__(self, source: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.source, self.max_pixels = str(source), max_pixels
        path = Path(source)
        self.video: Path | None = None
        self.files: list[Path] = []
        self.names: list[str] = []
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            self.video = path
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            self.files, self.names = read_list(path)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise MissingFileError(
                    f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), a list of "
                    f"images (.txt) or a video ({', '.join(sorted(VIDEO_SUFFIXES))}). Fix: give "
                    "an image, a folder, a glob such as 'photos/*.jpg', a .txt file listing "
                    "image paths, a video or a COCO json")
            self.files = [path]
        elif path.is_dir():
            self.files = list_images(path)
        elif glob.has_magic(self.source):
            self.files = sorted((Path(p) for p in glob.glob(self.source, recursive=True)
                                 if Path(p).suffix.lower() in IMAGE_SUFFIXES),
                                key=lambda p: str(p))
            self.names = [str(p) for p in self.files]
            if not self.files:
                raise MissingFileError(f"{self.source}: the pattern matches no image files. "
                                       "Fix: check the pattern (quote it so the shell leaves "
                                       "it to rcnnlab)")
        else:
            raise MissingFileError(f"{path}: no such file, folder or pattern. Fix: give an "
                                   "image, a folder, a glob such as 'photos/*.jpg', a .txt "
                                   "list of images or a video")
        if not self.names:
            self.names = [p.name for p in self.files]
        if self.video is not None:
            self.image_ids, self.enumerated = [], False
        else:
            self.image_ids, self.enumerated = image_ids_for(self.files)

    def __len__(self) -> int:
        if self.video is None:
            return len(self.files)
        with _open_video(self.video) as container:
            return max(container.streams.video[0].frames, 0)

    def __iter__(self) -> Iterator[SourceImage]:
        if self.video is not None:
            yield from self._frames()
            return
        for index in range(len(self.files)):
            yield self.load(index)

    def load(self, index: int) -> SourceImage:
        """The `index`-th image file, read (a `DatasetError` naming the file when it cannot
        be)."""
        return read_source_image(self.files[index], self.names[index], self.image_ids[index],
                                 self.max_pixels)

    def _frames(self) -> Iterator[SourceImage]:
        with _open_video(self.video) as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield SourceImage(F.to_dtype(rgb, torch.float32, scale=True),
                                  f"{self.video.name}#{index}", index + 1)


def read_source_image(path: Path, name: str, image_id: int, max_pixels: int) -> SourceImage:
    """The image file `path` as a `SourceImage` called `name` with id `image_id`."""
    return SourceImage(_read(path, max_pixels), name, image_id)


def _read(path: Path, max_pixels: int) -> torch.Tensor:
    """An image file as float CHW RGB in [0, 1]."""
    return F.to_dtype(read_image(path, max_pixels=max_pixels), torch.float32, scale=True)


def _open_video(path: Path):
    try:
        import av
    except ImportError:
        raise MissingFileError(f"{path}: reading video needs PyAV. Fix: pip install "
                               "'rcnnlab[video]' (or pip install av)") from None
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise MissingFileError(f"{path}: not a video FFmpeg can read ({exc}). Fix: give a "
                               "video file (mp4, mkv, avi, ...) or extract its frames") from None
    if not container.streams.video:
        container.close()
        raise MissingFileError(f"{path}: holds no video stream (audio only?). Fix: give a file "
                               "with pictures")
    return container


def coco_images(data) -> Iterator[SourceImage]:
    """The images of a COCO split (`rcnnlab.data.coco.CocoData`) with their json ids."""
    for img in data.images:
        yield SourceImage(_read(data.image_root / img["file_name"], data.max_image_pixels),
                          img["file_name"], img["id"])

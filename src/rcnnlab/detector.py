"""A trained detector in memory: `Detector.load(run)`, then `det.predict(x)` for files, folders,
globs, videos, PIL images, numpy arrays or tensors, each giving a `Result`.

    from rcnnlab import Detector

    det = Detector.load("runs/demo")               # a run folder or a checkpoint (.pt)
    result = det.predict("house.png")[0]
    result.boxes, result.scores, result.class_ids, result.names   # xyxy pixels, per box
    result.number                                  # the digits left to right, or None
    result.plot().save("house_boxes.png")          # the image with its boxes drawn
    result.to_coco(image_id=7)                     # COCO result records

The detections kept are those above `model.box_score_thresh` (what COCO mAP scores, as in
`pred.json`); the number is read, and `plot` draws, at the tuned threshold `det.threshold`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from rcnnlab.config import Config, check_threshold
from rcnnlab.data.categories import digit_names
from rcnnlab.data.images import image_to_tensor
from rcnnlab.errors import ConfigError, DatasetError
from rcnnlab.evaluation.sequence import read_number
from rcnnlab.export import ExportedDetector, is_exported
from rcnnlab.inference.detect import coco_records
from rcnnlab.inference.predictor import Predictor
from rcnnlab.inference.sources import Source, SourceImage
from rcnnlab.runs.checkpoint import load_detector, resolve_checkpoint
from rcnnlab.runs.device import resolve_device

# A drawn image is scaled up to at least this height, so that labels stay readable on small
# digit crops (ORAND's amounts are ~50 px high).
PLOT_MIN_HEIGHT = 360


@dataclass
class Result:
    """One image's detections: `boxes` (N, 4) xyxy in pixels, `scores` (N,), `class_ids` (N,)
    (the dataset's category ids) and `names` (N); `number` is the digits read left to right at
    `threshold` ("-1" when none is kept; None when the classes are no digits)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    names: list[str]
    number: str | None
    threshold: float
    source: str  # a file name, "<video>#<frame>", or "image <i>" for in-memory input
    image_id: int  # the file's numeric stem, else its place in the source (1, 2, ...)
    image: torch.Tensor | None = field(default=None, repr=False)  # uint8 CHW, for plot

    def __len__(self) -> int:
        return len(self.boxes)

    def to_coco(self, image_id: int | None = None) -> list[dict]:
        """The detections as COCO result records (bbox xywh, rounded as in pred.json), under
        `image_id` (default: the result's own)."""
        image_id = self.image_id if image_id is None else image_id
        return coco_records(self.boxes, self.class_ids.tolist(), self.scores, image_id)

    def plot(self, threshold: float | None = None) -> Image.Image:
        """The image with the boxes at or above `threshold` (default: the tuned one) drawn,
        each labelled with its class and score, and the number read above it."""
        if self.image is None:
            raise ValueError("this result keeps no image (predict(..., keep_images=False))")
        threshold = self.threshold if check_threshold(threshold) is None else threshold
        keep = self.scores >= threshold
        image, boxes = self.image, self.boxes[keep]
        scale = max(1.0, PLOT_MIN_HEIGHT / image.shape[-2])
        if scale > 1:
            size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
            image = F.resize(image, size, antialias=True)
            boxes = boxes * scale
        labels = [f"{n} {s:.2f}" for n, s, k in zip(self.names, self.scores.tolist(),
                                                    keep.tolist(), strict=True) if k]
        font_size = max(14, round(image.shape[-2] / 16))
        if len(boxes):  # white labels on the box colour, above each box's top-left corner
            image = draw_bounding_boxes(image, boxes, labels=labels, colors="#ff2d55",
                                        width=max(2, round(scale)), font=_font_path(),
                                        font_size=font_size, label_colors="white",
                                        fill_labels=True)
        picture = F.to_pil_image(image)
        if self.number is None:
            return picture
        banner = max(24, font_size + 12)
        out = Image.new("RGB", (picture.width, picture.height + banner), "white")
        out.paste(picture, (0, banner))
        text = (f"read: {self.number}" if self.number != "-1" else "read: nothing") + (
            f"   (threshold {threshold:.2f})")
        size = banner - 10
        font = ImageFont.load_default(size=size)
        while size > 8 and font.getlength(text) > picture.width - 12:  # a narrow image
            size -= 1
            font = ImageFont.load_default(size=size)
        ImageDraw.Draw(out).text((6, 4), text, fill="black", font=font)
        return out


def _font_path() -> str | None:
    """A TrueType font file for the labels: matplotlib's bundled DejaVu Sans (torchvision's
    fallback is a fixed, tiny bitmap font)."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # a broken font cache: the bitmap font still draws
        return None


class Detector:
    """A trained detector with its categories, tuned threshold and inference options.

    `model` is the eager torchvision detector, or an exported one (`rcnnlab.export`); `config`
    the run's config (its `eval` section with this detector's overrides applied)."""

    def __init__(self, model: Any, config: Config, categories: list[dict], threshold: float,
                 device: torch.device, overrides: Sequence[str] = (), backend: str = "torch"):
        self.model, self.device, self.backend = model, device, backend
        self.cfg = config
        if overrides:
            self.cfg = self.cfg.model_copy(update={"eval": self.cfg.eval.with_overrides(
                list(overrides))})
        self.categories: list[dict] = categories
        self.threshold: float = threshold
        self.digits = digit_names(self.categories)
        self._names = {c["id"]: str(c["name"]) for c in self.categories}
        self._ids = torch.tensor([c["id"] for c in self.categories])
        e = self.cfg.eval
        if backend != "torch" and (e.nms != "nms" or e.nms_iou is not None
                                   or e.amp not in ("off", "auto")
                                   or e.tta_scales != [1.0] or e.tta_hflip
                                   or e.proposals is not None):
            raise ConfigError("an exported model runs its graph as exported: Soft-NMS, another "
                              "NMS IoU, TTA and eval.amp run on the PyTorch model only, and "
                              "eval.proposals is fixed at export (rcnnlab export RUN "
                              "eval.proposals=N). Fix: load the run folder, or leave the eval "
                              "options at their defaults")
        self.predictor = Predictor(model, e, digit_classes=self.digits is not None)
        self.weights: Path | None = None  # the file loaded (`load`), for `model_id`
        self.source = "in-memory"  # what `load` was given

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", overrides: Sequence[str] = (),
             backend: str = "auto") -> Detector:
        """A run folder (its best.pt), a checkpoint file, or an exported model with its
        sidecar json, run on the CPU by `backend`: a `.onnx` file by onnxruntime (auto) or
        openvino, a `.xml` (OpenVINO IR) by openvino, a `.torchscript` file by torchscript;
        `overrides` are `eval.*` inference options (``["eval.amp=bf16"]``; PyTorch models
        only)."""
        if is_exported(path):
            model = ExportedDetector(path, runtime=backend)
            det = cls(model, model.config, model.info["categories"], model.info["threshold"],
                      torch.device("cpu"), overrides, backend=model.runtime)
            det.weights, det.source = Path(path), Path(path).name
            return det
        if backend not in ("auto", "torch"):
            raise ConfigError(f"backend {backend!r} runs exported models (.onnx, .xml, "
                              ".torchscript): export the run first (rcnnlab export RUN), or use "
                              "backend torch")
        dev = resolve_device(device)
        model, ckpt = load_detector(path, device=dev)
        det = cls(model, ckpt.config, ckpt.categories, ckpt.threshold, dev, overrides)
        det.weights, det.source = resolve_checkpoint(path), Path(path).name
        return det

    @functools.cached_property
    def model_id(self) -> str:
        """``<run or file name>@<first 12 hex digits of the weights file's SHA-256>`` (just
        "in-memory" for a detector not loaded from a file): which model made a result."""
        if self.weights is None:
            return self.source
        sha = hashlib.sha256()
        with self.weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        return f"{self.source}@{sha.hexdigest()[:12]}"

    @property
    def config_digest(self) -> str:
        """The first 12 hex digits of the SHA-256 of the config (eval options included)."""
        config = json.dumps(self.cfg.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(config.encode()).hexdigest()[:12]

    @property
    def names(self) -> list[str]:
        """Class names in category-id order."""
        return [str(c["name"]) for c in self.categories]

    def predict(self, source: Any, *, threshold: float | None = None, bgr: bool = False,
                batch_size: int | None = None, keep_images: bool = True) -> list[Result]:
        """Detect on `source`: a path (image, folder, glob, video), a PIL image, a numpy array
        (HWC, RGB; `bgr=True` for OpenCV's BGR), a tensor (CHW or NCHW, uint8 or float in
        [0, 1]), or a list of these. One `Result` per image; `threshold` replaces the tuned one
        for `number` and `plot`."""
        return list(self.stream(source, threshold=threshold, bgr=bgr, batch_size=batch_size,
                                keep_images=keep_images))

    __call__ = predict

    def stream(self, source: Any, *, threshold: float | None = None, bgr: bool = False,
               batch_size: int | None = None, keep_images: bool = True) -> Iterator[Result]:
        """`predict`, one result at a time (a long video need not fit in memory)."""
        return self.detect_images(
            images_of(source, bgr=bgr, max_pixels=self.cfg.data.max_image_pixels),
            threshold=threshold, batch_size=batch_size, keep_images=keep_images)

    def detect_images(self, images: Iterable[SourceImage], *, threshold: float | None = None,
                      batch_size: int | None = None,
                      keep_images: bool = True) -> Iterator[Result]:
        """Results of images already read (`inference.sources.SourceImage`), in batches."""
        threshold = self.threshold if check_threshold(threshold) is None else threshold
        batch: list[SourceImage] = []
        for item in images:
            batch.append(item)
            if len(batch) == (batch_size or self.cfg.eval.batch_size):
                yield from self._detect(batch, threshold, keep_images)
                batch = []
        if batch:
            yield from self._detect(batch, threshold, keep_images)

    def _detect(self, batch: list[SourceImage], threshold: float,
                keep_images: bool) -> list[Result]:
        return self.detect_batch(batch, [threshold] * len(batch), keep_images=keep_images)

    @torch.inference_mode()
    def detect_batch(self, batch: Sequence[SourceImage], thresholds: Sequence[float], *,
                     keep_images: bool = False) -> list[Result]:
        """One model call on `batch`, each image's number read at its own threshold (a
        server batches requests that ask for different ones)."""
        outputs = self.predictor([item.image.to(self.device) for item in batch])
        results = []
        for item, out, threshold in zip(batch, outputs, thresholds, strict=True):
            boxes, scores = out["boxes"].float().cpu(), out["scores"].float().cpu()
            class_ids = self._ids[out["labels"].cpu() - 1]
            number = (read_number(boxes, class_ids, scores, self.digits, threshold,
                                   self.cfg.eval.read_iou)
                      if self.digits is not None else None)
            image = F.to_dtype(item.image, torch.uint8, scale=True) if keep_images else None
            results.append(Result(boxes, scores, class_ids,
                                  [self._names[int(c)] for c in class_ids], number, threshold,
                                  item.name, item.image_id, image))
        return results


def images_of(source: Any, *, bgr: bool = False,
              max_pixels: int | None = None) -> Iterator[SourceImage]:
    """The images of any source `Detector.predict` takes, as float CHW tensors in [0, 1]."""
    if isinstance(source, str | Path):
        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        yield from Source(source, **kwargs)
        return
    if isinstance(source, torch.Tensor) and source.dim() == 4:
        source = list(source)
    items: list[Any] = list(source) if isinstance(source, list | tuple) else [source]
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    sources = [Source(item, **kwargs) if isinstance(item, str | Path) else item
               for item in items]
    # each image's own id (a file's numeric stem, an in-memory image's place in the list),
    # unless two would share one: then every image is numbered 1..N in order
    ids = [i for k, item in enumerate(sources, 1)
           for i in (item.image_ids if isinstance(item, Source) and item.video is None
                     else [k])]
    renumber = len(set(ids)) < len(ids) or len(sources) > 1 and any(
        isinstance(item, Source) and item.video is not None for item in sources)
    count = 0
    for index, item in enumerate(sources, 1):
        images = item if isinstance(item, Source) else [
            SourceImage(_as_tensor(item, bgr), f"image {index}", index)]
        for image in images:
            count += 1
            if renumber:
                image.image_id = count
            yield image


def _as_tensor(item: Any, bgr: bool) -> torch.Tensor:
    """A PIL image, HWC numpy array or CHW tensor as float CHW RGB in [0, 1]."""
    if isinstance(item, Image.Image):  # as its file would read: 16-bit scaled, float refused
        try:
            pixels = image_to_tensor(item, "a PIL image", fix="convert it to 8 or 16 bits "
                                     "(im.convert('L')), or save it as an 8-bit PNG")
        except DatasetError as exc:
            raise ConfigError(str(exc)) from None
        return F.to_dtype(pixels, torch.float32, scale=True)
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] not in (3, 4):
            raise ConfigError(f"a numpy image of shape {item.shape}: give HWC with 3 channels "
                              "(RGB, or BGR with bgr=True), or HW greyscale")
        item = item[..., :3][..., ::-1] if bgr else item[..., :3]
        tensor = torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1)
    elif isinstance(item, torch.Tensor):
        tensor = item.detach().cpu()
        if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
            raise ConfigError(f"a tensor of shape {tuple(tensor.shape)}: give CHW with 1 or 3 "
                              "channels (or NCHW for several images)")
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        if bgr:
            tensor = tensor.flip(0)
    else:
        raise ConfigError(f"cannot predict on a {type(item).__name__}: give a path, a PIL "
                          "image, a numpy array or a tensor (or a list of them)")
    if tensor.dtype == torch.uint8:
        return F.to_dtype(tensor, torch.float32, scale=True)
    if not tensor.is_floating_point():
        raise ConfigError(f"a {tensor.dtype} image: give uint8 (0-255) or float in [0, 1]")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ConfigError("a float image with NaN or infinite values: give float in [0, 1] "
                          "(or uint8 0-255)")
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ConfigError(f"a float image with values in [{tensor.min():.3g}, "
                          f"{tensor.max():.3g}]: give float in [0, 1] (or uint8 0-255)")
    return tensor

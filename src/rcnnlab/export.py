"""Export a trained detector to ONNX, and run the exported file through ONNX Runtime.

`export_onnx(run, out)` writes `<out>.onnx` and a sidecar `<out>.json` holding what the graph
cannot: the categories, the tuned threshold, the run's config (inference options, the resize
rule) and a description of the input and outputs.

The graph takes one float32 CHW RGB image in [0, 1] of any size and returns `boxes` (N, 4 xyxy
in that image's pixels), `labels` (N, 1..K: category `categories[label - 1]`) and `scores`
(N); normalisation, the RPN, RoIAlign, the box head and its NMS are inside. The one step that
stays in Python is the resize: torchvision's transform decides it from Python numbers, which a
trace would freeze, so the graph is traced at scale 1 and `OnnxDetector` resizes an image the
way the eager model does (native size: only shrink past `model.min_size` / `max_size`; else
torchvision's rule) before it runs the graph, then maps the boxes back.

Needs the `onnx` extra (`pip install 'rcnnlab[onnx]'`: onnx to export, onnxruntime to run);
OpenVINO runs the same file with the `openvino` extra.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou, clip_boxes_to_image

from rcnnlab.config import Config, config_from_dict
from rcnnlab.data.transforms import rescale, resize_scale
from rcnnlab.errors import ConfigError, MissingFileError
from rcnnlab.inference.predictor import with_proposals
from rcnnlab.models.transform import native_scale
from rcnnlab.runs.checkpoint import load_detector
from rcnnlab.version import __version__

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
OPSET = 17


def _need(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingFileError(f"{module} is not installed. Fix: pip install "
                               f"'rcnnlab[{extra}]'") from None


def sidecar_path(model_path: Path) -> Path:
    """The json written beside an exported model."""
    return model_path.with_suffix(".json")


def input_scale(cfg: Config, height: int, width: int) -> float:
    """The factor the eager model's transform resizes an image by at inference."""
    m = cfg.model
    if m.native_size:
        return native_scale(height, width, m.min_size, m.max_size)
    return resize_scale(height, width, m.min_size, m.max_size)


def export_onnx(run: str | Path, out: str | Path | None = None,
                overrides: Sequence[str] = ()) -> Path:
    """Export a run's best checkpoint (or a checkpoint file) to ONNX; returns the .onnx path
    (default: `<run>/export/model.onnx`), with its sidecar json beside it. `overrides` may set
    `eval.proposals=N` (the RPN proposals the box head scores), which the graph then holds."""
    _need("onnx", "onnx")
    model, ckpt = load_detector(run, device="cpu")
    cfg = ckpt.config
    options = cfg.eval.with_overrides(list(overrides))
    if options.model_dump(exclude={"proposals"}) != cfg.eval.model_dump(exclude={"proposals"}):
        raise ConfigError(f"overrides {list(overrides)}: only eval.proposals is held by an "
                          "exported graph (Soft-NMS, TTA and eval.amp run on the PyTorch model)")
    if options.proposals is not None:
        model = with_proposals(model, options.proposals)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"rpn_post_nms_top_n_test": options.proposals})})
    path = Path(out) if out else (Path(run) if Path(run).is_dir() else Path(run).parent) / (
        "export/model.onnx")
    if path.suffix != ".onnx":
        path = path.with_suffix(".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    # traced at scale 1 (see the module docstring): native size keeps any image within the
    # caps, torchvision's rule keeps one whose short side is min_size
    side = min(cfg.model.min_size, 64) if cfg.model.native_size else cfg.model.min_size
    example = torch.rand(3, side, side)
    if input_scale(cfg, side, side) != 1.0:
        raise ConfigError(f"{ckpt.path}: model.min_size / max_size leave no square image "
                          "unresized; export needs one. Fix: export a run with max_size >= "
                          "min_size")
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python numbers it freezes
        torch.onnx.export(model, ([example],), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["boxes", "labels", "scores"],
                          dynamic_axes={"image": {1: "height", 2: "width"},
                                        "boxes": {0: "detections"},
                                        "labels": {0: "detections"},
                                        "scores": {0: "detections"}})
    sidecar = {
        "format": "onnx", "opset": OPSET, "rcnnlab_version": __version__,
        "source": str(ckpt.path), "categories": ckpt.categories, "threshold": ckpt.threshold,
        "proposals": cfg.model.rpn_post_nms_top_n_test,
        "input": "image: float32 [3, height, width], RGB in [0, 1], already resized by the "
                 "rule of config.model (native_size, min_size, max_size); the graph normalises",
        "outputs": "boxes [N, 4] xyxy pixels of the input, labels [N] 1..K (category = "
                   "categories[label - 1]), scores [N]",
        "config": cfg.model_dump(mode="json"),
    }
    sidecar_path(path).write_text(json.dumps(sidecar, indent=1))
    log.info("exported %s -> %s (%.1f MB)", ckpt.path, path, path.stat().st_size / 2**20)
    return path


RUNTIMES = ("onnxruntime", "openvino")


class OnnxDetector:
    """An exported detector run by ONNX Runtime or OpenVINO (which reads the ONNX file), called
    like the eager model in eval mode: a list of float CHW images in [0, 1] -> a list of
    {"boxes", "labels", "scores"}. OpenVINO computes in float32 (its CPU plugin would pick
    bf16 on CPUs that have it, which moves scores by more than 1e-3)."""

    def __init__(self, path: str | Path, *, runtime: str = "onnxruntime",
                 threads: int | None = None):
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime {runtime!r}: use onnxruntime or openvino")
        self.path, self.runtime = Path(path), runtime
        side = sidecar_path(self.path)
        if not side.is_file():
            raise MissingFileError(f"{side}: the sidecar of {self.path.name} is missing. Fix: "
                                   "keep the .json rcnnlab export wrote beside the model")
        self.info: dict[str, Any] = json.loads(side.read_text())
        self.config = config_from_dict(self.info["config"])
        if runtime == "openvino":
            ov = _need("openvino", "openvino")
            settings: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
            if threads:
                settings["INFERENCE_NUM_THREADS"] = threads
            compiled = ov.Core().compile_model(str(self.path), "CPU", settings)
            request = compiled.create_infer_request()
            outputs = compiled.outputs
            self._run = lambda image: [request.infer({0: image})[o] for o in outputs]
        else:
            ort = _need("onnxruntime", "onnx")
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(self.path), options,
                                           providers=["CPUExecutionProvider"])
            self._run = lambda image: session.run(None, {"image": image})

    def eval(self) -> OnnxDetector:
        """For code written for torch modules: an exported graph is always in eval mode."""
        return self

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return [self._one(image) for image in images]

    def _one(self, image: Tensor) -> dict[str, Tensor]:
        image = image.detach().float().cpu()
        h, w = (int(s) for s in image.shape[-2:])
        scale = input_scale(self.config, h, w)
        fed = image if scale == 1.0 else rescale(image, None, scale)[0]
        boxes, labels, scores = self._run(fed.numpy())
        boxes = torch.from_numpy(boxes)
        if scale != 1.0:  # back to the given image, per axis as torchvision's postprocess
            fh, fw = fed.shape[-2:]
            boxes = clip_boxes_to_image(boxes * torch.tensor([w / fw, h / fh] * 2), (h, w))
        return {"boxes": boxes, "labels": torch.from_numpy(labels).long(),
                "scores": torch.from_numpy(scores)}


def parity(reference: Sequence[Any], other: Sequence[Any], *, iou: float = 0.99,
           score: float = 1e-3) -> tuple[int, int]:
    """How many of `reference`'s detections (per image: `detector.Result`s) have a partner in
    `other`'s with the same class, IoU >= `iou` and a score within `score`: (matched, total)."""
    matched = total = 0
    for a, b in zip(reference, other, strict=True):
        total += len(a)
        if not len(a) or not len(b):
            continue
        overlap = box_iou(a.boxes, b.boxes)
        for i in range(len(a)):
            ok = ((overlap[i] >= iou) & (b.class_ids == a.class_ids[i])
                  & ((b.scores - a.scores[i]).abs() <= score))
            matched += bool(ok.any())
    return matched, total


def is_exported(path: str | Path) -> bool:
    """Whether `path` is a model file `export` writes."""
    return Path(path).suffix.lower() == ".onnx"

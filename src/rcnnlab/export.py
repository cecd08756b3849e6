"""Export a trained detector to ONNX, TorchScript or OpenVINO, and run the exported file.

`Detector.export(format)` (through `export_model`) writes the model file and a sidecar json
beside it holding what the graph cannot: the categories, the tuned threshold, the run's config
(inference options, the resize rule) and a description of the input and outputs.

Every format holds the same traced graph. It takes one float32 CHW RGB image in [0, 1] of any
size and returns `boxes` (N, 4 xyxy in that image's pixels), `labels` (N, 1..K: category
`categories[label - 1]`) and `scores` (N); normalisation, the RPN, RoIAlign, the box head and
its NMS are inside. The one step that stays in Python is the resize: torchvision's transform
decides it from Python numbers, which a trace would freeze, so the graph is traced at scale 1
and `ExportedDetector` resizes an image the way the eager model does (native size: only shrink
past `model.min_size` / `max_size`; else torchvision's rule) before it runs the graph, then maps
the boxes back.

- onnx (`model.onnx`): the legacy (TorchScript-based) exporter at opset 17; runs in ONNX
  Runtime (`pip install 'rcnnlab[onnx]'`) or OpenVINO, which reads ONNX files.
- torchscript (`model.torchscript`): `torch.jit.trace` of the same graph (scripting fails on
  torchvision's detection heads' Python types); runs with torch alone, also from C++ (libtorch).
  torch marks TorchScript deprecated in favour of torch.export; the trace is used because
  it holds the very graph the ONNX export holds, and is checked against eager the same way.
- openvino (`model.xml` + `model.bin`): OpenVINO's IR converted from the ONNX graph, weights
  kept in float32 (`pip install 'rcnnlab[onnx,openvino]'`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou, clip_boxes_to_image

from rcnnlab.config import Config, config_from_dict
from rcnnlab.data.transforms import rescale, resize_scale
from rcnnlab.errors import ConfigError, MissingFileError, UserError
from rcnnlab.files import replacing, write_atomic
from rcnnlab.inference.predictor import with_proposals
from rcnnlab.models.transform import native_scale
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.version import __version__

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "openvino")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript", "openvino": ".xml"}
# the runtimes that run each format's file; the first is the default
RUNTIMES = {".onnx": ("onnxruntime", "openvino"), ".torchscript": ("torchscript",),
            ".xml": ("openvino",)}
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


class _OneImage(torch.nn.Module):
    """The eager model as the exported graph sees it: one image in, (boxes, labels, scores)
    out (a trace cannot return torchvision's list of dicts)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        found = self.model([image])[0]
        return found["boxes"], found["labels"], found["scores"]


def check_format(format: str) -> None:
    """Refuse a format `export_model` does not write, naming the ones it does."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format}: use one of {', '.join(FORMATS)}")


def default_export_path(run: str | Path, format: str) -> Path:
    """Where a run folder's (or a checkpoint file's) export goes: `<run>/export/model.<suffix>`."""
    check_format(format)
    run = Path(run)
    return (run if run.is_dir() else run.parent) / f"export/model{SUFFIXES[format]}"


def export_model(model: torch.nn.Module, ckpt: Checkpoint, out: str | Path, *,
                 format: str = "onnx", proposals: int | None = None) -> Path:
    """Export the eager detector `model` (on the CPU, with the weights of `ckpt`) as `format`
    (onnx, torchscript, openvino) to `out` (its suffix set by the format), with its sidecar
    json beside it; returns the model file's path. `proposals` sets the RPN proposals the box
    head scores, which the graph then holds. `Detector.export` calls this."""
    check_format(format)
    if format in ("onnx", "openvino"):
        _need("onnx", "onnx")
    if format == "openvino":
        _need("openvino", "openvino")
    cfg = ckpt.config
    if proposals is not None:
        model = with_proposals(model, proposals)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"rpn_post_nms_top_n_test": proposals})})
    path = Path(out).with_suffix(SUFFIXES[format])
    path.parent.mkdir(parents=True, exist_ok=True)
    # traced at scale 1 (see the module docstring): native size keeps any image within the
    # caps, torchvision's rule keeps one whose short side is min_size
    side = min(cfg.model.min_size, 64) if cfg.model.native_size else cfg.model.min_size
    example = torch.rand(3, side, side)
    if input_scale(cfg, side, side) != 1.0:
        raise ConfigError(f"{ckpt.path}: model.min_size / max_size leave no square image "
                          "unresized; export needs one. Fix: export a run with max_size >= "
                          "min_size")
    graph = _OneImage(model.eval())
    if format == "openvino":
        _convert_openvino(graph, example, path)
    else:
        with replacing(path) as tmp:  # a failed or killed export leaves no half a model
            (_trace_torchscript if format == "torchscript" else _trace_onnx)(graph, example, tmp)
    sidecar = {
        "format": format, "rcnnlab_version": __version__, "torch_version": torch.__version__,
        "source": str(ckpt.path), "categories": ckpt.categories, "threshold": ckpt.threshold,
        "proposals": cfg.model.rpn_post_nms_top_n_test,
        "input": "image: float32 [3, height, width], RGB in [0, 1], already resized by the "
                 "rule of config.model (native_size, min_size, max_size); the graph normalises",
        "outputs": "boxes [N, 4] xyxy pixels of the input, labels [N] 1..K (category = "
                   "categories[label - 1]), scores [N]",
        "config": cfg.model_dump(mode="json"),
    }
    if format != "torchscript":
        sidecar["opset"] = OPSET
    write_atomic(sidecar_path(path), json.dumps(sidecar, indent=1))
    size = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.is_file())
    log.info("exported %s -> %s (%.1f MB)", ckpt.path, path, size / 2**20)
    return path


def _trace_onnx(graph: torch.nn.Module, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on the Python numbers it freezes
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["boxes", "labels", "scores"],
                          dynamic_axes={"image": {1: "height", 2: "width"},
                                        "boxes": {0: "detections"},
                                        "labels": {0: "detections"},
                                        "scores": {0: "detections"}})


def _trace_torchscript(graph: torch.nn.Module, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes; TorchScript's deprecation
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        traced.save(str(path))


def _convert_openvino(graph: torch.nn.Module, example: Tensor, path: Path) -> None:
    import tempfile

    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        _trace_onnx(graph, example, onnx_path)
        # float32 weights: fp16 compression (OpenVINO's default) moves scores by > 1e-3
        ov.save_model(ov.convert_model(str(onnx_path)), str(Path(tmp) / "model.xml"),
                      compress_to_fp16=False)
        for suffix in (".bin", ".xml"):  # the weights first: an .xml never lacks its .bin
            with replacing(path.with_suffix(suffix)) as target:
                os.replace(Path(tmp) / f"model{suffix}", target)


class ExportedDetector:
    """An exported detector, called like the eager model in eval mode: a list of float CHW
    images in [0, 1] -> a list of {"boxes", "labels", "scores"}. `runtime`: onnxruntime or
    openvino for a .onnx file, openvino for .xml, torchscript for .torchscript (default: the
    first). OpenVINO computes in float32 (its CPU plugin would pick bf16 on CPUs that have
    it, which moves scores by more than 1e-3)."""

    def __init__(self, path: str | Path, *, runtime: str = "auto",
                 threads: int | None = None):
        self.path = Path(path)
        allowed = RUNTIMES.get(self.path.suffix.lower())
        if allowed is None:
            raise ConfigError(f"{self.path}: not an exported model. Fix: give the .onnx, "
                              ".torchscript or .xml file rcnnlab export wrote")
        runtime = allowed[0] if runtime == "auto" else runtime
        if runtime not in allowed:
            raise ConfigError(f"{self.path.name}: runtime {runtime!r} does not run "
                              f"{self.path.suffix} files. Fix: use {' or '.join(allowed)}")
        self.runtime = runtime
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: exported model not found")
        side = sidecar_path(self.path)
        if not side.is_file():
            raise MissingFileError(f"{side}: the sidecar of {self.path.name} is missing. Fix: "
                                   "keep the .json rcnnlab export wrote beside the model")
        self.info: dict[str, Any] = _read_sidecar(side)
        self.config = config_from_dict(self.info["config"])
        loader = {"onnxruntime": _onnxruntime, "openvino": _openvino,
                  "torchscript": _torchscript}[runtime]
        try:
            self._run = loader(self.path, threads)
        except UserError:
            raise
        except Exception as exc:  # each runtime raises its own kind for a damaged file
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(f"{self.path}: {runtime} cannot load it ({type(exc).__name__}"
                              f"{': ' + first if first else ''}). Fix: export it again "
                              "(rcnnlab export RUN); a copy cut short or edited does not load"
                              ) from None

    def eval(self) -> ExportedDetector:
        """For code written for torch modules: an exported graph is always in eval mode."""
        return self

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return [self._one(image) for image in images]

    def _one(self, image: Tensor) -> dict[str, Tensor]:
        image = image.detach().float().cpu()
        h, w = (int(s) for s in image.shape[-2:])
        scale = input_scale(self.config, h, w)
        fed = image if scale == 1.0 else rescale(image, None, scale)[0]
        boxes, labels, scores = self._run(fed)
        if scale != 1.0:  # back to the given image, per axis as torchvision's postprocess
            fh, fw = fed.shape[-2:]
            boxes = clip_boxes_to_image(boxes * torch.tensor([w / fw, h / fh] * 2), (h, w))
        return {"boxes": boxes, "labels": labels.long(), "scores": scores}


def _read_sidecar(side: Path) -> dict[str, Any]:
    """The sidecar json: categories, threshold and config, or one error naming what is wrong."""
    fix = "Fix: keep the .json rcnnlab export wrote beside the model (export again if lost)"
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{side}: not the JSON rcnnlab export writes ({exc}). {fix}") from None
    missing = [k for k in ("config", "categories", "threshold") if not isinstance(info, dict)
               or k not in info]
    if missing:
        raise ConfigError(f"{side}: lacks {', '.join(missing)}. {fix}")
    try:
        config_from_dict(info["config"])
    except Exception as exc:
        raise ConfigError(f"{side}: its config cannot be read ({exc}). {fix}") from None
    return info


Runner = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def _onnxruntime(path: Path, threads: int | None) -> Runner:
    ort = _need("onnxruntime", "onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda image: tuple(torch.from_numpy(a)  # type: ignore[return-value]
                               for a in session.run(None, {"image": image.numpy()}))


def _openvino(path: Path, threads: int | None) -> Runner:
    ov = _need("openvino", "openvino")
    settings: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        settings["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", settings)
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    def run(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        found = request.infer({0: image.numpy()})  # once: one inference, three outputs
        return tuple(torch.from_numpy(found[o]) for o in outputs)  # type: ignore[return-value]

    return run


def _torchscript(path: Path, threads: int | None) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation note
        module = torch.jit.load(str(path), map_location="cpu")
    if threads:
        torch.set_num_threads(threads)

    def run(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            return module(image)

    return run


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
    return Path(path).suffix.lower() in RUNTIMES

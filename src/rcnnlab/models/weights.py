"""Detector weights: where they come from, and how they are loaded into a model.

A ``weights`` / ``backbone_weights`` value is a torchvision enum name (downloaded through
torchvision's loader, or read from the torch hub cache) or the path of a local ``.pt``/``.pth``
file (a state_dict, or an rcnnlab checkpoint with a ``"model"`` key): :func:`fetch_weights`
resolves and reads either kind. :func:`load_matching` copies a state_dict into a model,
re-keying its prefixes (DataParallel, residual FPN, backbone-only and ImageNet trunk files) and
skipping, with a :class:`LoadReport`, the tensors whose shape differs, such as a box predictor
trained for another class count; :func:`load_weights_file` does both for a local file.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, WeightsEnum
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.resnet import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights

from rcnnlab.errors import ConfigError, DownloadError, MissingFileError, RunError
from rcnnlab.models.resfpn import ResidualFPNBackbone

__all__ = ["LoadReport", "fetch_weights", "is_legacy_r50", "load_matching", "load_weights_file",
           "predictor_classes"]

log = logging.getLogger(__name__)

# Which torchvision weights enum each arch accepts: full detector, and backbone (trunk) only.
_DETECTOR_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "fasterrcnn_resnet50_fpn": FasterRCNN_ResNet50_FPN_Weights,
    "fasterrcnn_resnet50_fpn_v2": FasterRCNN_ResNet50_FPN_V2_Weights,
    "fasterrcnn_mobilenet_v3_large_fpn": FasterRCNN_MobileNet_V3_Large_FPN_Weights,
}
_BACKBONE_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "fasterrcnn_resnet50_fpn": ResNet50_Weights,
    "fasterrcnn_resnet50_fpn_v2": ResNet50_Weights,
    "fasterrcnn_mobilenet_v3_large_fpn": MobileNet_V3_Large_Weights,
    "resnet18_fpn": ResNet18_Weights,
    "resnet34_fpn": ResNet34_Weights,
    "resnet50_fpn": ResNet50_Weights,
}
_PREDICTOR_PREFIX = "roi_heads.box_predictor."


# --------------------------------------------------------------------------- load reports


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model.

    Names are the model's parameter/buffer names (after any prefix remapping, see
    :func:`load_weights_file`); BatchNorm ``num_batches_tracked`` counters are left out.

    Attributes:
        source: the file path or torchvision weights name the tensors came from.
        loaded: names of the tensors copied into the model.
        skipped_shape: name -> (shape in the source, shape in the model) for tensors present in
            both but with different shapes (typically the box predictor of another class count).
        missing: model tensors the source has no value for (they keep their initialisation).
        unexpected: source tensors with no counterpart in the (targeted part of the) model.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped_shape: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts, e.g. for a log."""
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped_shape)} "
            f"with another shape, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )

    def __str__(self) -> str:
        return self.summary()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly counts and names, for run records."""
        return {
            "source": self.source,
            "counts": {
                "loaded": len(self.loaded),
                "skipped_shape": len(self.skipped_shape),
                "missing": len(self.missing),
                "unexpected": len(self.unexpected),
            },
            "skipped_shape": {k: [list(a), list(b)] for k, (a, b) in self.skipped_shape.items()},
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
        }


# --------------------------------------------------------------------------- public API


def fetch_weights(value: str | None, *, arch: str,
                  param: str) -> tuple[str, Mapping[str, Any]] | None:
    """The state_dict a ``weights`` / ``backbone_weights`` value names, read or downloaded.

    Args:
        value: ``None``, a torchvision enum name (``"FasterRCNN_ResNet50_FPN_Weights.COCO_V1"``,
            or ``"DEFAULT"`` / a member name of the arch's own enum) or a local file's path.
        arch: the model's arch (which enums it accepts).
        param: ``"weights"`` (full detector) or ``"backbone_weights"`` (trunk only), for the
            enum check and the messages.

    Returns:
        (source name, state_dict): the file path or the enum's full name, and its tensors;
        ``None`` when ``value`` is ``None``.

    Raises:
        ConfigError: an unknown weights name, or one of another arch.
        MissingFileError: a weights path that does not exist.
        RunError: a file that cannot be read or holds no state_dict.
        DownloadError: torchvision weights that cannot be downloaded (no network, no cache).
    """
    src = _resolve_weights(value, arch=arch, param=param)
    if isinstance(src, Path):
        return str(src), _read_weights_file(src)
    if src is not None:
        return _enum_name(src), _download_torchvision(src, param)
    return None


def load_weights_file(
    model: nn.Module, path: str | os.PathLike[str], *, strict_head: bool = False
) -> LoadReport:
    """Load a local weights file into ``model``, skipping tensors of another shape.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and may be
    a plain state_dict or a checkpoint dict whose ``"model"`` (or ``"state_dict"``) entry is one.
    Key prefixes are matched automatically: a detector state_dict, a checkpoint saved with or
    without ``residual_fpn``, a backbone (``body.*``/``fpn.*``) state_dict, or an ImageNet
    classification state_dict of the trunk (``conv1.*``/``layer1.*`` or ``features.*``) all load
    into the matching part of a detector.

    Args:
        model: a model from :func:`~rcnnlab.models.architecture.build_model`.
        path: the ``.pt``/``.pth`` file.
        strict_head: raise instead of skipping when the box predictor does not fit (use it when
            the file must be a detector for exactly this class list, e.g. for evaluation).

    Returns:
        A :class:`LoadReport` with the loaded, skipped, missing and unexpected tensors.

    Raises:
        MissingFileError: the file does not exist (a FileNotFoundError).
        RunError: the file is not a state_dict, nothing in it matches the model, or
            ``strict_head`` and the predictor does not match (a ValueError).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(_missing_file_message(path, "weights"))
    report = load_matching(model, _read_weights_file(path), str(path))
    if strict_head:
        bad = [
            k for k in (*report.skipped_shape, *report.missing) if k.startswith(_PREDICTOR_PREFIX)
        ]
        if bad:
            shape = report.skipped_shape.get(_PREDICTOR_PREFIX + "cls_score.weight")
            found = f"{shape[0][0]} classes" if shape else "no box predictor"
            raise RunError(
                f"{path}: its box predictor does not fit the model ({found} in the file, "
                f"{predictor_classes(model)} in the model, background included): {', '.join(bad)}. "
                "Use a checkpoint trained on this dataset's categories, or load with "
                "strict_head=False to keep a freshly initialised predictor"
            )
    log.info(report.summary())
    return report


def is_legacy_r50(weights: str, arch: str) -> bool:
    """Whether `weights` names (or is a local copy of) the R50 COCO_V1 file."""
    legacy = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    if Path(weights).name == _url_filename(legacy.url):
        return True
    if weights.split(".")[0] == type(legacy).__name__:  # the enum has this one member
        return True
    return arch == "fasterrcnn_resnet50_fpn" and weights in ("DEFAULT", "COCO_V1")


def predictor_classes(model: nn.Module) -> int:
    """The classes the model's box predictor scores, background included."""
    return model.roi_heads.box_predictor.cls_score.out_features


# --------------------------------------------------------------------------- weights sources


def _resolve_weights(value: str | None, *, arch: str, param: str) -> WeightsEnum | Path | None:
    """Turn a ``weights``/``backbone_weights`` string into a torchvision enum or a file path."""
    if value is None:
        return None
    value = str(value)
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".pt", ".pth") or "/" in value or os.sep in value:
        raise MissingFileError(_missing_file_message(path, param))
    expected = (_DETECTOR_WEIGHTS if param == "weights" else _BACKBONE_WEIGHTS).get(arch)
    if expected is None:
        raise ConfigError(
            f"{param}={value!r}: torchvision has no detector weights for arch {arch!r}. Use "
            f"backbone_weights='DEFAULT' ({_BACKBONE_WEIGHTS[arch].__name__}) for an ImageNet "
            "trunk, or pass a local .pt/.pth file"
        )
    valid = ", ".join([f"{expected.__name__}.{w.name}" for w in expected] + ["DEFAULT"])
    try:
        resolved = torchvision.models.get_weight(value) if "." in value else expected[value]
    except (KeyError, ValueError):
        raise ConfigError(
            f"{param}={value!r} is not a torchvision weights name nor an existing file; for arch "
            f"{arch!r} use one of: {valid}; or the path of a local .pt/.pth file"
        ) from None
    if not isinstance(resolved, expected):
        raise ConfigError(
            f"{param}={value!r} are {type(resolved).__name__} weights, but arch {arch!r} takes "
            f"{expected.__name__} for {param}: use one of {valid}, or a local .pt/.pth file"
        )
    return resolved


def _missing_file_message(path: Path, param: str) -> str:
    if path.is_dir():
        return (f"{param}={path} is a folder. Fix: give the .pt/.pth file in it (a run's "
                "checkpoints/best.pt, say)")
    return (
        f"{param} file not found: {path}. Pass an existing .pt/.pth file (a state_dict or an "
        "rcnnlab checkpoint), a torchvision weights name such as "
        "'FasterRCNN_ResNet50_FPN_Weights.COCO_V1' or 'DEFAULT', or None for random init"
    )


def _enum_name(weights: WeightsEnum) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def _url_filename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _download_torchvision(weights: WeightsEnum, param: str) -> Mapping[str, Any]:
    """Fetch an enum's state_dict through torchvision's loader (download or torch hub cache)."""
    try:
        return weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
    except OSError as exc:  # URLError, socket and SSL errors are all OSErrors
        filename = _url_filename(weights.url)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        raise DownloadError(
            f"cannot load {param}={_enum_name(weights)}: downloading {weights.url} failed "
            f"({exc}); there is no network access and the file is not in the torch hub cache "
            f"({cached}). On a machine with network access download that URL, then either copy "
            f"the file to {cached} or pass its path instead: {param}='/path/to/{filename}'"
        ) from exc


def _read_weights_file(path: Path) -> Mapping[str, Any]:
    """Read a state_dict (or a checkpoint's ``"model"`` state_dict) from ``path``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-weights pickles
        raise RunError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}). Save weights "
            "as a state_dict: torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise RunError(
        f"{path}: holds no state_dict (expected a dict of tensors, or a checkpoint dict with a "
        f"'model' state_dict; got {type(obj).__name__})"
    )


# --------------------------------------------------------------------------- state dict loading


def _key_rewrites(model: nn.Module) -> list[tuple[str, str]]:
    """Candidate (old prefix, new prefix) rewrites from a file's keys to the model's."""
    bb = "backbone.base." if isinstance(model.backbone, ResidualFPNBackbone) else "backbone."
    candidates = [
        ("", ""),  # same layout
        ("module.", ""),  # saved from DataParallel / DDP
        ("backbone.", bb),  # plain detector into a residual-FPN one
        ("backbone.base.", "backbone."),  # residual-FPN detector into a plain one
        ("", bb),  # a backbone's own state_dict: body.* + fpn.*
        ("", bb + "body."),  # ImageNet ResNet: conv1.*, layer1.*, ...
        ("features.", bb + "body."),  # ImageNet MobileNetV3: features.0.*, ...
    ]
    return list(dict.fromkeys(candidates))


def _rewrite(key: str, old: str, new: str) -> str:
    return new + key[len(old) :] if key.startswith(old) else key


def load_matching(
    model: nn.Module, state_dict: Mapping[str, Any], source: str, *, prefix: str = ""
) -> LoadReport:
    """Copy the tensors of ``state_dict`` that fit into ``model`` (restricted to ``prefix``).

    The file's key prefixes are rewritten to the model's (the rewrite under which most tensors
    find a home: DataParallel's ``module.``, a residual-FPN or plain detector, a backbone's own
    or an ImageNet trunk's state_dict); tensors of another shape are skipped.

    Args:
        model: the detector to load into.
        state_dict: the tensors (a ``_metadata`` attribute, as torch saves it, is kept).
        source: the file or weights name, for the report and the messages.
        prefix: load only into the model's tensors under this prefix (``"backbone."``).

    Returns:
        A :class:`LoadReport` of what was loaded, skipped, missing and unexpected.

    Raises:
        RunError: none of the tensors fit the model.
    """
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    # Pick the key rewrite under which most of the file's tensors find a home in the model.
    old, new = max(
        _key_rewrites(model),
        key=lambda rw: sum(_rewrite(k, *rw) in target for k in tensors),
    )
    remapped = {_rewrite(k, old, new): v for k, v in tensors.items()}
    report = LoadReport(source)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in remapped.items():
        if not key.startswith(prefix):
            report.unexpected.append(key)
        elif key in target and target[key].shape != value.shape:
            report.skipped_shape[key] = (tuple(value.shape), tuple(target[key].shape))
        else:
            # Keys unknown to the model are passed on too: torchvision modules rename legacy keys
            # in _load_from_state_dict (e.g. the RPN head's pre-0.9 "conv.weight").
            to_load[key] = value
    # Keep torch's per-module version metadata (rewritten like the keys) so those legacy-key
    # conversions see the version the file was saved with.
    metadata = getattr(state_dict, "_metadata", None)
    loadable = _with_metadata(to_load, metadata, old, new)
    missing, unexpected = model.load_state_dict(loadable, strict=False)

    def counts(key: str) -> bool:  # BatchNorm batch counters are noise in a report
        return not key.endswith("num_batches_tracked")

    # torch lists every model key the (renamed) dict did not provide, so anything of the
    # targeted part that is not missing was loaded.
    missing_set = set(missing)
    report.unexpected += [k for k in unexpected if counts(k)]
    report.missing = [
        k for k in missing if k in target and k not in report.skipped_shape and counts(k)
    ]
    report.loaded = [k for k in target if k not in missing_set and counts(k)]
    if not report.loaded:
        sample = ", ".join(list(tensors)[:3]) or "no tensors"
        raise RunError(
            f"{source}: none of its {len(tensors)} tensors fit the model ({sample}, ...). Is it "
            "a checkpoint of another architecture? Build the model with the arch it was "
            "trained with, or pass it as backbone_weights if it holds a backbone only"
        )
    return report


def _with_metadata(
    tensors: dict[str, torch.Tensor], metadata: Mapping[str, Any] | None, old: str, new: str
) -> dict[str, torch.Tensor]:
    """``tensors`` as an OrderedDict carrying ``metadata`` with module prefixes rewritten."""
    out = OrderedDict(tensors)
    if metadata is not None:
        # Metadata keys are module names without a trailing dot ("" is the root module).
        out._metadata = {  # type: ignore[attr-defined]
            _rewrite(k + ".", old, new).removesuffix("."): v for k, v in metadata.items()
        }
    return out

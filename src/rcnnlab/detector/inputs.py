"""The inputs `Detector.predict` takes (paths, PIL images, numpy arrays, tensors, lists of
them), read as float CHW RGB tensors in [0, 1] with an id and a name each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from rcnnlab.data.images import image_to_tensor
from rcnnlab.errors import ConfigError, DatasetError
from rcnnlab.inference.sources import Source, SourceImage


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

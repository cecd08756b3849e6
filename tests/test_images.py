"""The one image reader: every mode to 8-bit RGB (or a clear refusal), EXIF orientation, the
pixel cap, unreadable files; and the json's image sizes checked against the files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from rcnnlab.data.coco import CocoDetection, load_coco
from rcnnlab.data.images import image_size, read_image
from rcnnlab.errors import DatasetError

from .conftest import write_coco


def _rgb_of(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")  # Pillow reads it as 16-bit grey
    image = read_image(tmp_path / "g16.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 1, 4)
    assert image[0, 0].tolist() == [0, 1, 128, 255]  # x * 255 / 65535, not min(x, 255)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_32_bit_integer_grey_uses_the_16_bit_range_when_values_need_it(tmp_path):
    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), mode="I").save(
        tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif")[0, 0].tolist() == [0, 4, 255]
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I").save(tmp_path / "s.tif")
    assert read_image(tmp_path / "s.tif")[0, 0].tolist() == [0, 100, 255]  # already 8-bit


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "CMYK", "YCbCr"])
def test_every_8_bit_mode_becomes_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("CMYK", "YCbCr") else "x.png")
    source.save(path) if mode != "YCbCr" else source.save(path, "JPEG")
    with Image.open(path) as stored:
        expected = _rgb_of(stored)
    image = read_image(path)
    assert image.dtype == torch.uint8 and torch.equal(image, expected)


def test_a_palette_with_transparency_drops_the_alpha_without_a_warning(tmp_path, recwarn):
    source = Image.new("P", (4, 2), 1)
    source.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    source.info["transparency"] = 0
    source.save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png")[:, 0, 0].tolist() == [200, 100, 50]
    assert not [w for w in recwarn if "ransparency" in str(w.message)]


def test_a_float_image_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((2, 2), dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match=r"f\.tif: a 32-bit floating point image .*Fix:"):
        read_image(tmp_path / "f.tif")


def test_exif_orientation_is_applied_to_pixels_and_size(tmp_path):
    source = Image.new("RGB", (40, 20), (0, 0, 0))
    source.paste((255, 255, 255), (0, 0, 10, 20))  # the left quarter white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees clockwise
    source.save(tmp_path / "r.jpg", exif=exif, quality=100)
    assert image_size(tmp_path / "r.jpg") == (20, 40)
    image = read_image(tmp_path / "r.jpg")
    assert image.shape == (3, 40, 20)
    assert image[0, :10].float().mean() > 200 and image[0, 30:].float().mean() < 50


def test_the_pixel_cap_refuses_before_decoding(tmp_path):
    Image.new("RGB", (60, 40)).save(tmp_path / "big.png")
    with pytest.raises(DatasetError, match=r"60 x 40 = 2,400 pixels, more than "
                                           r"data\.max_image_pixels = 1,000\. Fix:"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    with pytest.raises(DatasetError, match="data.max_image_pixels"):
        image_size(tmp_path / "big.png", max_pixels=1000)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"not an image"])
def test_unreadable_files_name_the_file(tmp_path, content):
    Image.new("RGB", (30, 30), (10, 20, 30)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(DatasetError, match=r"bad\.png: cannot be read as an image .*Fix:"):
        read_image(tmp_path / "bad.png")


def test_a_truncated_png_names_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                    ).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"t\.png: cannot be read as an image"):
        read_image(tmp_path / "t.png")


@pytest.mark.parametrize(("json_size", "box"), [((30, 20), [40, 5, 10, 20]),
                                                ((120, 80), [5, 5, 10, 20])])
def test_the_files_size_wins_over_the_json(tmp_path, caplog, json_size, box):
    """Smaller or larger in the json: the real size is used, counted, the record named."""
    caplog.set_level(logging.WARNING)
    images = [{"id": 7, "file_name": "a.png", "width": json_size[0], "height": json_size[1]}]
    path = write_coco(tmp_path, images=images, make_files=False,
                      annotations=[{"id": 1, "image_id": 7, "category_id": 0, "bbox": box}])
    Image.new("RGB", (60, 40)).save(tmp_path / "a.png")
    data = load_coco(path)
    assert (data.images[0]["width"], data.images[0]["height"]) == (60, 40)
    assert data.annotations[7][0]["bbox"] == [float(v) for v in box]  # inside the real image
    assert sum(n for what, n in data.repairs.items() if "width/height differ" in what) == 1
    assert "image ids 7 (" in caplog.text and "-> 60x40)" in caplog.text
    image, target = CocoDetection(data)[0]
    assert image.shape == (3, 40, 60) and target["boxes"].canvas_size == (40, 60)

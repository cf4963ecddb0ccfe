"""mmgdino.images.load_image: what a viewer shows is what gets detected, every mode, every array form, and a clear
ImageReadError for what cannot be used."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmgdino.errors import ImageReadError
from mmgdino.images import BACKGROUND, load_image


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :10] = 255  # a white band on the left of the stored pixels
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    upright = np.asarray(load_image(path))
    assert upright.shape == (40, 20, 3)  # the viewer's frame: portrait
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the band is now at the top


def test_16_bit_and_float_images_are_scaled_to_their_range(tmp_path):
    values = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (8, 8, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, 7, 0] == 64 and rgb[7, 0, 0] == 128 and rgb[7, 7, 0] == 255
    floats = Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], np.float32).repeat(4, 0).repeat(4, 1), mode="F")
    rgb = np.asarray(load_image(floats))
    assert rgb[0, 0, 0] == 0 and rgb[0, 7, 0] == 128 and rgb[7, 0, 0] == 255 and rgb[7, 7, 0] == 255


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent
    image = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").convert("P")
    if mode == "P":
        image.info["transparency"] = image.getpixel((0, 0))
    assert np.asarray(load_image(image))[0, 0].tolist() == list(BACKGROUND)


@pytest.mark.parametrize("mode", ["CMYK", "1", "L", "P", "YCbCr"])
def test_other_modes_convert_to_rgb(mode):
    image = Image.new("RGB", (6, 5), (200, 100, 50)).convert(mode)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (6, 5)


def test_multi_frame_files_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(path))[0, 0].tolist()[0] > 200


@pytest.mark.parametrize(
    "array",
    [
        np.full((8, 9), 128, np.uint8),
        np.full((8, 9, 1), 128, np.uint8),
        np.full((8, 9, 3), 128, np.uint8),
        np.concatenate([np.full((8, 9, 3), 128, np.uint8), np.full((8, 9, 1), 255, np.uint8)], -1),
        np.full((3, 8, 9), 128, np.uint8),
        np.full((8, 9, 3), 128 * 257, np.uint16),
        np.full((8, 9, 3), 128 / 255, np.float32),
        torch.full((3, 8, 9), 128 / 255),
        torch.full((1, 8, 9), 128 / 255),
    ],
    ids=["HW", "HW1", "HW3", "HW4", "3HW", "uint16", "float", "tensor3HW", "tensor1HW"],
)
def test_array_forms(array):
    out = np.asarray(load_image(array))
    assert out.shape == (8, 9, 3) and (out == 128).all()


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((8, 9, 5), np.uint8), "accepted"),
        (np.zeros((2, 8, 9, 3), np.uint8), "accepted"),
        (np.zeros((8, 9, 3), np.int32), "dtype int32"),
        (np.full((8, 9), np.nan, np.float32), "NaN"),
        (np.zeros((1, 1, 3), np.uint8), "1x1 pixels"),
        (Image.new("RGB", (0, 0)), "0x0 pixels"),
        ("a string that is no file.png", "not a readable image"),
        (42, "not an image"),
    ],
)
def test_unusable_images_raise_one_line(bad, words):
    with pytest.raises(ImageReadError, match=words):
        load_image(bad)


def test_decompression_bombs_are_an_image_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 * 64 is more than twice the limit
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        load_image(path)

"""Images in, RGB PIL images out: what an image viewer shows is what gets detected.

- EXIF orientation is applied (a phone photo is detected upright, and its boxes are in the viewer's frame).
- Every PIL mode becomes RGB by its meaning: 16-bit and 32-bit integer and float images are scaled to their
  range (integer modes by their type's range, float by [0, 1]); transparency (RGBA, LA, P with transparency) is
  composited on white (BACKGROUND); CMYK, 1, L, P, YCbCr, HSV, LAB convert as PIL converts them.
- Multi-frame files (GIF, TIFF, WebP animations) give their first frame.
- Arrays and tensors: (H, W), (H, W, 1|3|4), (3, H, W) or (1, H, W); uint8, uint16, or float in [0, 1].
- Degenerate images (fewer than MIN_SIDE pixels on a side) and images past PIL's decompression-bomb limit are an
  ImageReadError naming the image: the caller reports it and goes on.
"""

from pathlib import Path

import numpy as np
import torch

from .errors import ImageReadError

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
MIN_SIDE = 2  # the backbone downsamples by 32; smaller images carry nothing to detect
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
ACCEPTED_ARRAYS = "(H, W), (H, W, 1|3|4), (3, H, W) or (1, H, W) arrays/tensors of uint8, uint16 or float in [0, 1]"

_INTEGER_RANGE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 2**32 - 1}


def _from_high_bit_depth(image):
    """16/32-bit integer and float modes: scale the values of their type's range to 8 bits (not PIL's clip)."""
    array = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scaled = np.clip(array, 0.0, 1.0) * 255.0
    else:
        top = _INTEGER_RANGE.get(image.mode, 65535)
        if image.mode == "I" and array.size and array.max() <= 65535:
            top = 65535  # 16-bit PNGs open as mode I: their values are 16-bit
        scaled = np.clip(array, 0, top) / top * 255.0
    return _rgb_from_array(scaled.round().astype(np.uint8))


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("F", "I") or image.mode.startswith("I;16"):
        return _from_high_bit_depth(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, BACKGROUND)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _checked(image, name):
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageReadError(f"{name}: image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} needed")
    return image


def _open(path):
    from PIL import Image, ImageOps

    name = str(path)
    try:
        with Image.open(path) as im:
            im.seek(0)  # multi-frame files: the first frame
            im.load()
            _checked(im, name)
            upright = ImageOps.exif_transpose(im)
            return _to_rgb(upright)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{name}: larger than PIL's decompression-bomb limit ({exc})") from exc
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{name}: not a readable image ({type(exc).__name__})") from exc


def _rgb_from_array(array):
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:].astype(np.float64) / 255.0
        background = np.array(BACKGROUND, dtype=np.float64)
        array = (array[..., :3] * alpha + background * (1 - alpha)).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _from_array(array, name):
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))
    if not shape_ok:
        raise ImageReadError(f"{name}: shape {tuple(array.shape)} is not an image; accepted: {ACCEPTED_ARRAYS}")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        array = (array.astype(np.float64) / 65535.0 * 255.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageReadError(f"{name}: holds NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        raise ImageReadError(f"{name}: dtype {array.dtype} is not an image dtype; accepted: {ACCEPTED_ARRAYS}")
    return _checked(_rgb_from_array(array), name)


def load_image(image, name=None):
    """A path, PIL image, array or tensor -> an upright RGB PIL image; ImageReadError (naming it) otherwise."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return _open(image)
    name = name or f"image of type {type(image).__name__}"
    if isinstance(image, Image.Image):
        from PIL import ImageOps

        return _to_rgb(ImageOps.exif_transpose(_checked(image, name)))
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _from_array(image, name)
    raise ImageReadError(f"{name}: not an image; accepted: paths, PIL images, {ACCEPTED_ARRAYS}")

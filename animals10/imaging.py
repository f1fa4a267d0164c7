"""Decoding photos with Pillow into RGB arrays of the model's input size.

Every way a photo can be bad ends in an `ImageDecodeError` with a `kind`, so that callers can
skip and count it instead of dying: one corrupt file never stops a job.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from animals10.card import Preprocessing

# About 8,000 x 8,000 photos: far above any real camera frame we expect, far below a bomb.
DEFAULT_MAX_PIXELS = 64_000_000

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-photo

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


class ImageDecodeError(ValueError):
    """A file that is not a usable photo. `kind` is one of: empty, not_image, too_large, corrupt."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Reads the header only, and refuses empty files, non-images and decompression bombs."""
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("too_large", f"the image is too large to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError("not_image", "the file is not an image Pillow can read") from error
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large", f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    if width == 0 or height == 0:
        raise ImageDecodeError("corrupt", "the image has no pixels")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: scale to 0-255 instead of clipping to white.
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(data: bytes, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes -> upright RGB image. With `size`, large JPEGs decode at a reduced scale (still >= size)."""
    image = open_image(data, max_pixels)
    try:
        if size is not None and image.format == "JPEG":
            image.draft("RGB", (size, size))  # DCT scaling: 1/2, 1/4 or 1/8 of the pixels to decode
        image = ImageOps.exif_transpose(image)
        image.load()
        return _to_rgb(image)
    except ImageDecodeError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise ImageDecodeError("corrupt", f"the image is damaged or truncated ({error})") from error


def resized_crop(width: int, height: int, preprocessing: Preprocessing) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a width x height photo goes: its resized (width, height), and the (left, top) corner of the
    square of the model's size cut from that. The same arithmetic as torchvision's Resize(int) and
    CenterCrop, which timm's evaluation transform uses; a squashed photo is resized to the square itself."""
    size = preprocessing.image_size
    if preprocessing.crop_fraction is None:
        return (size, size), (0, 0)
    short = decode_size(preprocessing)
    if width <= height:
        resized = (short, int(short * height / width))
    else:
        resized = (int(short * width / height), short)
    return resized, (int(round((resized[0] - size) / 2.0)), int(round((resized[1] - size) / 2.0)))


def resize_array(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """RGB image -> (S, S, 3) uint8 as `preprocessing` says: squashed to the square (the study's Keras
    loader), or scaled and centre-cropped (timm's models)."""
    size = preprocessing.image_size
    resample = PIL_FILTERS[preprocessing.interpolation]
    if preprocessing.crop_fraction is None:
        if image.size != (size, size):
            image = image.resize((size, size), resample, reducing_gap=2.0)
        return np.asarray(image, dtype=np.uint8)
    resized, (left, top) = resized_crop(*image.size, preprocessing)
    if image.size != resized:
        image = image.resize(resized, resample)
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_size(preprocessing: Preprocessing) -> int:
    """The smallest square a JPEG may be decoded at (DCT scaling) and still give `resize_array` what it needs."""
    if preprocessing.crop_fraction is None:
        return preprocessing.image_size
    return math.floor(preprocessing.image_size / preprocessing.crop_fraction)


def load_array(data: bytes, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> (S, S, 3) uint8: the one decode path of training, evaluation, batch jobs and serving."""
    return resize_array(decode_image(data, decode_size(preprocessing), max_pixels), preprocessing)

"""Decoding real-world image variants into RGB arrays, and refusing bad files with the right kind."""

import io

import numpy as np
import pytest
from PIL import Image

from animals10.card import Preprocessing
from animals10.imaging import ImageDecodeError, decode_image, load_array


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_jpeg_is_resized_to_the_model_input():
    data = encode(Image.new("RGB", (300, 200), (10, 200, 30)), "JPEG")
    array = load_array(data, Preprocessing(64))
    assert array.shape == (64, 64, 3) and array.dtype == np.uint8
    assert abs(int(array[32, 32, 1]) - 200) < 6


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("L", (50, 40), 128), "PNG"),
        (Image.new("P", (50, 40), 3), "PNG"),
        (Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG"),
        (Image.new("RGB", (50, 40), (1, 2, 3)), "WEBP"),
        (Image.new("RGB", (50, 40), (1, 2, 3)), "BMP"),
        (Image.new("RGB", (50, 40), (1, 2, 3)), "GIF"),
    ],
)
def test_every_mode_becomes_rgb(image, fmt):
    decoded = decode_image(encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (50, 40)


def test_cmyk_red_stays_red():
    red = decode_image(encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG")).getpixel((10, 10))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_rgba_png_is_composited_on_white():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    assert decode_image(encode(image, "PNG")).getpixel((5, 5)) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped():
    array = np.full((10, 10), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    data = encode(Image.fromarray(array), "PNG")
    pixel = decode_image(data).getpixel((5, 5))
    assert 120 <= pixel[0] <= 135 and pixel[0] == pixel[1] == pixel[2]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 30), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (30, 60)


def test_large_jpeg_is_drafted_at_reduced_scale():
    data = encode(Image.new("RGB", (2000, 1600), (90, 90, 90)), "JPEG")
    assert decode_image(data, size=128).size == (250, 200)  # 1/8 scale, still >= 128
    assert decode_image(data).size == (2000, 1600)


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"", "empty"),
        (b"this is a text file, not a photo\n", "not_image"),
    ],
)
def test_bad_files_raise_a_decode_error_with_their_kind(data, kind):
    with pytest.raises(ImageDecodeError) as caught:
        load_array(data, Preprocessing(32))
    assert caught.value.kind == kind


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_corrupt(fmt):
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageDecodeError) as caught:
        load_array(data[: len(data) // 2], Preprocessing(32))
    assert caught.value.kind == "corrupt"


def test_decompression_bomb_is_refused_before_decoding():
    # A 1-bit PNG of 20,000 x 20,000 pixels is a few kB on disk and 400 M pixels decoded.
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageDecodeError) as caught:
        load_array(bomb, Preprocessing(32))
    assert caught.value.kind == "too_large"
    with pytest.raises(ImageDecodeError, match="over the limit"):
        load_array(encode(Image.new("RGB", (200, 100)), "PNG"), Preprocessing(32), max_pixels=10_000)

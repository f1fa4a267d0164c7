"""Demo data for `make demo` and the tests (the demo run itself is `animals10.cli.demo`).

`write_demo_data` draws a small synthetic photo set in the Animals-10 layout (Italian folder names):
each class has its own colour scheme and shape, with random placement, size, background and noise,
so that both models learn it within a few CPU epochs.
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from animals10.labels import ITALIAN_TO_ENGLISH

logger = logging.getLogger(__name__)

SHAPES = ("ellipse", "rectangle", "triangle", "stripes", "cross")


def draw_demo_photo(class_index: int, num_classes: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic photo of class `class_index`: its hue and shape, everything else random."""
    width, height = int(rng.integers(96, 200)), int(rng.integers(96, 200))
    hue = class_index / num_classes
    background = colorsys.hsv_to_rgb(
        (hue + 0.5 + rng.uniform(-0.05, 0.05)) % 1, rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.95)
    )
    foreground = colorsys.hsv_to_rgb((hue + rng.uniform(-0.03, 0.03)) % 1, rng.uniform(0.7, 1.0), rng.uniform(0.6, 1.0))
    image = Image.new("RGB", (width, height), tuple(int(255 * c) for c in background))
    draw = ImageDraw.Draw(image)
    size = rng.uniform(0.45, 0.8) * min(width, height)
    x0, y0 = rng.uniform(0, width - size), rng.uniform(0, height - size)
    box = (x0, y0, x0 + size, y0 + size)
    fill = tuple(int(255 * c) for c in foreground)
    shape = SHAPES[class_index % len(SHAPES)]
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    elif shape == "stripes":
        for k in range(0, int(size), max(4, int(size / 6))):
            draw.rectangle((x0, y0 + k, x0 + size, y0 + k + size / 12), fill=fill)
    else:
        draw.rectangle((x0 + size / 3, y0, x0 + 2 * size / 3, y0 + size), fill=fill)
        draw.rectangle((x0, y0 + size / 3, x0 + size, y0 + 2 * size / 3), fill=fill)
    noise = rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))


def write_demo_data(root: str | Path, images_per_class: int = 30, seed: int = 0) -> Path:
    """Writes `<root>/<italian class>/<n>.jpg` for the ten Animals-10 classes; returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = sorted(ITALIAN_TO_ENGLISH)
    for index, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class):
            draw_demo_photo(index, len(folders), rng).save(root / folder / f"{folder}_{n:04d}.jpg", quality=90)
    logger.info("Wrote %d demo photos to %s", images_per_class * len(folders), root)
    return root

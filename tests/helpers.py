"""Helpers shared by the tests."""

import numpy as np
from PIL import Image


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (noise upsampled), so resizing and encoding see structure."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((max(height // 8, 1), max(width // 8, 1), 3)) * 255).astype("uint8"))
    return small.resize((width, height), Image.BICUBIC)


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, (a.size, b.size)
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())

"""Decoding client images defensively: sniffed formats, bombs, EXIF, odd modes, broken files; parsers fuzzed."""

import asyncio
import base64
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from server.fetch import FetchPolicy
from server.files import FileStore
from server.images import ImageInputError, ImageLoader, decode_image

LIMIT = 10_000_000


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None].repeat(width, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encode(gradient(), fmt), "test", LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM"])
def test_other_formats_are_refused_by_their_bytes(fmt: str) -> None:
    with pytest.raises(ImageInputError, match=f"is a {fmt} image"):
        decode_image(encode(gradient(), fmt), "test", LIMIT)


def test_gif_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, "gif", LIMIT).getpixel((4, 4)) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(gradient(40, 30), "JPEG", exif=exif.tobytes())
    assert decode_image(data, "photo", LIMIT).size == (30, 40)


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG"), "rgba", LIMIT).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert decode_image(encode(half, "PNG"), "rgba", LIMIT).getpixel((0, 0)) == (127, 127, 127)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0
    assert decode_image(encode(palette, "PNG", transparency=0), "palette", LIMIT).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_and_16_bit_become_8_bit_rgb() -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red
    assert decode_image(encode(cmyk, "JPEG"), "cmyk", LIMIT).getpixel((0, 0))[0] > 200
    deep = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    pixel = decode_image(encode(deep, "PNG"), "16-bit", LIMIT).getpixel((0, 0))
    assert pixel == (128, 128, 128)  # scaled, not clipped to 255


def test_decompression_bombs_are_refused_before_decoding() -> None:
    bomb = encode(Image.new("1", (4000, 3000)), "PNG")  # 12 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageInputError, match="4000x3000 pixels, more than the limit"):
        decode_image(bomb, "bomb", LIMIT)


def test_truncated_and_corrupt_files_are_refused() -> None:
    data = encode(gradient(200, 200), "PNG")
    for broken in (data[: len(data) // 2], b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, b"", b"GIF89a"):
        with pytest.raises(ImageInputError, match="not a readable image"):
            decode_image(broken, "broken", LIMIT)


def test_data_uris_must_be_base64(tmp_path) -> None:
    loader = ImageLoader(FileStore(tmp_path), FetchPolicy())
    good = "data:application/octet-stream;base64," + base64.b64encode(encode(gradient(), "PNG")).decode()
    assert asyncio.run(loader.load(good, set())).size == (40, 30)
    for bad, message in (("data:image/png,rawbytes", "base64-encoded"), ("data:image/png;base64,@@@", "not valid")):
        with pytest.raises(ImageInputError, match=message):
            asyncio.run(loader.load(bad, set()))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_but_a_clear_error(data: bytes) -> None:
    try:
        image = decode_image(data, "fuzz", LIMIT)
    except ImageInputError as err:
        assert "fuzz" in str(err)
    else:
        assert image.mode == "RGB"

"""Input images from what clients send: http(s) URLs (through the guarded fetch), data URIs, or URLs of files
uploaded to us; decoded defensively into 8-bit RGB.

The type is sniffed from the bytes (a data URI's or server's MIME type is not trusted); the pixel count is
checked before decoding (decompression bombs); EXIF orientation is applied; palette, alpha, CMYK and 16-bit
images become plain RGB (transparency composited onto white); truncated or corrupt files are refused.
"""

import asyncio
import base64
import binascii
import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.fetch import FetchError, FetchPolicy, fetch, short
from server.files import FileStore

FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "GIF"}  # MPO: multi-picture JPEG, as phone cameras write
OUR_FILE_PATH = re.compile(r"^(?:/replicate)?/v1/files/([A-Za-z0-9_-]{22})(?:/content)?$")
DATA_URI = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),(.*)$", re.S)


class ImageInputError(ValueError):
    """The input is not a usable image; the message says why and names the URL."""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, whatever the mode: 16-bit scaled (not clipped), transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / top * 255).round().clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            raise ImageInputError(f"{what} is a {image.format} image; send png, jpeg, webp or gif")
        width, height = image.size
        if width * height > max_pixels:
            raise ImageInputError(f"{what} has {width}x{height} pixels, more than the limit of {max_pixels}")
        image.seek(0)  # the first frame of an animation
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageInputError(f"{what} is not a readable image ({err})") from None


@dataclass
class ImageLoader:
    files: FileStore
    policy: FetchPolicy
    max_pixels: int = 50_000_000

    async def load(self, value: str, our_hosts: set[str]) -> Image.Image:
        """One image input; `our_hosts` are the host:port names this server answers on (for uploaded files)."""
        if value.startswith("data:"):
            return self.decode(self._data_uri(value), "the data URI")
        parts = urlsplit(value)
        ours = OUR_FILE_PATH.match(parts.path)
        if ours and parts.netloc in our_hosts:
            found = self.files.upload(ours.group(1))
            if found is None:
                raise ImageInputError(f"{short(value)}: no such uploaded file")
            return self.decode(found[1].read_bytes(), short(value))
        try:
            data = await asyncio.to_thread(fetch, value, self.policy)
        except FetchError as err:
            raise ImageInputError(str(err)) from None
        return self.decode(data, short(value))

    def decode(self, data: bytes, what: str) -> Image.Image:
        return decode_image(data, what, self.max_pixels)

    @staticmethod
    def _data_uri(value: str) -> bytes:
        match = DATA_URI.match(value)
        if not match or ";base64" not in match.group(2):
            raise ImageInputError("a data URI image must be base64-encoded (data:image/png;base64,...)")
        try:
            return base64.b64decode(match.group(3), validate=True)
        except (binascii.Error, ValueError):
            raise ImageInputError("the data URI is not valid base64") from None

"""Input images from what clients send: http(s) URLs, data URIs, or URLs of files uploaded to us.

The type is sniffed from the bytes (a data URI's or server's MIME type is not trusted).
"""

import base64
import binascii
import io
import re
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from server.files import FileStore

MAX_IMAGE_BYTES = 50 * 1024 * 1024
OUR_FILE_PATH = re.compile(r"^(?:/replicate)?/v1/files/([A-Za-z0-9_-]{22})(?:/content)?$")
DATA_URI = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),(.*)$", re.S)


class ImageInputError(ValueError):
    """The input is not a usable image; the message says why and names the URL."""


def decode_image(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageInputError(f"{what} is not a readable image ({err})") from None
    return image.convert("RGB")


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:77] + "..."


async def load_image(value: str, files: FileStore, our_hosts: set[str]) -> Image.Image:
    """Fetch and decode one image input; `our_hosts` are the host:port names this server answers on."""
    if value.startswith("data:"):
        match = DATA_URI.match(value)
        if not match or ";base64" not in match.group(2):
            raise ImageInputError("a data URI image must be base64-encoded (data:image/png;base64,...)")
        try:
            data = base64.b64decode(match.group(3), validate=False)
        except (binascii.Error, ValueError):
            raise ImageInputError("the data URI is not valid base64") from None
        return decode_image(data, "the data URI")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImageInputError(f"{_short(value)!r} is not an http(s) URL or a data URI")
    ours = OUR_FILE_PATH.match(parts.path)
    if ours and parts.netloc in our_hosts:
        found = files.upload(ours.group(1))
        if found is None:
            raise ImageInputError(f"{_short(value)}: no such uploaded file")
        return decode_image(found[1].read_bytes(), _short(value))
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5), follow_redirects=True,
                                     max_redirects=5) as client:
            async with client.stream("GET", value) as response:
                if response.status_code != 200:
                    raise ImageInputError(f"{_short(value)}: the server answered HTTP {response.status_code}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise ImageInputError(f"{_short(value)}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
    except httpx.HTTPError as err:
        raise ImageInputError(f"{_short(value)}: cannot fetch ({type(err).__name__}: {err})") from None
    return decode_image(bytes(data), _short(value))

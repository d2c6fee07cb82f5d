"""Files under the data dir: generated outputs (public, unguessable URLs) and client uploads (`/v1/files`).

Outputs are written to a temporary name and renamed into place, so a file either exists whole or not at all.
"""

import hashlib
import io
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from server.store import now

OUTPUT_FORMATS = {"webp": ("WEBP", "image/webp"), "jpg": ("JPEG", "image/jpeg"), "jpeg": ("JPEG", "image/jpeg"),
                  "png": ("PNG", "image/png")}
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22}$")  # 128 random bits, URL-safe base64
OUTPUT_NAME = re.compile(r"^output\.(webp|jpg|jpeg|png)$")


def new_token() -> str:
    return secrets.token_urlsafe(16)


def encode_image(image: Image.Image, output_format: str, quality: int = 80) -> bytes:
    pil_format, _ = OUTPUT_FORMATS[output_format]
    buffer = io.BytesIO()
    options = {"quality": quality} if pil_format in ("WEBP", "JPEG") else {}
    image.convert("RGB").save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Upload:
    id: str
    name: str
    content_type: str
    size: int
    metadata: dict
    etag: str  # sha256 of the content
    created_at: str


class FileStore:
    def __init__(self, root: Path):
        self.root = root

    def save_output(self, image: Image.Image, output_format: str, quality: int = 80) -> str:
        """Write the image; returns its path relative to the data dir, `files/<token>/output.<ext>`."""
        relative = f"files/{new_token()}/output.{output_format}"
        atomic_write(self.root / relative, encode_image(image, output_format, quality))
        return relative

    def output_path(self, token: str, name: str) -> Path | None:
        """The output file for a URL's token and name, or None: only names we generate are ever looked up."""
        if not TOKEN.match(token) or not OUTPUT_NAME.match(name):
            return None
        path = self.root / "files" / token / name
        return path if path.is_file() else None

    def save_upload(self, content: bytes, name: str, content_type: str, metadata: dict) -> Upload:
        upload = Upload(new_token(), Path(name).name or "file", content_type, len(content), metadata,
                        hashlib.sha256(content).hexdigest(), now())
        folder = self.root / "uploads" / upload.id
        atomic_write(folder / "content", content)
        atomic_write(folder / "meta.json", json.dumps(asdict(upload)).encode())
        return upload

    def upload(self, upload_id: str) -> tuple[Upload, Path] | None:
        if not TOKEN.match(upload_id):
            return None
        folder = self.root / "uploads" / upload_id
        if not (folder / "meta.json").is_file():
            return None
        return Upload(**json.loads((folder / "meta.json").read_text())), folder / "content"

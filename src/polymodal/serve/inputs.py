"""What a request brings, made ready for a model: images from uploads, base64 or data URLs,
and the HTTP error each bad input gets (`HTTPProblem`), in one place.

| bad input                                   | status |
|---------------------------------------------|--------|
| a body over `--max-upload-mb`               | 413 (`BodyLimit`, before it is read)   |
| bytes that are not an image PIL can read    | 415    |
| a corrupt / truncated image, over the pixel limit (a decompression bomb), bad base64, a URL | 422 |
"""
from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from polymodal.data.images import load_image
from polymodal.errors import DataError


class HTTPProblem(Exception):
    """An error that becomes an HTTP response: `{"error": {"message", "type", "code"}}`.

    Args:
        status: the HTTP status. message: what was wrong and what to do.
        kind: the `type` of OpenAI-style error bodies ("invalid_request_error", "server_error", ...).
        headers: extra response headers (`Retry-After`).
    """

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)


def image_bytes(value: str, name: str) -> bytes:
    """The bytes of an image sent as text: a `data:image/...;base64,` URL or plain base64.

    Raises:
        HTTPProblem(422): an http(s) URL (nothing is fetched: the server is offline), bad base64.
    """
    if not isinstance(value, str) or not value.strip():
        raise HTTPProblem(422, f"{name}: empty; send the image as base64 or a data URL (data:image/png;base64,...)")
    value = value.strip()
    if value.startswith(("http://", "https://", "file:")):
        raise HTTPProblem(422, f"{name}: a URL ({value[:60]}); the server fetches nothing; send the image itself "
                               "as a data URL (data:image/png;base64,...) or a multipart upload")
    if value.startswith("data:"):
        m = _DATA_URL.match(value)
        if not m:
            raise HTTPProblem(422, f"{name}: a data URL that is not base64 (want data:image/png;base64,...)")
        value = m.group("data")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPProblem(422, f"{name}: not valid base64; send the image's bytes base64-encoded "
                               "or as a data URL (data:image/png;base64,...)") from None


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An RGB PIL image from uploaded bytes (`polymodal.data.images.load_image`), or HTTPProblem:
    415 when the bytes are no image format at all, 422 when they are one that cannot be decoded
    (truncated, corrupt) or is over `max_pixels` (refused from its header, before decoding)."""
    if not data:
        raise HTTPProblem(422, f"{name}: empty upload; send an image file")
    try:
        Image.open(io.BytesIO(data))  # the header only: is it an image format at all?
    except UnidentifiedImageError:
        raise HTTPProblem(415, f"{name}: not an image PIL can read (send PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
    except Exception:  # noqa: BLE001  (a bomb or a bad header: load_image says which, below)
        pass
    try:
        return load_image(data, max_pixels=max_pixels)
    except DataError as exc:
        text = re.sub(r"^(bytes|bytearray): ", "", str(exc))
        raise HTTPProblem(422, f"{name}: {text}") from None

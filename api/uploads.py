"""Checking uploaded pictures: size, format, pixel count, and that they decode; stored as PNG."""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


class UploadError(ValueError):
    """A picture the service refuses; `status` is 413 for too many bytes, 422 for anything else."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def decode_base64(text: str, what: str, max_bytes: int) -> bytes:
    """Decode a base64 picture (a `data:image/...;base64,` prefix is allowed) without over-allocating."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    # 4 characters carry 3 bytes: refuse before decoding anything too big.
    if len(text) * 3 // 4 > max_bytes + 3:
        raise UploadError(f"{what} is larger than {max_bytes} bytes", status=413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UploadError(f"{what} is not valid base64: {exc}") from exc
    if len(data) > max_bytes:
        raise UploadError(f"{what} is larger than {max_bytes} bytes", status=413)
    return data


def to_png(data: bytes, what: str, max_bytes: int, max_pixels: int) -> bytes:
    """Check an uploaded picture and re-encode it as RGB PNG (CPU-bound: call it off the event loop)."""
    if len(data) > max_bytes:
        raise UploadError(f"{what} is larger than {max_bytes} bytes", status=413)
    if not data:
        raise UploadError(f"{what} is empty")
    try:
        # `formats` restricts which decoders Pillow may try; the header is read, pixels are not yet.
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(
                    f"{what} has {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
                )
            image.load()
            rgb = image.convert("RGB")
    except UploadError:
        raise
    except Image.DecompressionBombError as exc:
        raise UploadError(f"{what} refused as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadError(
            f"{what} is not a readable {'/'.join(ALLOWED_FORMATS)} picture ({type(exc).__name__}: {exc})"
        ) from exc
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def png_to_jpeg(png: bytes, quality: int = 92) -> bytes:
    """The original API answered JPEG; our stored pictures are PNG."""
    with Image.open(io.BytesIO(png), formats=("PNG",)) as image:
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()

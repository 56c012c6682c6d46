"""Image uploads: size-limited read, pixel-capped decode, EXIF orientation, PNG re-encode, store, record."""

from __future__ import annotations

import io
import logging
import re
from typing import BinaryIO

from atelier_contracts.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from atelier_contracts.keys import upload_key
from atelier_control.models import Artifact, new_id
from atelier_runtime.images import png_bytes
from atelier_runtime.storage import ArtifactStore
from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy.orm import Session

from .schemas import UploadView
from .views import artifact_url

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
CHUNK = 64 * 1024
FIELD = "file"
# what Pillow raises on bad pixel data besides OSError: zlib/struct errors surface as these
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)


def read_limited(stream: BinaryIO, max_bytes: int) -> bytes:
    """Read at most ``max_bytes``; one byte more is a 413, whatever Content-Length said."""
    buf = bytearray()
    while chunk := stream.read(CHUNK):
        buf += chunk
        if len(buf) > max_bytes:
            raise PayloadTooLarge(f"the file is larger than {max_bytes} bytes", field=FIELD)
    return bytes(buf)


def decode_image(data: bytes, *, max_pixels: int) -> tuple[Image.Image, str]:
    """Decode a PNG/JPEG/WebP under a pixel cap checked on the header, before any pixel is decoded."""
    if not data:
        raise UnsupportedMedia("the file is empty; send a PNG, JPEG or WebP image", field=FIELD)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels: {exc}", field=FIELD) from exc
    except UnidentifiedImageError as exc:
        if _looks_like_allowed_format(data):  # the right signature but no valid header: broken, not foreign
            raise InvalidInput("the image header is truncated or corrupt", field=FIELD) from exc
        raise UnsupportedMedia("the file is not a PNG, JPEG or WebP image", field=FIELD) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"the image header is corrupt: {exc}", field=FIELD) from exc
    fmt = image.format or "unknown"
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(f"the image has no pixels ({width}x{height})", field=FIELD)
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", field=FIELD,
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels: {exc}", field=FIELD) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"the image is truncated or corrupt: {exc}", field=FIELD) from exc
    return image, fmt


def _looks_like_allowed_format(data: bytes) -> bool:
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def normalize(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied), RGB or RGBA (alpha kept)."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - unreadable EXIF is metadata noise; the pixels are still good
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
        upright = image
    if upright.mode.startswith("I"):
        # 16-bit grayscale PNG: a plain convert clips every value above 255 to white; scale 0..65535 to 0..255
        upright = upright.convert("I").point(lambda v: v * (1 / 257) + 0.5).convert("L")
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in upright.info
    target = "RGBA" if has_alpha else "RGB"
    return upright if upright.mode == target else upright.convert(target)


def safe_name(filename: str | None) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", (filename or "").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    stem = stem.rsplit(".", 1)[0].strip("._")[:120]
    return f"{stem or 'upload'}.png"


def ingest_upload(session: Session, store: ArtifactStore, *, tenant_id: str, stream: BinaryIO,
                  filename: str | None, max_bytes: int, max_pixels: int) -> UploadView:
    """Check, normalise and store one uploaded image as an ``upload`` artifact; returns its view."""
    data = read_limited(stream, max_bytes)
    image, fmt = decode_image(data, max_pixels=max_pixels)
    try:
        upright = normalize(image)
        width, height = upright.size
        png = png_bytes(upright)
    finally:
        image.close()
    artifact_id = new_id("art")
    key = upload_key(tenant_id, artifact_id)
    stored = store.put(key, png, "image/png")
    artifact = Artifact(
        id=artifact_id, tenant_id=tenant_id, job_id=None, stage_id=None, kind="upload", name=safe_name(filename),
        key=key, content_type="image/png", size_bytes=stored.size_bytes, sha256=stored.sha256,
        width=width, height=height,
        meta={"source_format": fmt.lower(), "source_bytes": len(data), "filename": (filename or "")[:200]},
    )
    session.add(artifact)
    try:
        session.commit()
    except BaseException:
        session.rollback()
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - best effort; the original error matters more
            log.warning("could not delete orphaned upload %s", key)
        raise
    return UploadView(id=artifact_id, width=width, height=height, size_bytes=stored.size_bytes,
                      sha256=stored.sha256, url=artifact_url(artifact_id))

"""Uploads: limits, formats, decompression bombs, truncation, EXIF orientation, storage and content."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from typing import Any

import pytest
from api_testkit import UPLOAD_MAX_BYTES, TenantCtx, png_bytes
from atelier_control.models import Artifact
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker


def upload(client: TestClient, tenant: TenantCtx, data: bytes, name: str = "image.png",
           content_type: str = "image/png") -> Any:
    return client.post("/v1/uploads", files={"file": (name, data, content_type)}, headers=tenant.headers)


def count_artifacts(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(Artifact)) or 0


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of all-zero pixels: tiny on disk, huge once decoded (a decompression bomb)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def forged_ihdr(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's declared size (with a correct CRC) without touching its pixel data."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _chunk(b"IHDR", ihdr) + data[33:]


def assert_problem(r: Any, status: int, field: str = "file") -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = r.json()
    assert problem["status"] == status
    assert field in [e["field"] for e in problem.get("errors", [])], problem
    return problem


def test_png_upload_is_stored_under_the_contract_key(client: TestClient, tenant: TenantCtx, store: LocalStore,
                                                     factory: sessionmaker[Session]) -> None:
    r = upload(client, tenant, png_bytes((40, 30), "RGBA", (10, 20, 30, 128)), name="../../etc/Logo Final.png")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "upload" and body["content_type"] == "image/png"
    assert (body["width"], body["height"]) == (40, 30)
    key = f"tenants/{tenant.id}/uploads/{body['id']}.png"
    stored = store.get(key)
    assert hashlib.sha256(stored).hexdigest() == body["sha256"] and len(stored) == body["size_bytes"]
    with Image.open(io.BytesIO(stored)) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        assert im.getpixel((5, 5)) == (10, 20, 30, 128), "alpha must survive"
    with factory() as s:
        row = s.get(Artifact, body["id"])
        assert row is not None
        assert (row.kind, row.job_id, row.tenant_id, row.key) == ("upload", None, tenant.id, key)
        assert "/" not in row.name and row.name.endswith(".png")

    content = client.get(body["url"], headers=tenant.headers)
    assert content.status_code == 200
    assert content.content == stored
    assert content.headers["content-type"] == "image/png"
    assert content.headers["x-content-sha256"] == body["sha256"]
    assert content.headers["etag"] == f'"{body["sha256"]}"'
    again = client.get(body["url"], headers={**tenant.headers, "If-None-Match": content.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_exif_rotated_jpeg_is_stored_upright(client: TestClient, tenant: TenantCtx, store: LocalStore) -> None:
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    im.paste((0, 0, 255), (30, 0, 60, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif, quality=95)
    r = upload(client, tenant, buf.getvalue(), name="photo.jpg", content_type="image/jpeg")
    assert r.status_code == 201, r.text
    assert (r.json()["width"], r.json()["height"]) == (20, 60)
    with Image.open(io.BytesIO(store.get(f"tenants/{tenant.id}/uploads/{r.json()['id']}.png"))) as out:
        assert out.size == (20, 60) and out.mode == "RGB"
        top, bottom = out.getpixel((10, 5)), out.getpixel((10, 55))
        assert top[0] > 200 and top[2] < 60, "red (the old left half) must be on top after a 90° cw turn"
        assert bottom[2] > 200 and bottom[0] < 60
        assert "exif" not in out.info


def test_webp_is_accepted(client: TestClient, tenant: TenantCtx) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 128, 0)).save(buf, format="WEBP")
    r = upload(client, tenant, buf.getvalue(), name="x.webp", content_type="image/webp")
    assert r.status_code == 201 and r.json()["content_type"] == "image/png"


@pytest.mark.parametrize("data", [b"%PDF-1.7 not an image", b"", b"GIF89a" + b"\x00" * 64],
                         ids=["text", "empty", "gif"])
def test_non_images_are_415(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session],
                            data: bytes) -> None:
    if data.startswith(b"GIF"):
        buf = io.BytesIO()
        Image.new("P", (8, 8)).save(buf, format="GIF")
        data = buf.getvalue()
    assert_problem(upload(client, tenant, data, name="x.bin"), 415)
    assert count_artifacts(factory) == 0


def test_oversize_is_413(client: TestClient, tenant: TenantCtx, store: LocalStore,
                         factory: sessionmaker[Session]) -> None:
    # a file just over the limit: caught while reading the file itself
    r = upload(client, tenant, b"\x89PNG\r\n\x1a\n" + b"\x00" * UPLOAD_MAX_BYTES)
    assert_problem(r, 413)
    # far over: the body limit stops the transfer (a streamed body, so no Content-Length to trust)
    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body() -> Any:
        yield head
        for _ in range(16):
            yield b"\x00" * (256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/uploads", content=body(),
                    headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_problem(r, 413)
    assert count_artifacts(factory) == 0
    assert store.list(f"tenants/{tenant.id}/") == []


def test_decompression_bomb_is_rejected_before_decoding(client: TestClient, tenant: TenantCtx,
                                                        factory: sessionmaker[Session]) -> None:
    bomb = bilevel_png(20000, 20000)  # 400 Mpx in ~50 KB
    assert len(bomb) < UPLOAD_MAX_BYTES
    problem = assert_problem(upload(client, tenant, bomb), 413)
    assert "pixels" in problem["detail"]
    # under Pillow's own bomb threshold but over the configured cap (40 Mpx)
    assert_problem(upload(client, tenant, forged_ihdr(png_bytes((8, 8)), 7000, 7000)), 413)
    assert count_artifacts(factory) == 0


def test_pixel_cap_from_settings(settings: Any, engine: Any, store: Any, celery: Any, runtime: Any,
                                 tenant: TenantCtx) -> None:
    from atelier_api import create_app

    small = settings.model_copy(update={"upload_max_pixels": 1000})
    with TestClient(create_app(small, engine=engine, store=store, celery=celery, runtime=runtime)) as c:
        assert upload(c, tenant, png_bytes((31, 32))).status_code == 201
        problem = assert_problem(upload(c, tenant, png_bytes((40, 30))), 413)
        assert "1000" in problem["detail"]


def test_truncated_images_are_422(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    noisy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        noisy.save(buf, format=fmt)
        data = buf.getvalue()
        problem = assert_problem(upload(client, tenant, data[: len(data) // 2], name=f"t.{fmt.lower()}"), 422)
        assert "truncated" in problem["detail"] or "corrupt" in problem["detail"]
    assert count_artifacts(factory) == 0


def test_missing_file_field_is_422(client: TestClient, tenant: TenantCtx) -> None:
    r = client.post("/v1/uploads", files={"other": ("a.png", png_bytes(), "image/png")}, headers=tenant.headers)
    assert_problem(r, 422)


def test_upload_needs_a_key(client: TestClient, factory: sessionmaker[Session]) -> None:
    r = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert count_artifacts(factory) == 0

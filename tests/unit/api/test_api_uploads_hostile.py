"""Hostile uploads: every one is a clear 4xx (problem+json, nothing stored) or a correctly handled image.

Oversize (413), foreign formats (415), decompression bombs in pixels and in compressed metadata,
truncated and corrupt files, polyglots (PNG+ZIP, PNG+HTML, GIF/JS, script in metadata), EXIF
orientation in all eight values and in three containers, unusual pixel modes, hostile multipart.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from api_testkit import UPLOAD_MAX_BYTES, TenantCtx, png_bytes
from atelier_api.limits import MULTIPART_OVERHEAD
from atelier_control.models import Artifact
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker


def upload(client: TestClient, tenant: TenantCtx, data: bytes, name: str = "image.png",
           content_type: str = "image/png") -> Any:
    return client.post("/v1/uploads", files={"file": (name, data, content_type)}, headers=tenant.headers)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def stored(store: LocalStore, tenant: TenantCtx, r: Any) -> bytes:
    assert r.status_code == 201, r.text
    return store.get(f"tenants/{tenant.id}/uploads/{r.json()['id']}.png")


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        im.load()
        return im.copy()


@pytest.fixture
def refused(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session],
            store: LocalStore) -> Callable[..., dict[str, Any]]:
    """Upload, expect a problem+json ``status`` naming the file field, and check nothing was kept."""

    def check(data: bytes, status: int, name: str = "x.png", content_type: str = "image/png") -> dict[str, Any]:
        r = upload(client, tenant, data, name, content_type)
        assert r.status_code == status, (status, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        problem: dict[str, Any] = r.json()
        assert problem["status"] == status and problem.get("detail")
        assert "file" in [e["field"] for e in problem.get("errors", [])], problem
        with factory() as s:
            assert (s.scalar(select(func.count()).select_from(Artifact)) or 0) == 0
        assert store.list(f"tenants/{tenant.id}/") == []
        return problem

    return check


# ---------------------------------------------------------------- size


def test_declared_oversize_is_refused_before_the_body_is_read(client: TestClient, tenant: TenantCtx,
                                                              factory: sessionmaker[Session]) -> None:
    body = b"\x00" * (UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD + 1)
    r = upload(client, tenant, body)
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "request body of" in r.json()["detail"], "the Content-Length check answers, not the parser"
    assert r.headers.get("connection") == "close"
    with factory() as s:
        assert (s.scalar(select(func.count()).select_from(Artifact)) or 0) == 0


def test_exactly_the_limit_is_accepted(client: TestClient, tenant: TenantCtx) -> None:
    # a real PNG padded to the byte limit with a private ancillary chunk (ignored by decoders)
    base = png_bytes((4, 4))
    pad = UPLOAD_MAX_BYTES - len(base) - 12
    data = base[:-12] + chunk(b"atPd", b"\x00" * pad) + base[-12:]
    assert len(data) == UPLOAD_MAX_BYTES
    assert upload(client, tenant, data).status_code == 201
    assert upload(client, tenant, data + b"\x00").status_code == 413


# ---------------------------------------------------------------- foreign formats


def _gif() -> bytes:
    return encode(Image.new("P", (4, 4)), "GIF")


FOREIGN: dict[str, Callable[[], bytes]] = {
    "gif": _gif,
    "bmp": lambda: encode(Image.new("RGB", (4, 4)), "BMP"),
    "tiff": lambda: encode(Image.new("RGB", (4, 4)), "TIFF"),
    "ico": lambda: encode(Image.new("RGB", (16, 16)), "ICO"),
    "svg-with-script": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>',
    "html": lambda: b"<!doctype html><script>fetch('/v1/jobs')</script>",
    "pdf": lambda: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF",
    "zip": lambda: b"PK\x03\x04" + b"\x00" * 26 + b"PK\x05\x06" + b"\x00" * 18,
    "elf": lambda: b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
    "eps": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
    # a GIF header that is also valid JavaScript (GIF89a=...): a classic image/script polyglot
    "gif-js-polyglot": lambda: b"GIF89a/*\x0a\x00\x0a\x00\x00\x00\x00*/=1;alert(document.domain);//" + b"\x00" * 16,
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_formats_are_415_whatever_the_declared_type(refused: Callable[..., dict[str, Any]],
                                                             kind: str) -> None:
    problem = refused(FOREIGN[kind](), 415, name="photo.png", content_type="image/png")
    assert "PNG, JPEG or WebP" in problem["detail"]


def test_declared_type_and_name_do_not_decide(client: TestClient, tenant: TenantCtx, store: LocalStore) -> None:
    # the bytes decide: a real PNG named and typed as HTML is an image, stored as PNG under a .png name
    r = upload(client, tenant, png_bytes((6, 5)), name="index.html", content_type="text/html")
    assert r.status_code == 201 and (r.json()["width"], r.json()["height"]) == (6, 5)
    content = client.get(r.json()["url"], headers=tenant.headers)
    assert content.headers["content-type"] == "image/png"
    assert 'filename="index.png"' in content.headers["content-disposition"]
    assert decoded(stored(store, tenant, r)).size == (6, 5)


# ---------------------------------------------------------------- decompression bombs


def _forged_jpeg(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (8, 8), (10, 200, 10)), "JPEG")
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def _forged_webp(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "WEBP", lossless=False))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    struct.pack_into("<HH", data, 26, width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


@pytest.mark.parametrize("make", [lambda: _forged_jpeg(65000, 65000), lambda: _forged_webp(16383, 16383)],
                         ids=["jpeg-4-gigapixel", "webp-268-megapixel"])
def test_pixel_bombs_are_413_before_decoding(refused: Callable[..., dict[str, Any]], make: Callable[[], bytes]) -> None:
    data = make()
    assert len(data) < 2048
    assert "pixels" in refused(data, 413)["detail"]


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP", b"iTXt"])
def test_compressed_metadata_bombs_are_refused(refused: Callable[..., dict[str, Any]], kind: bytes) -> None:
    # 16 MiB of text behind ~16 KB of zlib: Pillow's text-chunk limit must stop it, as a 4xx
    bomb = zlib.compress(b"A" * (16 * 1024 * 1024), 9)
    payload = {b"zTXt": b"Comment\x00\x00", b"iCCP": b"icc\x00\x00", b"iTXt": b"Comment\x00\x01\x00\x00\x00"}[kind]
    base = png_bytes((4, 4))
    data = base[:33] + chunk(kind, payload + bomb) + base[33:]
    assert len(data) < UPLOAD_MAX_BYTES
    problem = refused(data, 422)
    assert "too large" in problem["detail"].lower()


# ---------------------------------------------------------------- truncated and corrupt


def _bad_ihdr_crc() -> bytes:
    data = bytearray(png_bytes((4, 4)))
    data[29] ^= 0xFF
    return bytes(data)


def _noisy(fmt: str) -> bytes:
    pixels = np.random.default_rng(8).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


TRUNCATED: dict[str, Callable[[], bytes]] = {
    "png-signature-only": lambda: png_bytes()[:8],
    "png-ihdr-only": lambda: png_bytes()[:33],
    "png-bad-ihdr-crc": _bad_ihdr_crc,
    "png-cut-in-idat": lambda: _noisy("PNG")[:6000],
    "jpeg-soi-only": lambda: b"\xff\xd8\xff\xe0",
    "jpeg-cut-in-scan": lambda: _noisy("JPEG")[:3000],
    "webp-cut": lambda: _noisy("WEBP")[:3000],
    "png-signature-then-html": lambda: b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>",
}


@pytest.mark.parametrize("kind", sorted(TRUNCATED))
def test_truncated_and_corrupt_images_are_422(refused: Callable[..., dict[str, Any]], kind: str) -> None:
    problem = refused(TRUNCATED[kind](), 422)
    assert "truncated" in problem["detail"] or "corrupt" in problem["detail"], problem["detail"]


# ---------------------------------------------------------------- polyglots


def _red_green() -> Image.Image:
    im = Image.new("RGB", (16, 8), (220, 20, 20))
    im.paste((20, 200, 20), (8, 0, 16, 8))
    return im


def _zip_of(name: str, data: bytes) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


POLYGLOTS: dict[str, Callable[[], bytes]] = {
    "png+zip": lambda: encode(_red_green(), "PNG") + _zip_of("payload.php", b"<?php system($_GET['c']); ?>"),
    "png+html": lambda: encode(_red_green(), "PNG") + b"<html><script>alert(document.cookie)</script></html>",
    "png-text-chunk-script": lambda: (lambda p: p[:33] + chunk(b"tEXt", b"Comment\x00<script>alert(1)</script>")
                                      + p[33:])(encode(_red_green(), "PNG")),
    "jpeg-comment-script": lambda: encode(_red_green(), "JPEG", quality=95,
                                          comment=b"<script>alert(1)</script><?php phpinfo(); ?>"),
    "jpeg-exif-script": lambda: encode(_red_green(), "JPEG", quality=95,
                                       exif=_exif(0x010E, "<script>alert(1)</script>")),
    "webp+html": lambda: encode(_red_green(), "WEBP", lossless=True) + b"<script>alert(1)</script>",
}


def _exif(tag: int, value: Any) -> Image.Exif:
    exif = Image.Exif()
    exif[tag] = value
    return exif


@pytest.mark.parametrize("kind", sorted(POLYGLOTS))
def test_polyglots_are_reencoded_to_a_clean_png(client: TestClient, tenant: TenantCtx, store: LocalStore,
                                                kind: str) -> None:
    data = POLYGLOTS[kind]()
    r = upload(client, tenant, data, name="ad.png")
    out = stored(store, tenant, r)
    assert out != data
    for needle in (b"<script", b"<?php", b"PK\x03\x04", b"<html", b"alert("):
        assert needle not in out, f"{needle!r} survived in the stored file"
    image = decoded(out)
    assert image.size == (16, 8) and image.mode == "RGB"
    left, right = image.getpixel((2, 4)), image.getpixel((13, 4))
    assert left[0] > 180 and left[1] < 70 and right[1] > 160 and right[0] < 70, (left, right)
    assert not image.info.get("exif") and "Comment" not in image.info and "comment" not in image.info
    # and what is served says exactly what it is, and cannot be sniffed or run as a page
    content = client.get(r.json()["url"], headers=tenant.headers)
    assert content.content == out and content.headers["content-type"] == "image/png"
    assert content.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in content.headers["content-security-policy"]


# ---------------------------------------------------------------- EXIF orientation

# what each EXIF orientation asks a viewer to do to the stored pixels (EXIF 2.3, tag 0x0112), written
# here with numpy rather than taken from Pillow, so the test checks Pillow's use and not itself
DISPLAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: np.fliplr,                                    # mirrored horizontally
    3: lambda a: np.rot90(a, 2),                     # rotated 180
    4: np.flipud,                                    # mirrored vertically
    5: lambda a: np.transpose(a, (1, 0, 2)),         # mirrored horizontally, then rotated 270 cw
    6: lambda a: np.rot90(a, -1),                    # rotated 90 cw
    7: lambda a: np.rot90(np.fliplr(a), -1),         # mirrored horizontally, then rotated 90 cw
    8: lambda a: np.rot90(a, 1),                     # rotated 90 ccw
}
STORE_FOR: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
    5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, 1), 7: lambda a: np.rot90(np.fliplr(a), -1),
    8: lambda a: np.rot90(a, -1),
}
COLORS = np.array([[(230, 20, 20), (20, 220, 20), (20, 20, 230)],
                   [(230, 230, 20), (230, 20, 230), (20, 230, 230)]], dtype=np.uint8)


def upright_reference() -> np.ndarray:
    """A 3x2 grid of 8-px colour blocks (24x16): every flip and turn of it is distinguishable."""
    return np.kron(COLORS, np.ones((8, 8, 1), dtype=np.uint8))


def block_colors(image: Image.Image) -> np.ndarray:
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    return a[4::8, 4::8]


def test_orientation_table_is_consistent() -> None:
    ref = upright_reference()
    for o in DISPLAY:
        assert np.array_equal(DISPLAY[o](STORE_FOR[o](ref)), ref), o
    assert len({DISPLAY[o](ref).tobytes() for o in DISPLAY}) == 8


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_stored_upright(client: TestClient, tenant: TenantCtx, store: LocalStore,
                                                  fmt: str, orientation: int) -> None:
    ref = upright_reference()
    raw = Image.fromarray(np.ascontiguousarray(STORE_FOR[orientation](ref)))
    options: dict[str, Any] = {"exif": _exif(0x0112, orientation)}
    options.update({"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {}))
    r = upload(client, tenant, encode(raw, fmt, **options), name=f"o{orientation}.{fmt.lower()}",
               content_type=f"image/{fmt.lower()}")
    image = decoded(stored(store, tenant, r))
    assert image.size == (24, 16) and (r.json()["width"], r.json()["height"]) == (24, 16)
    got, want = block_colors(image), block_colors(Image.fromarray(ref))
    assert np.abs(got - want).max() <= 12, f"orientation {orientation} ({fmt}) not applied:\n{got}"
    assert not image.info.get("exif"), "the orientation tag must not be applied a second time by a viewer"


@pytest.mark.parametrize("exif", [
    _exif(0x0112, 0), _exif(0x0112, 9), _exif(0x0112, 65535),
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", b"Exif\x00\x00garbage",
], ids=["orientation-0", "orientation-9", "orientation-65535", "truncated-ifd", "garbage"])
def test_odd_or_broken_exif_keeps_the_pixels(client: TestClient, tenant: TenantCtx, store: LocalStore,
                                             exif: Any) -> None:
    raw = Image.fromarray(upright_reference())
    r = upload(client, tenant, encode(raw, "JPEG", quality=95, exif=exif), name="odd.jpg", content_type="image/jpeg")
    image = decoded(stored(store, tenant, r))
    assert image.size == (24, 16)
    assert np.abs(block_colors(image) - block_colors(raw)).max() <= 12


# ---------------------------------------------------------------- unusual pixel modes


def test_16_bit_grayscale_is_scaled_not_clipped(client: TestClient, tenant: TenantCtx, store: LocalStore) -> None:
    values = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63000 of 65535
    r = upload(client, tenant, encode(Image.fromarray(values), "PNG"), name="scan16.png")
    image = decoded(stored(store, tenant, r))
    assert image.mode == "RGB"
    got = np.asarray(image)[..., 0].astype(int)
    assert np.abs(got - np.round(values / 257)).max() <= 1, "16-bit values must map to 0..255, not clip to white"


def test_cmyk_jpeg_palette_transparency_and_16_bit_alpha(client: TestClient, tenant: TenantCtx,
                                                         store: LocalStore) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    red = decoded(stored(store, tenant, upload(client, tenant, encode(cmyk, "JPEG", quality=95), "c.jpg",
                                               "image/jpeg")))
    assert red.mode == "RGB" and red.getpixel((4, 4))[0] > 200 and red.getpixel((4, 4))[1] < 60

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(0, (0, 0, 4, 8))
    out = decoded(stored(store, tenant, upload(client, tenant, encode(palette, "PNG", transparency=0), "p.png")))
    assert out.mode == "RGBA" and out.getpixel((1, 1))[3] == 0 and out.getpixel((6, 6)) == (255, 0, 0, 255)

    raw = b"".join(b"\x00" + struct.pack(">16H", *([40000, 30000] * 8)) for _ in range(8))  # 16-bit gray+alpha
    la16 = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = decoded(stored(store, tenant, upload(client, tenant, la16, "la16.png")))
    assert out.mode == "RGBA" and out.getpixel((3, 3)) == (156, 156, 156, 117)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animations_keep_their_first_frame_only(client: TestClient, tenant: TenantCtx, store: LocalStore,
                                                fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    out = stored(store, tenant, upload(client, tenant, data, f"anim.{fmt.lower()}", f"image/{fmt.lower()}"))
    assert b"acTL" not in out, "stored as a still PNG"
    image = decoded(out)
    assert getattr(image, "n_frames", 1) == 1 and image.getpixel((4, 4))[0] > 200


# ---------------------------------------------------------------- hostile multipart


def test_broken_multipart_is_a_4xx(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    cases = {
        "no boundary": (b"abc", "multipart/form-data"),
        "garbage": (b"--x\r\ngarbage without headers", "multipart/form-data; boundary=x"),
        "unterminated": (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG',
                         "multipart/form-data; boundary=x"),
        "json instead": (b'{"file": "aGVsbG8="}', "application/json"),
        "urlencoded": (b"file=%89PNG", "application/x-www-form-urlencoded"),
    }
    for what, (body, content_type) in cases.items():
        r = client.post("/v1/uploads", content=body, headers={**tenant.headers, "Content-Type": content_type})
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), what
    with factory() as s:
        assert (s.scalar(select(func.count()).select_from(Artifact)) or 0) == 0


@pytest.mark.parametrize("name", [
    "x\r\nSet-Cookie: session=evil.png", "../../../../etc/passwd", "\u202egnp.exe", "a" * 900 + ".png",
    "\x00\x01\x02.png", "名前.png", "",
], ids=["crlf", "traversal", "rtl-override", "long", "control", "unicode", "empty"])
def test_hostile_filenames_never_reach_a_header_or_a_key(client: TestClient, tenant: TenantCtx,
                                                         store: LocalStore, name: str) -> None:
    r = upload(client, tenant, png_bytes((3, 3)), name=name)
    if r.status_code != 201:  # the multipart parser may refuse a header line it cannot read: a 4xx, never a 5xx
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/problem+json")
        return
    body = r.json()
    assert store.list(f"tenants/{tenant.id}/uploads/") == [f"tenants/{tenant.id}/uploads/{body['id']}.png"]
    disposition = client.get(body["url"], headers=tenant.headers).headers["content-disposition"]
    assert "\r" not in disposition and "\n" not in disposition and "\u202e" not in disposition
    plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert plain.endswith(".png") and "/" not in plain and ".." not in plain.replace(".png", "")
    assert len(plain) <= 125 and all(c.isascii() and c.isprintable() for c in plain)

"""Verify a file found in the wild: is it ours (invisible watermark), and what do its content credentials say?

Used by ``POST /v1/verify`` and ``atelier verify IMAGE``. The steps:

1. Read the C2PA manifest (``manifests.read_manifest``): trusted / untrusted / invalid / absent, and
   what the Atelier assertion says (job, plan, model, seed, time, watermark payload and embedding size).
2. Read the watermark blind (Reed-Solomon) at the embedding size the manifest records (a copy that was
   resized is scaled back, a centre crop is put back in place). If that finds nothing and a caller's
   tenant is known, test for the tenant's own jobs' payloads (most recent first, the false-positive
   rate shared among them), and at the sizes of the tenant's delivered assets of the same shape.
3. Map the payload to a job only within the caller's tenant: a mark of another tenant reads as
   "not a job of yours", never as that job.

The claimed embedding size decides how much work a read costs (the image is resized to it), and anyone can
sign a manifest, so it is taken with care (the report's ``watermark.claimed_size`` says what became of it):

* only a **trusted** manifest's size is read at. An untrusted, invalid (changed after signing) or unreadable
  manifest's size is ignored, and ``claimed_size.reason`` says so: the read goes on as if no size were
  claimed (as is, then the tenant's asset sizes);
* in a trusted manifest, a width or height that is not a positive whole number is a 422 naming ``file``;
* a size more than ``MAX_CLAIM_SCALE`` (4) times the image on a side, or over the pixel cap
  (``settings.upload_max_pixels``), is not read at either (``used: false`` and why). It is not clamped: a
  mark reads only at the size it was embedded at, so a clamped size would cost work and could find nothing.
  The tenant's asset sizes are held to the same bounds.

So one verify tries at most 1 + ``MAX_CANDIDATE_SIZES`` sizes, twice (blind, then the tenant's jobs), each
with the few geometries and the chroma gains ``watermark.detect`` tries, on at most 16x the image's pixels
and never more than the pixel cap: the work is set by the image, not by what its manifest claims.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

from atelier_contracts.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from atelier_runtime.settings import Settings
from PIL import Image, UnidentifiedImageError

from . import manifests
from . import watermark as wm

# A claimed (or recorded) embedding size is read at only up to this many times each side of the image, and
# within the pixel cap (see the module docstring); at most this many of the tenant's asset sizes are tried.
MAX_CLAIM_SCALE = wm.MAX_READ_SCALE
MAX_CANDIDATE_SIZES = 4


class TenantRecords(Protocol):
    """What the caller's tenant knows that helps read a damaged mark (the API answers from its database)."""

    tenant_id: str

    def jobs(self) -> list[tuple[str, str]]:
        """The tenant's jobs as ``(job id, kind)``, most recent first."""
        ...

    def asset_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Sizes of the tenant's delivered assets with this aspect ratio, most common first."""
        ...

    def job(self, job_id: str) -> dict[str, Any] | None:
        """What the report shows of one of the tenant's jobs (None when it is not theirs)."""
        ...


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise UnsupportedMedia("the file is empty; send an image", field="file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise UnsupportedMedia("the file is not an image Pillow can read (PNG, JPEG, WebP, ...)", field="file") from exc
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels: {exc}", field="file") from exc
    if img.width * img.height > max_pixels:
        raise PayloadTooLarge(f"the image is {img.width}x{img.height}; the limit is {max_pixels} pixels", field="file")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"the image is truncated or corrupt: {exc}", field="file") from exc
    return img.convert("RGB")


def _mime(data: bytes) -> str | None:
    for magic, mime in ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"RIFF", "image/webp"),
                        (b"%PDF", "application/pdf")):
        if data.startswith(magic):
            return mime
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _too_big(size: tuple[int, int], image: tuple[int, int], max_pixels: int) -> str | None:
    """Why ``size`` is not read at for an image of size ``image`` (None when it may be)."""
    if size[0] > MAX_CLAIM_SCALE * image[0] or size[1] > MAX_CLAIM_SCALE * image[1]:
        return (f"{size[0]}x{size[1]} is more than {MAX_CLAIM_SCALE}x the image's {image[0]}x{image[1]} on a side; "
                "not read at that size")
    if size[0] * size[1] > max_pixels:
        return f"{size[0]}x{size[1]} is over the {max_pixels}-pixel limit; not read at that size"
    return None


def _claim(state: str, claimed: Any, image: tuple[int, int],
           max_pixels: int) -> tuple[tuple[int, int] | None, dict[str, Any] | None]:
    """The embedding size to read at from the manifest's watermark claim, and what the report says of it."""
    if state == "absent" or not isinstance(claimed, dict) or ("width" not in claimed and "height" not in claimed):
        return None, None
    w, h = claimed.get("width"), claimed.get("height")
    info: dict[str, Any] = {"width": w if _whole(w) else None, "height": h if _whole(h) else None,
                            "used": False, "reason": None}
    if state != "trusted":
        what = ("its signer is not trusted here" if state == "untrusted"
                else "it does not verify (the file changed after signing, or the manifest is broken)")
        info["reason"] = (f"the manifest is {state}: {what}, so its claimed size is not read at (else any file "
                          "could choose how much work its read costs)")
        return None, info
    for name, value in (("width", w), ("height", h)):
        if not _whole(value):
            raise InvalidInput(f"the file's C2PA manifest ({manifests.ATELIER_ASSERTION}) claims watermark.{name} = "
                               f"{str(value)[:40]!r}; a watermark size must be a positive whole number of pixels",
                               field="file")
    why = _too_big((w, h), image, max_pixels)
    if why is not None:
        info["reason"] = why
        return None, info
    info["used"] = True
    return (w, h), info


def verify_image(data: bytes, *, settings: Settings, tenant: TenantRecords | None = None,
                 max_pixels: int | None = None) -> dict[str, Any]:
    """The verification report of one file (see the module docstring); ``tenant``: the caller's, when known."""
    tenant_id = tenant.tenant_id if tenant is not None else None
    cap = max_pixels or settings.upload_max_pixels
    image = _open(data, cap)
    report = manifests.read_manifest(data, _mime(data), anchors=manifests.trust_anchors(settings))
    c2pa = report.as_dict()
    claimed = c2pa.get("watermark") if report.state != "absent" else None
    claimed_size, claim_info = _claim(report.state, claimed, image.size, cap)
    fpr = settings.watermark_fpr
    tries: list[tuple[int, int] | None] = [claimed_size] if claimed_size else [None]
    jobs: list[tuple[str, str]] = []
    if tenant is not None:
        jobs = tenant.jobs()
        if claimed_size is None:
            sizes = [(int(w), int(h)) for w, h in tenant.asset_sizes(image.size)]
            tries += [s for s in sizes if s[0] > 0 and s[1] > 0 and _too_big(s, image.size, cap) is None
                      ][:MAX_CANDIDATE_SIZES]
    share = fpr / len(tries)
    source = "blind"
    found = None
    for size in tries:
        det = wm.detect(image, expected_size=size, fpr=share)
        if found is None or det.detected:
            found = det
        if det.detected:
            break
    assert found is not None
    if not found.detected and jobs:
        # the tenant's own jobs as candidates: a damaged mark that no longer decodes may still match one
        payloads = [wm.payload_for(tenant_id or "", jid) for jid, _ in jobs]
        best = None
        for size in tries:
            det = wm.detect(image, expected_size=size, candidates=payloads, fpr=share)
            if best is None or det.matched_bits > best.matched_bits:
                best = det
            if det.detected:
                break
        if best is not None and best.detected:
            found, source = best, "tenant jobs"
    mark = found.as_dict()
    mark.update({"source": source, "expected_size": list(found_size) if (found_size := _size_of(found, tries)) else None,
                 "stated_fpr": fpr})
    job_view = None
    ownership = None
    if found.detected and found.reference is not None:
        ref = found.reference
        if tenant_id is None:
            ownership = "unknown (no tenant)"
        elif ref[:2] != wm.tenant_ref(tenant_id):
            ownership = "another tenant"
        else:
            match = next((j for j in jobs if wm.job_ref(j[0]) == ref[2:]), None)
            ownership = "yours" if match else "your tenant, unknown job"
            if match is not None and tenant is not None:
                job_view = tenant.job(match[0])
    mark["ownership"] = ownership
    mark["claimed_size"] = claim_info
    consistent = None
    if found.detected and isinstance(claimed, dict) and claimed.get("payload_hex"):
        consistent = found.reference is not None and found.reference.hex() == claimed["payload_hex"]
    return {
        "image": {"width": image.width, "height": image.height, "format": _mime(data), "bytes": len(data)},
        "watermark": mark, "c2pa": c2pa, "job": job_view, "watermark_matches_manifest": consistent,
        "verdict": _verdict(found.detected, report.state, consistent),
    }


def _size_of(found: wm.Detection, tries: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    for size in tries:
        if size is not None and f"->{size[0]}x{size[1]}" in found.geometry or (
                size is not None and f"of {size[0]}x{size[1]}" in found.geometry):
            return size
    return None


def _verdict(marked: bool, state: str, consistent: bool | None) -> str:
    if marked and state == "trusted" and consistent is not False:
        return "made by Atelier: watermark found and content credentials trusted"
    if marked and state in ("trusted", "untrusted"):
        return "watermark found; content credentials valid but not from a trusted signer"
    if marked and state == "invalid":
        return "watermark found; content credentials do not verify (the file changed after signing)"
    if marked:
        return "watermark found; no content credentials (stripped or re-encoded)"
    if state == "trusted":
        return "content credentials trusted, but no watermark found"
    if state == "invalid":
        return "no watermark found; content credentials do not verify"
    return "no Atelier watermark found" + ("" if state == "absent" else f"; content credentials {state}")

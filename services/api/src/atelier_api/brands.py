"""Brand kits (the service behind ``/v1/brands``) and their use at job submission.

A kit holds a palette, a font (an uploaded TTF/OTF, checked with fontTools and stored in the artifact
store), a logo (an upload id), a tone and the words never to use. A campaign names it with
``spec.brand_id``: at submission the kit's fields fill ``spec.brand`` (fields the spec sets itself win),
so the stored job is self-contained and later kit edits do not change it; a tagline or CTA containing a
banned word is a 422 naming the field.
"""

from __future__ import annotations

import io
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any

from atelier_contracts.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMedia
from atelier_contracts.keys import font_key
from atelier_contracts.specs import HEX_COLOR, CampaignSpec, JobRequest
from atelier_control.models import Artifact, BrandKit, new_id
from atelier_runtime.storage import ArtifactStore
from fontTools.ttLib import TTFont
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .problems import FieldErrors
from .schemas import FieldError
from .views import as_utc

MAX_FONT_BYTES = 15 * 1024 * 1024
FONT_FIELD = "file"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Word = Annotated[str, StringConstraints(min_length=1, max_length=60, strip_whitespace=True)]
Family = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class BrandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name
    palette: list[HEX_COLOR] = Field(min_length=1, max_length=8)
    font_family: Family | None = Field(default=None, description="An installed family (e.g. NotoSerif); an uploaded "
                                                                 "font sets it too.")
    logo: Ref | None = Field(default=None, description="Upload id (POST /v1/uploads) of the logo.")
    tone: Annotated[str, StringConstraints(max_length=200, strip_whitespace=True)] | None = None
    banned_words: list[Word] = Field(default_factory=list, max_length=200)

    @field_validator("banned_words")
    @classmethod
    def _dedupe(cls, words: list[str]) -> list[str]:
        return list(dict.fromkeys(words))


class BrandUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name | None = None
    palette: list[HEX_COLOR] | None = Field(default=None, min_length=1, max_length=8)
    font_family: Family | None = None
    logo: Ref | None = None
    tone: Annotated[str, StringConstraints(max_length=200, strip_whitespace=True)] | None = None
    banned_words: list[Word] | None = Field(default=None, max_length=200)


class BrandView(BaseModel):
    id: str
    name: str
    palette: list[str]
    font_family: str | None
    font_artifact_id: str | None = Field(description="Artifact id of the uploaded font (POST /v1/brands/{id}/font).")
    logo: str | None
    tone: str | None
    banned_words: list[str]
    created_at: datetime
    updated_at: datetime


class BrandList(BaseModel):
    items: list[BrandView]


def brand_view(b: BrandKit) -> BrandView:
    created, updated = as_utc(b.created_at), as_utc(b.updated_at)
    assert created is not None and updated is not None
    return BrandView(id=b.id, name=b.name, palette=list(b.palette or []), font_family=b.font_family,
                     font_artifact_id=b.font_artifact_id, logo=b.logo_artifact_id, tone=b.tone,
                     banned_words=list(b.banned_words or []), created_at=created, updated_at=updated)


def get_brand(session: Session, *, tenant_id: str, brand_id: str) -> BrandKit:
    b = session.scalar(select(BrandKit).where(BrandKit.id == brand_id, BrandKit.tenant_id == tenant_id))
    if b is None:
        raise NotFound(f"brand {brand_id} not found")
    return b


def _check_logo(session: Session, tenant_id: str, logo: str | None) -> None:
    if logo is None:
        return
    ok = session.scalar(select(Artifact.id).where(Artifact.id == logo, Artifact.tenant_id == tenant_id,
                                                  Artifact.kind == "upload"))
    if ok is None:
        raise InvalidInput(f"{logo!r} is not an upload of yours (POST /v1/uploads returns the id)", field="logo")


def _commit(session: Session) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict("a brand with this name already exists", field="name") from exc


def create(session: Session, *, tenant_id: str, body: BrandCreate) -> BrandView:
    _check_logo(session, tenant_id, body.logo)
    b = BrandKit(tenant_id=tenant_id, name=body.name, palette=[c.upper() for c in body.palette],
                 font_family=body.font_family, logo_artifact_id=body.logo, tone=body.tone,
                 banned_words=body.banned_words)
    session.add(b)
    _commit(session)
    return brand_view(b)


def list_brands(session: Session, *, tenant_id: str) -> BrandList:
    rows = session.scalars(select(BrandKit).where(BrandKit.tenant_id == tenant_id).order_by(BrandKit.name))
    return BrandList(items=[brand_view(b) for b in rows])


def update(session: Session, *, tenant_id: str, brand_id: str, body: BrandUpdate) -> BrandView:
    b = get_brand(session, tenant_id=tenant_id, brand_id=brand_id)
    fields = body.model_fields_set
    if "logo" in fields:
        _check_logo(session, tenant_id, body.logo)
        b.logo_artifact_id = body.logo
    if body.name is not None:
        b.name = body.name
    if body.palette is not None:
        b.palette = [c.upper() for c in body.palette]
    if "font_family" in fields:
        b.font_family = body.font_family
    if "tone" in fields:
        b.tone = body.tone
    if body.banned_words is not None:
        b.banned_words = list(dict.fromkeys(body.banned_words))
    _commit(session)
    return brand_view(b)


def delete(session: Session, store: ArtifactStore, *, tenant_id: str, brand_id: str) -> None:
    """Delete the kit; jobs that used it keep their resolved copy. Its font stays for those jobs' retries."""
    b = get_brand(session, tenant_id=tenant_id, brand_id=brand_id)
    session.delete(b)
    session.commit()


def _font_family(font: Any) -> str:
    """The font's typographic family name (name ID 16, else 1), as an identifier."""
    name = font["name"]
    raw = name.getDebugName(16) or name.getDebugName(1) or "BrandFont"
    ascii_name = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9._-]+", "", ascii_name)[:64] or "BrandFont"


def upload_font(session: Session, store: ArtifactStore, *, tenant_id: str, brand_id: str, data: bytes,
                filename: str | None) -> BrandView:
    """Check a TTF/OTF with fontTools, store it, and make it the kit's font."""
    b = get_brand(session, tenant_id=tenant_id, brand_id=brand_id)
    if len(data) > MAX_FONT_BYTES:
        raise PayloadTooLarge(f"the font is larger than {MAX_FONT_BYTES} bytes", field=FONT_FIELD)
    if data[:4] not in (b"\x00\x01\x00\x00", b"OTTO", b"true"):
        raise UnsupportedMedia("the file is not a TrueType (.ttf) or OpenType (.otf) font", field=FONT_FIELD)
    try:
        font = TTFont(io.BytesIO(data), lazy=False)
        cmap = font.getBestCmap() or {}
        family = _font_family(font)
        font.close()
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad upload
        raise InvalidInput(f"the font could not be read: {exc}", field=FONT_FIELD) from exc
    if not cmap:
        raise InvalidInput("the font has no character map", field=FONT_FIELD)
    artifact_id = new_id("art")
    key = font_key(tenant_id, artifact_id)
    stored = store.put(key, data, "font/otf" if data[:4] == b"OTTO" else "font/ttf")
    session.add(Artifact(id=artifact_id, tenant_id=tenant_id, job_id=None, stage_id=None, kind="font",
                         name=(filename or f"{family}.ttf")[:200], key=key, content_type=stored.content_type,
                         size_bytes=stored.size_bytes, sha256=stored.sha256,
                         meta={"family": family, "glyphs": len(cmap), "brand_id": brand_id}))
    b.font_artifact_id = artifact_id
    b.font_family = family
    session.commit()
    return brand_view(b)


# ---------------------------------------------------------------- at job submission


def apply_brand_kit(session: Session, *, tenant_id: str, request: JobRequest) -> JobRequest:
    """A campaign naming ``brand_id`` gets the kit's fields in ``spec.brand`` (the spec's own fields win)."""
    if request.kind != "campaign" or not isinstance(request.spec, dict) or not request.spec.get("brand_id"):
        return request
    brand_id = request.spec["brand_id"]
    kit = session.scalar(select(BrandKit).where(BrandKit.id == str(brand_id), BrandKit.tenant_id == tenant_id))
    if kit is None:
        raise FieldErrors([FieldError(field="spec.brand_id", message=f"{brand_id!r} is not a brand kit of yours "
                                                                    "(POST /v1/brands returns the id)")])
    resolved: dict[str, Any] = {"name": kit.name, "palette": list(kit.palette or [])}
    for key, value in (("font", kit.font_family), ("font_artifact", kit.font_artifact_id),
                       ("logo", kit.logo_artifact_id), ("tone", kit.tone)):
        if value:
            resolved[key] = value
    own = request.spec.get("brand")
    if isinstance(own, dict):
        resolved.update({k: v for k, v in own.items() if v is not None})
    return request.model_copy(update={"spec": {**request.spec, "brand": resolved}})  # external_id, metadata kept


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


def check_campaign(session: Session, *, tenant_id: str, spec: object) -> None:
    """422 for a font that is not one of the tenant's, and for every tagline (or the CTA) that contains
    one of the brand kit's banned words or phrases (each named by its field).

    An uploaded font is identified by its artifact id (``spec.brand.font_artifact``), which must be a font of
    this tenant's; ``spec.brand.font`` is not checked against it. The renderer never maps that family name to
    the upload (it fetches the artifact for the job under the job's tenant and draws with the file), so a
    name equal to an installed family ("NotoSans") shadows nothing for anyone and is accepted — the kit's own
    ``font_family`` comes from the font's name table, and uploading a real Noto or DejaVu file gives exactly
    such a name."""
    if not isinstance(spec, CampaignSpec):
        return
    if spec.brand.font_artifact and session.scalar(select(Artifact.id).where(
            Artifact.id == spec.brand.font_artifact, Artifact.tenant_id == tenant_id, Artifact.kind == "font")) is None:
        raise FieldErrors([FieldError(field="spec.brand.font_artifact", message=f"{spec.brand.font_artifact!r} is not "
                                      "a font of yours (POST /v1/brands/{id}/font uploads one)")])
    if not spec.brand_id:
        return
    kit = session.scalar(select(BrandKit).where(BrandKit.id == spec.brand_id, BrandKit.tenant_id == tenant_id))
    if kit is None or not kit.banned_words:
        return
    banned = [(w, _words(w)) for w in kit.banned_words]
    fields = [(f"spec.taglines.{i}", t) for i, t in enumerate(spec.taglines)]
    if spec.cta:
        fields.append(("spec.cta", spec.cta))
    errors = []
    for field, text in fields:
        words = _words(text)
        hits = [w for w, parts in banned if parts and any(words[i:i + len(parts)] == parts
                                                        for i in range(len(words) - len(parts) + 1))]
        if hits:
            errors.append(FieldError(field=field, message=f"uses words brand {kit.name!r} never uses: "
                                                          + ", ".join(repr(h) for h in hits)))
    if errors:
        raise FieldErrors(errors)

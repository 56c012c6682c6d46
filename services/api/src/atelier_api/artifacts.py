"""Artifact service functions: list a job's artifacts, read one artifact's bytes, serve them streamed.

Both download routes (``/v1/artifacts/{id}/content`` with an API key, ``/v1/assets/{id}`` with a signed URL) answer
through :func:`content_response`: the object is streamed from storage in chunks (never held whole), a single
``Range: bytes=...`` is answered 206, an unsatisfiable one 416, and several ranges at once get the whole object.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from atelier_contracts.errors import AtelierError, NotFound
from atelier_control.asset_urls import AssetLinks, verify
from atelier_control.jobs import get_job
from atelier_control.models import Artifact
from atelier_runtime.storage import ArtifactStore, inline_disposition
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response, StreamingResponse

from .schemas import ArtifactList
from .views import artifact_view

# ``session.info`` key of a () -> AssetLinks the request bound (routes.assets.bind_asset_links): artifact views
# listed on that session sign download URLs with it, without every caller passing settings and store along
LINKS_INFO = "atelier.asset_links"
_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Content:
    data: bytes
    content_type: str
    sha256: str
    name: str


@dataclass(frozen=True)
class ByteRange:
    """``start``..``end`` inclusive, as HTTP counts them."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class SignatureRejected(AtelierError):
    """An asset URL whose signature is wrong or expired (403, naming ``signature``)."""

    status = 403
    title = "Forbidden"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, field="signature")


class RangeNotSatisfiable(AtelierError):
    """A ``Range`` that selects no byte of the object (416, with ``Content-Range: bytes */size``)."""

    status = 416
    title = "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the range selects no byte of the {size}-byte object", field="Range")
        self.headers = {"Content-Range": f"bytes */{size}"}


def list_job_artifacts(session: Session, *, tenant_id: str, job_id: str, kind: str | None = None,
                       links: AssetLinks | None = None) -> ArtifactList:
    """The job's artifacts; with ``links`` (or links bound to the session, see ``LINKS_INFO``) each carries an
    expiring ``download_url``."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)  # 404 for unknown and other tenants' jobs
    stmt = select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.job_id == job_id)
    if kind is not None:
        stmt = stmt.where(Artifact.kind == kind)
    rows = session.scalars(stmt.order_by(Artifact.created_at, Artifact.id))
    bound: Callable[[], AssetLinks] | None = session.info.get(LINKS_INFO)
    if links is None and bound is not None:
        links = bound()
    now = time.time()  # one instant for the whole list
    return ArtifactList(items=[artifact_view(a, links, now=now) for a in rows])


def get_artifact(session: Session, *, tenant_id: str, artifact_id: str) -> Artifact:
    artifact = session.scalar(select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id))
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return artifact


def get_signed_artifact(session: Session, *, artifact_id: str, expires: int, signature: str, key: bytes,
                        now: float | None = None) -> Artifact:
    """The artifact an asset URL names: SignatureRejected when its signature is wrong or expired (checked before
    the lookup, so a URL tells nothing about ids), NotFound when the artifact is gone."""
    now = time.time() if now is None else now
    if not verify(artifact_id, expires, signature, key, now):
        expired = expires <= now
        raise SignatureRejected("the asset URL has expired: ask the API for a fresh one" if expired
                                else "the asset URL's signature does not match: use the URL exactly as given")
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return artifact


def read_content(store: ArtifactStore, artifact: Artifact) -> Content:
    """The stored bytes, whole (small objects only: thumbnails); the digest is of what is served."""
    data = store.get(artifact.key)
    return Content(data=data, content_type=artifact.content_type, sha256=hashlib.sha256(data).hexdigest(),
                   name=artifact.name)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    wanted = {t.strip() for t in if_none_match.split(",")} if if_none_match else set()
    return bool(wanted & {etag, f"W/{etag}", "*"})


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range, clipped to the object; None for no range, several
    ranges or one that does not parse (the whole object is sent); RangeNotSatisfiable when it selects no byte."""
    if not header:
        return None
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (p.strip() for p in spec.partition("-"))
    if not dash or (first and not _DIGITS.fullmatch(first)) or (last and not _DIGITS.fullmatch(last)):
        return None
    if not first:  # the last n bytes
        if not last:
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored, as RFC 9110 allows
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)


def content_response(
    store: ArtifactStore, artifact: Artifact, *, range_header: str | None, if_range: str | None,
    headers: Mapping[str, str], on_close: Callable[[], None] | None = None,
) -> StreamingResponse:
    """The artifact's bytes streamed from storage: 200 whole, or 206 for one satisfiable range (416 raised for
    an unsatisfiable one). ``ETag`` and ``X-Content-SHA256`` carry the SHA-256 of the stored object;
    ``Content-Disposition`` names it; ``headers`` are added (caching policy). ``on_close`` runs once the body
    is sent or abandoned."""
    info = store.stat(artifact.key)  # NotFound (404) when the object is gone, before any byte is sent
    sha256 = info.sha256 or artifact.sha256
    etag = f'"{sha256}"'
    out: dict[str, str] = {
        "ETag": etag,
        "X-Content-SHA256": sha256,
        "Accept-Ranges": "bytes",
        "Content-Disposition": inline_disposition(artifact.name),
        # stored bytes are served as what the database says they are, never sniffed, and an HTML artifact
        # opened from the API's origin runs no script (a polyglot upload or a page cannot act as the API)
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        **headers,
    }
    # If-Range: the range only while the client's copy is this one (a date can't be checked: no Last-Modified)
    wanted = parse_range(range_header, info.size_bytes) if if_range is None or if_range.strip() == etag else None
    status, offset, length = 200, 0, info.size_bytes
    if wanted is not None:
        status, offset, length = 206, wanted.start, wanted.length
        out["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{info.size_bytes}"
    out["Content-Length"] = str(length)
    chunks = store.open_range(artifact.key, offset=offset, length=length)
    return StreamingResponse(_stream(chunks, on_close), status_code=status, media_type=artifact.content_type,
                             headers=out)


async def _stream(chunks: Iterator[bytes], on_close: Callable[[], None] | None) -> AsyncIterator[bytes]:
    """Each chunk read in a worker thread; the store's iterator is closed (file, S3 connection released) when
    the body ends, fails or the client goes away."""
    try:
        while (chunk := await anyio.to_thread.run_sync(_next_chunk, chunks)) is not None:
            yield chunk
    finally:
        close: Any = getattr(chunks, "close", None)
        if close is not None:
            close()
        if on_close is not None:
            on_close()


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


def not_modified(etag: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status_code=304, headers={"ETag": etag, **(headers or {})})

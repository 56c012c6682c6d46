"""``/v1/artifacts/{id}/content``: the bytes of one artifact."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Response

from .. import artifacts as artifact_service
from ..deps import SessionDep, StoreDep, TenantDep
from ..problems import problem_responses

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"], responses=problem_responses(401, 404, 503))


@router.get(
    "/{artifact_id}/content", response_class=Response, summary="Download an artifact's bytes",
    responses={200: {"description": "The stored bytes; `ETag` and `X-Content-SHA256` carry their SHA-256.",
                     # whatever the artifact is (image/png, application/zip, text/html, ...): its stored type
                     "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
               304: {"description": "Not modified (If-None-Match matched)."}},
)
def artifact_content(
    artifact_id: Annotated[str, Path(max_length=64)], principal: TenantDep, session: SessionDep, store: StoreDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match", max_length=1024)] = None,
) -> Response:
    artifact = artifact_service.get_artifact(session, tenant_id=principal.tenant_id, artifact_id=artifact_id)
    etag = f'"{artifact.sha256}"'
    wanted = {t.strip() for t in if_none_match.split(",")} if if_none_match else set()
    if wanted & {etag, f"W/{etag}", "*"}:
        return Response(status_code=304, headers={"ETag": etag})
    content = artifact_service.read_content(store, artifact)
    return Response(content.data, media_type=content.content_type, headers={
        "ETag": f'"{content.sha256}"',
        "X-Content-SHA256": content.sha256,
        "Cache-Control": "private, no-cache",
        "Content-Disposition": _disposition(content.name),
        # stored bytes are served as what the database says they are, never sniffed, and an HTML artifact
        # opened from the API's origin runs no script (a polyglot upload or a page cannot act as the API)
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    })


def _disposition(name: str) -> str:
    plain = "".join(c for c in name if c.isascii() and c.isprintable() and c not in '"\\') or "artifact"
    return f"inline; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"

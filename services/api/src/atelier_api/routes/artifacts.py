"""``/v1/artifacts/{id}/content``: the bytes of one artifact, streamed, with single ``Range`` requests."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from starlette.responses import Response

from .. import artifacts as artifact_service
from ..deps import SessionDep, StoreDep, TenantDep
from ..problems import problem_responses
from ..schemas import Problem

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"], responses=problem_responses(401, 404, 503))

_BINARY = {"*/*": {"schema": {"type": "string", "format": "binary"}}}  # whatever the artifact's stored type is

# OpenAPI ``responses=`` of a route that serves an artifact's bytes (this one and ``/v1/assets``)
CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The stored bytes (streamed); `ETag` and `X-Content-SHA256` carry their SHA-256, "
                         "`Accept-Ranges: bytes` says ranges are served. Several ranges at once get this.",
          "content": _BINARY},
    206: {"description": "One range of the bytes (`Range: bytes=a-b`, `bytes=a-` or `bytes=-n`), with "
                         "`Content-Range: bytes a-b/size`.", "content": _BINARY},
    304: {"description": "Not modified (If-None-Match matched)."},
    416: {"model": Problem, "description": "The range selects no byte of the object (`Content-Range: bytes */size`)."},
}

RangeHeader = Annotated[str | None, Header(alias="Range", max_length=256)]
IfRangeHeader = Annotated[str | None, Header(alias="If-Range", max_length=1024)]
IfNoneMatchHeader = Annotated[str | None, Header(alias="If-None-Match", max_length=1024)]


@router.get(
    "/{artifact_id}/content", response_class=Response, summary="Download an artifact's bytes",
    responses=CONTENT_RESPONSES,
)
def artifact_content(
    artifact_id: Annotated[str, Path(max_length=64)], principal: TenantDep, session: SessionDep, store: StoreDep,
    if_none_match: IfNoneMatchHeader = None, range_: RangeHeader = None, if_range: IfRangeHeader = None,
) -> Response:
    artifact = artifact_service.get_artifact(session, tenant_id=principal.tenant_id, artifact_id=artifact_id)
    etag = f'"{artifact.sha256}"'
    if artifact_service.etag_matches(if_none_match, etag):
        return artifact_service.not_modified(etag)
    return artifact_service.content_response(store, artifact, range_header=range_, if_range=if_range,
                                             headers={"Cache-Control": "private, no-cache"})

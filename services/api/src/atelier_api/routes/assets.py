"""``/v1/assets/{id}?expires=&signature=``: an artifact's bytes for whoever holds its signed URL, no API key.

What integrators (HubSpot, Braze, a DAM) fetch delivered assets with; the URLs come from
:mod:`atelier_control.asset_urls` (an artifact's ``download_url``, webhooks). The signature is checked before
anything is looked up; the bytes stream like ``/v1/artifacts/{id}/content``'s, ranges included. One client
address runs at most ``asset_max_streams_per_client`` downloads at once per API process (429 beyond).
"""

from __future__ import annotations

import time
import weakref
from functools import partial
from typing import Annotated

from atelier_control.asset_urls import AssetLinks
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from .. import artifacts as artifact_service
from ..concurrency import TenantConcurrency
from ..deps import SessionDep, StoreDep
from ..problems import problem_responses
from ..ratelimit import RateLimited, app_singleton, limited_doc
from .artifacts import CONTENT_RESPONSES, IfNoneMatchHeader, IfRangeHeader, RangeHeader

router = APIRouter(prefix="/v1/assets", tags=["artifacts"], responses=problem_responses(403, 404, 503))

MAX_CACHE_S = 3600
_LIMITED_DOC = limited_doc("This client address already runs as many asset downloads at once as it may.",
                           "Seconds to wait before trying again.")


def get_asset_links(request: Request) -> AssetLinks:
    """One per app: the signing key is read once (tests may put their own on ``app.state.asset_links``)."""
    store = request.app.state.store
    return app_singleton(request, "asset_links", lambda settings: AssetLinks.from_settings(settings, store))


AssetLinksDep = Annotated[AssetLinks, Depends(get_asset_links)]


def bind_asset_links(request: Request, session: SessionDep) -> None:
    """Router dependency: artifact views listed on this request's session carry ``download_url`` (the links are
    built on first use, so routes that list none never read the signing secret)."""
    session.info[artifact_service.LINKS_INFO] = partial(get_asset_links, request)


def _client_guard(request: Request) -> TenantConcurrency:
    return app_singleton(request, "asset_concurrency",
                         lambda settings: TenantConcurrency({"assets": settings.asset_max_streams_per_client}))


@router.get(
    "/{artifact_id}", response_class=Response, summary="Fetch an artifact's bytes with a signed, expiring URL",
    description="No API key: the `expires` and `signature` query parameters of an artifact's `download_url` are "
                "the credential. 403 naming `signature` when it is wrong or expired.",
    responses={**CONTENT_RESPONSES, **_LIMITED_DOC},
)
def asset_content(
    request: Request, artifact_id: Annotated[str, Path(max_length=64)], session: SessionDep, store: StoreDep,
    links: AssetLinksDep,
    expires: Annotated[int, Query(ge=0, le=10**12, description="Unix time the URL expires at.")],
    signature: Annotated[str, Query(max_length=128, description="The URL's signature, as given.")],
    if_none_match: IfNoneMatchHeader = None, range_: RangeHeader = None, if_range: IfRangeHeader = None,
) -> Response:
    now = time.time()
    artifact = artifact_service.get_signed_artifact(session, artifact_id=artifact_id, expires=expires,
                                                    signature=signature, key=links.key, now=now)
    etag = f'"{artifact.sha256}"'
    cache = {"Cache-Control": f"private, max-age={max(0, min(MAX_CACHE_S, int(expires - now)))}",
             "Referrer-Policy": "no-referrer"}  # the URL is the credential: not for other sites' logs
    if artifact_service.etag_matches(if_none_match, etag):
        return artifact_service.not_modified(etag, cache)
    guard = _client_guard(request)
    client = request.client.host if request.client else "unknown"
    try:
        release = guard.acquire("assets", client)
    except RateLimited as exc:
        raise RateLimited(f"too many downloads at once from one address: at most "
                          f"{guard.caps['assets']}", retry_after_s=1, limit="concurrent_assets") from exc
    try:
        response = artifact_service.content_response(store, artifact, range_header=range_, if_range=if_range,
                                                     headers=cache, on_close=release)
    except BaseException:
        release()
        raise
    weakref.finalize(response, release)  # a body never sent (the client left first) frees its slot too
    return response

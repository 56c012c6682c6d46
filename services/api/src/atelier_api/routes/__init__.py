"""HTTP routes: parse, call one service function, return."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from . import artifacts, assets, capabilities, health, jobs, keys, uploads


def include_routes(app: FastAPI) -> None:
    app.include_router(health.router)
    # artifact lists carry expiring download URLs: the links are bound to each request's session
    app.include_router(jobs.router, dependencies=[Depends(assets.bind_asset_links)])
    app.include_router(artifacts.router)
    app.include_router(assets.router)  # /v1/assets/{id}: signed, expiring URLs for integrators (no API key)
    app.include_router(uploads.router)
    app.include_router(keys.router)  # /v1/keys: issue, list, revoke API keys
    app.include_router(capabilities.router)  # /v1/capabilities: languages, cultures, placements

"""HTTP routes: parse, call one service function, return."""

from __future__ import annotations

from fastapi import FastAPI

from . import artifacts, capabilities, health, jobs, keys, uploads


def include_routes(app: FastAPI) -> None:
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(artifacts.router)
    app.include_router(uploads.router)
    app.include_router(keys.router)  # /v1/keys: issue, list, revoke API keys
    app.include_router(capabilities.router)  # /v1/capabilities: languages, cultures, placements

"""The dashboard: server-rendered pages in the API process (Jinja2 templates, a small script, no CDN).

``install_dashboard(app)`` mounts the static files, adds the pages under ``/dashboard`` (and ``/`` →
``/dashboard/jobs``) and makes errors on dashboard paths HTML pages; every ``/v1`` path is unchanged.
Call it after the API's problem handlers are installed.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .routes import root_router, router
from .web import PREFIX, STATIC_DIR, STATIC_PREFIX, install_error_pages

SUBMIT_PATH = f"{PREFIX}/jobs"

__all__ = ["PREFIX", "SUBMIT_PATH", "install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.include_router(router)
    app.include_router(root_router)
    install_error_pages(app)

"""The app factory: ``create_app(settings)`` wires state, errors, limits, metrics and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from atelier_control.db import engine_from_settings, session_factory
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from atelier_runtime.state import RuntimeState, make_runtime
from atelier_runtime.storage import ArtifactStore, make_store
from celery import Celery
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from .dashboard import SUBMIT_PATH as DASHBOARD_SUBMIT_PATH
from .dashboard import install_dashboard
from .limits import JSON_BODY_MAX, MULTIPART_OVERHEAD, BodyLimitMiddleware
from .metrics import ApiMetrics, MetricsMiddleware
from .openapi import install_openapi
from .problems import install_problem_handlers
from .routes import brands as brand_routes
from .routes import bundle as bundle_routes
from .routes import include_routes
from .routes import plans as plan_routes
from .routes import verify as verify_routes
from .routes import webhooks as webhook_routes
from .version import __version__

log = logging.getLogger(__name__)

ExtraLifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]

UPLOAD_PATH = "/v1/uploads"
VERIFY_PATH = "/v1/verify"


def operation_id(route: APIRoute) -> str:
    """An operation's OpenAPI id is its route's name, i.e. the route function's (``submit_job``): ids are part
    of the API (the SDK maps each one to a method), so a rename is a visible change; duplicates fail a test."""
    return route.name


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    store: ArtifactStore | None = None,
    celery: Celery | None = None,
    runtime: RuntimeState | None = None,
    extra_lifespan: ExtraLifespan | None = None,
) -> FastAPI:
    """Build the API. Whatever is not passed is built once in the lifespan (and closed there).

    Args:
        settings: the process settings (nothing is read from the environment here).
        engine, store, celery, runtime: injected clients; the app never closes what it was given.
        extra_lifespan: entered after ``app.state`` is built and exited before it is torn down
            (the embedded mode runs its in-process Celery worker there).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            state = app.state
            if engine is None:
                state.engine = await run_in_threadpool(engine_from_settings, settings)
                stack.callback(state.engine.dispose)
            else:
                state.engine = engine
            state.session_factory = session_factory(state.engine)
            state.store = store if store is not None else await run_in_threadpool(make_store, settings)
            if celery is None:
                state.celery = make_celery(settings)
                stack.callback(state.celery.close)
            else:
                state.celery = celery
            state.runtime = runtime if runtime is not None else await run_in_threadpool(make_runtime, settings)
            if extra_lifespan is not None:
                await stack.enter_async_context(extra_lifespan(app))
            log.info("atelier api ready (embedded=%s, storage=%s)", settings.embedded, settings.storage)
            yield

    app = FastAPI(
        title="Atelier API",
        version=__version__,
        description="Submit campaign and story jobs, upload images, follow progress, fetch artifacts.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics()

    install_problem_handlers(app)
    include_routes(app)
    for delivery_router in (bundle_routes.router, webhook_routes.router, brand_routes.router):
        app.include_router(delivery_router)
    app.include_router(verify_routes.router)  # POST /v1/verify (watermark + C2PA)
    app.include_router(plan_routes.router)  # POST /v1/plans:preview
    install_dashboard(app)  # pages under /dashboard (HTML errors there; /v1 unchanged)
    install_openapi(app)

    upload_limit = settings.upload_max_bytes + MULTIPART_OVERHEAD

    def limit_for(path: str) -> tuple[int, str]:
        if path.rstrip("/").endswith(UPLOAD_PATH):
            return upload_limit, "file"
        if path.rstrip("/") == VERIFY_PATH:  # the image to verify, same limit as an upload
            return upload_limit, "file"
        if path.rstrip("/") == DASHBOARD_SUBMIT_PATH:  # the new-job form carries the product image
            return upload_limit + MULTIPART_OVERHEAD, "product_image"
        return JSON_BODY_MAX, "body"

    # the last added is the outermost: metrics see every answer, 413s included
    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory atelier_api.app:app_from_env``: settings from ``ATELIER_*``."""
    return create_app(Settings())

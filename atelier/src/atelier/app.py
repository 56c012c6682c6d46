"""The API as ``atelier serve`` runs it: in services mode the API alone; in the embedded mode (no broker) the API
with every worker, the reconciler and the webhook dispatcher in the same process, on a migrated SQLite file."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from atelier_runtime.settings import Settings

log = logging.getLogger(__name__)


def migrate(settings: Settings) -> None:
    """Bring the database to the latest migration (the SQLite file's folder is made first)."""
    from atelier_migrations import upgrade  # optional extra: atelier[api] / atelier[orchestrator]

    if settings.resolved_database_url().startswith("sqlite:///"):
        settings.home_dir()
    upgrade(settings.resolved_database_url())


def build_api(settings: Settings) -> Any:
    """The API app; with no broker it also runs the embedded worker in the same process."""
    from atelier_api.app import create_app  # optional extra: atelier[api]

    settings.home_dir()
    if not settings.embedded:
        return create_app(settings)
    from .embedded import embedded_worker  # every role in this process: atelier[all]

    migrate(settings)
    if not settings.resolved_models_file().exists():
        log.warning("no models file at %s: image stages will fail until you put your models there (see the README) "
                    "or write the tiny test models with `atelier models init-tiny %s`",
                    settings.resolved_models_file(), settings.resolved_models_dir())

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        with embedded_worker(settings):
            yield

    return create_app(settings, extra_lifespan=lifespan)

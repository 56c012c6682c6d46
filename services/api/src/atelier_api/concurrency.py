"""Per-tenant caps on concurrent work in one API process: event streams, plan previews, verifications, uploads.

A tenant over a cap gets ``429`` problem+json (``limit: concurrent_<kind>``, ``Retry-After: 1``): one tenant's
hundred open streams or slow previews cannot take every worker thread of the process from the others. The caps
are per process (``tenant_max_*`` settings; 0 turns one off); with several API processes a tenant may hold that
many in each.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from atelier_runtime.settings import Settings
from fastapi import Depends, Request

from .ratelimit import RateLimited, app_singleton, limited_doc

KINDS = {"streams": "event streams", "previews": "plan previews", "verifies": "verifications", "uploads": "uploads"}


class TenantConcurrency:
    """Counts what each tenant runs at once, per kind; ``acquire`` refuses over the cap."""

    def __init__(self, caps: dict[str, int]) -> None:
        self.caps = caps
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantConcurrency:
        return cls({"streams": settings.tenant_max_streams, "previews": settings.tenant_max_previews,
                    "verifies": settings.tenant_max_verifies, "uploads": settings.tenant_max_uploads})

    def held(self, kind: str, tenant_id: str) -> int:
        return self._held.get((kind, tenant_id), 0)

    def acquire(self, kind: str, tenant_id: str) -> Callable[[], None]:
        """Take one of the tenant's ``kind`` slots (429 when none is free); returns its release (idempotent)."""
        cap = self.caps.get(kind, 0)
        key = (kind, tenant_id)
        with self._lock:
            if cap and self._held.get(key, 0) >= cap:
                raise RateLimited(f"too many {KINDS.get(kind, kind)} at once: at most {cap} per tenant",
                                  retry_after_s=1, limit=f"concurrent_{kind}")
            self._held[key] = self._held.get(key, 0) + 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                left = self._held.get(key, 0) - 1
                if left > 0:
                    self._held[key] = left
                else:
                    self._held.pop(key, None)

        return release

    @contextmanager
    def hold(self, kind: str, tenant_id: str) -> Iterator[None]:
        release = self.acquire(kind, tenant_id)
        try:
            yield
        finally:
            release()

    def hold_for(self, owner: Any, kind: str, tenant_id: str) -> Callable[[], None]:
        """A slot released when ``release()`` is called or, at the latest, when ``owner`` is garbage collected (a
        streaming response's body that was never iterated)."""
        release = self.acquire(kind, tenant_id)
        weakref.finalize(owner, release)
        return release


def get_concurrency(request: Request) -> TenantConcurrency:
    """One per app (tests may put their own on ``app.state.tenant_concurrency``)."""
    return app_singleton(request, "tenant_concurrency", TenantConcurrency.from_settings)


ConcurrencyDep = Annotated[TenantConcurrency, Depends(get_concurrency)]

# OpenAPI ``responses=`` entry of a route under a per-tenant concurrency cap
CONCURRENCY_LIMITED_DOC = limited_doc("The tenant already runs as many of these at once as it may.",
                                      "Seconds to wait before trying again.")

"""Service functions the dashboard takes from other parts of the API, when this build has them.

The plan preview (``POST /v1/plans:preview``: ``routes.plans.request_preview``), job bundles
(``GET /v1/jobs/{id}/bundle``: ``bundle.plan_bundle`` + ``bundle.stream_bundle``) and the submission
limits (``ratelimit.get_job_limits``) belong to the planner, delivery and load work. The dashboard calls
those very functions — never a copy — and, in a build without one, does without it (saying so on the page)
instead of failing to start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import SimpleNamespace
from typing import Any

PREVIEW_MISSING = ("Plan preview needs POST /v1/plans:preview (the planner service's preview), which this server "
                   "does not have. Submit the job and open its Plans tab instead.")
BUNDLE_MISSING = "bundles need GET /v1/jobs/{id}/bundle, which this server does not have"


def _lookup(module: str, name: str) -> Callable[..., Any] | None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the module is there but something it imports is not: a real error, not an absent feature
        return None
    fn = getattr(mod, name, None)
    return fn if callable(fn) else None


def plan_preview() -> Callable[..., dict[str, Any]] | None:
    """``request_preview(celery, *, kind, spec, tenant_id, timeout_s) -> {ok, kind, backend, stages | error}``."""
    return _lookup("atelier_api.routes.plans", "request_preview")


def bundle_functions() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(plan_bundle(session, *, tenant_id, job_id), stream_bundle(plan, store))`` when bundles exist."""
    plan, stream = _lookup("atelier_api.bundle", "plan_bundle"), _lookup("atelier_api.bundle", "stream_bundle")
    return (plan, stream) if plan is not None and stream is not None else None


def bundle_available() -> bool:
    return bundle_functions() is not None


def job_admission(request: Any, session: Any, *, tenant_id: str) -> AbstractContextManager[Any]:
    """The JSON API's per-tenant rate limit and GPU quota (``ratelimit.JobLimits.admit``) when this build has
    them: entering raises a 429 over a limit; set ``.created`` on what it yields once the job exists."""
    get_limits = _lookup("atelier_api.ratelimit", "get_job_limits")
    if get_limits is None:
        return nullcontext(SimpleNamespace(created=False))
    admit: AbstractContextManager[Any] = get_limits(request).admit(session, tenant_id=tenant_id)
    return admit

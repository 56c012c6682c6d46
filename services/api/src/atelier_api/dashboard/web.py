"""Templates, security headers, sign-in dependencies and the dashboard's HTML error pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from atelier_contracts.errors import AtelierError
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ..deps import SessionDep, SettingsDep
from ..version import __version__
from .session import CSRF_FIELD, CSRF_HEADER, Viewer, csrf_ok, read_session, viewer_from
from .timeline import duration

PREFIX = "/dashboard"
STATIC_PREFIX = f"{PREFIX}/static"
HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
FETCH_HEADER = "x-requested-with"

# every page is same-origin only: no inline script, no third-party anything (the dashboard works offline)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def age(value: datetime | None, now: datetime | None = None) -> str:
    """``12 s``, ``3 min``, ``5 h``, ``2 d`` since ``value``."""
    if value is None:
        return "–"
    now = now or datetime.now(UTC)
    s = max(0.0, (now - value).total_seconds())
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        return f"{s // 3600:.0f} h"
    return f"{s // 86400:.0f} d"


def job_title(spec: dict[str, Any], kind: str) -> str:
    """A readable name for a job: product · brand for campaigns, the premise for stories."""
    if kind == "campaign":
        product = (spec.get("product") or {}).get("name") or "campaign"
        brand = (spec.get("brand") or {}).get("name")
        return f"{product} · {brand}" if brand else str(product)
    premise = str(spec.get("premise") or "story")
    return premise if len(premise) <= 70 else premise[:69] + "…"


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters.update(
    duration=duration, age=age, pct=lambda v: f"{100 * float(v or 0):.0f}%",
    iso=lambda d: d.isoformat(timespec="seconds") if d else "",
    clock=lambda d: d.strftime("%H:%M:%S") if d else "–",
    short=lambda s: s if len(s) <= 16 else s[:16] + "…",
    num=lambda v, n=1: f"{float(v or 0):.{n}f}",
)
templates.env.globals.update(version=__version__, job_title=job_title, prefix=PREFIX,
                             static=lambda name: f"{STATIC_PREFIX}/{name}?v={__version__}")


def render(request: Request, name: str, context: dict[str, Any], *, status: int = 200) -> Response:
    """A template response with the dashboard's security headers."""
    return templates.TemplateResponse(request, name, context, status_code=status, headers=SECURITY_HEADERS)


def is_fetch(request: Request) -> bool:
    return request.headers.get(FETCH_HEADER) == "fetch" or "text/event-stream" in request.headers.get("accept", "")


class LoginRequired(Exception):
    """No valid session: pages redirect to the sign-in form, scripts get a 401."""


class CsrfRejected(AtelierError):
    status = 403
    title = "Form expired"


def current_viewer(request: Request, session: SessionDep, settings: SettingsDep) -> Viewer:
    viewer = viewer_from(session, read_session(request, max_age_s=settings.session_max_age_s))
    session.commit()  # end the read transaction (SQLite WAL snapshots must not outlive it)
    if viewer is None:
        raise LoginRequired()
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


async def read_form(request: Request) -> FormData:
    return await request.form(max_files=2, max_fields=200)


FormDep = Annotated[FormData, Depends(read_form)]


def same_origin(request: Request) -> bool:
    """Browsers send Origin on POST; when it is there, it must name this host."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def checked_form(request: Request, viewer: ViewerDep, form: FormDep) -> FormData:
    """The posted form, after its CSRF token (or ``X-CSRF-Token``) and Origin were checked."""
    token = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not csrf_ok(viewer.csrf, token if isinstance(token, str) else None) or not same_origin(request):
        raise CsrfRejected("the form was stale or came from another site; reload the page and try again")
    return form


CheckedFormDep = Annotated[FormData, Depends(checked_form)]


def login_url(next_path: str | None = None) -> str:
    return f"{PREFIX}/login" + (f"?next={quote(next_path, safe='/')}" if next_path else "")


def safe_next(value: str | None) -> str:
    """Only redirect to a path of the dashboard (never to another site)."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/jobs"


def _dashboard_path(request: Request) -> bool:
    path = request.url.path
    return (path == PREFIX or path.startswith(PREFIX + "/")) and not path.startswith(STATIC_PREFIX + "/")


def _error_page(request: Request, status: int, title: str, detail: str) -> Response:
    if is_fetch(request):
        return PlainTextResponse(detail, status_code=status)
    return render(request, "error.html", {"status": status, "title": title, "detail": detail}, status=status)


Handler = Callable[[Request, Exception], Awaitable[Response]]


def install_error_pages(app: FastAPI) -> None:
    """Dashboard paths answer errors as HTML pages; every other path keeps the API's problem+json."""
    api_handlers: dict[Any, Handler] = dict(app.exception_handlers)  # type: ignore[arg-type]

    def wrap(exc_class: type[Exception], to_page: Callable[[Request, Exception], Response]) -> None:
        previous = api_handlers.get(exc_class)

        async def handler(request: Request, exc: Exception) -> Response:
            if _dashboard_path(request) or previous is None:
                return to_page(request, exc)
            return await previous(request, exc)

        app.add_exception_handler(exc_class, handler)

    def atelier_page(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AtelierError)
        return _error_page(request, exc.status if 400 <= exc.status <= 599 else 500, exc.title, exc.detail)

    def http_page(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            detail = f"nothing at {request.url.path}"
        return _error_page(request, exc.status_code, "Not found" if exc.status_code == 404 else "Error", detail)

    def validation_page(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors())
        return _error_page(request, 422, "Invalid request", fields or "invalid request")

    async def login_required(request: Request, exc: Exception) -> Response:
        if is_fetch(request) or request.method != "GET":
            return PlainTextResponse("sign in again", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(login_url(target), status_code=303)

    wrap(AtelierError, atelier_page)
    wrap(StarletteHTTPException, http_page)
    wrap(RequestValidationError, validation_page)
    app.add_exception_handler(LoginRequired, login_required)

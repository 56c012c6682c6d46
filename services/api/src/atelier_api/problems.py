"""RFC 9457 problem details: the one place that turns errors into HTTP responses.

Every error the API answers with is ``application/problem+json``::

    {"type": "urn:atelier:problem:invalid-input", "title": "Invalid input", "status": 422,
     "detail": "spec.variants: Input should be less than or equal to 8",
     "errors": [{"field": "spec.variants", "message": "Input should be less than or equal to 8"}]}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from atelier_contracts.errors import AtelierError, InvalidInput
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import FieldError, Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# the places FastAPI names in a validation error's ``loc``; clients know fields by name, not by place
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def problem_type(title: str) -> str:
    return "urn:atelier:problem:" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class FieldErrors(InvalidInput):
    """Several invalid fields at once (request or spec validation); 422."""

    title = "Validation failed"

    def __init__(self, errors: Sequence[FieldError]) -> None:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or "invalid input"
        super().__init__(detail, field=errors[0].field if errors else None)
        self.errors = list(errors)

    @classmethod
    def from_pydantic(cls, exc: ValidationError, *, prefix: str | None = None) -> FieldErrors:
        """Translate a pydantic error, prefixing each path (``spec`` → ``spec.taglines.0``)."""
        return cls(field_errors(exc.errors(include_input=False, include_url=False), prefix=prefix))


class BrokerUnavailable(AtelierError):
    """The job could not be handed to the orchestrator; nothing was kept."""

    status = 503
    title = "Broker unavailable"


class RequestTooLarge(StarletteHTTPException):
    """Raised while the body is being received, so FastAPI's body parsing passes it through."""

    def __init__(self, limit: int, *, field: str = "body") -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")
        self.field = field


def field_errors(errors: Sequence[Mapping[str, Any]], *, prefix: str | None = None) -> list[FieldError]:
    """Pydantic/FastAPI error dicts → ``[FieldError]`` with dotted paths and no echoed input."""
    out: list[FieldError] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in _LOCATIONS and prefix is None:
            loc = loc[1:]
        message = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            loc = []  # the position is a byte offset, not a field
            reason = (err.get("ctx") or {}).get("error")
            message = f"body is not valid JSON: {reason}" if reason else "body is not valid JSON"
        path = ".".join(([prefix] if prefix else []) + loc) or "body"
        out.append(FieldError(field=path, message=message))
    return out


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title or _phrase(status), "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _auth_headers(status: int) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"} if status == 401 else {}


async def _atelier_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AtelierError)
    status = exc.status if 400 <= exc.status <= 599 else 500
    if status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.detail, exc_info=status == 500)
    if isinstance(exc, FieldErrors):
        errors: list[FieldError] | None = exc.errors
    else:
        errors = [FieldError(field=exc.field, message=exc.detail)] if exc.field else None
    return problem_response(
        status, title=exc.title, detail=exc.detail, type_=problem_type(exc.title), errors=errors,
        headers={**_auth_headers(status), **(getattr(exc, "headers", None) or {})},  # e.g. 429's Retry-After
        extra=getattr(exc, "extra", None),
    )


async def _request_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fe = FieldErrors(field_errors(exc.errors()))
    return problem_response(422, title=fe.title, detail=fe.detail, type_=problem_type(fe.title), errors=fe.errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == _phrase(404):
        detail = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    field = getattr(exc, "field", None)
    errors = [FieldError(field=field, message=detail or _phrase(exc.status_code))] if field else None
    headers = {**_auth_headers(exc.status_code), **(exc.headers or {})}
    return problem_response(exc.status_code, detail=detail, errors=errors, headers=headers)


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    # the database refused a value the request carried (a NUL in text, a number out of range, a string too
    # long for its column): the input is wrong, not the server; say why without echoing SQL or parameters
    assert isinstance(exc, DataError)
    reason = str(getattr(exc, "orig", None) or "").strip().splitlines()[0:1] or ["the value does not fit its column"]
    log.warning("refused by the database: %s", reason[0])
    return problem_response(422, title="Invalid input", type_=problem_type("invalid input"),
                            detail=f"a value cannot be stored: {reason[0][:200]}")


async def _unhandled(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(500, title="Internal error", type_=problem_type("internal error"),
                            detail="the server failed to handle the request; it has been logged")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AtelierError, _atelier_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(Exception, _unhandled)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for problem+json answers."""
    return {s: {"model": Problem, "description": _phrase(s)} for s in statuses}

"""The one error the API answers with: :class:`AtelierError`, an RFC 9457 problem.

    AtelierError            any 4xx/5xx answer: status, type, title, detail, field errors
    └── (ApiError)          the same class under its former name

Network failures that outlive the retries are httpx's own (``httpx.TransportError`` and its subclasses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from .models import Problem


class AtelierError(Exception):
    """An RFC 9457 problem answered by the API (``application/problem+json``).

    ``errors`` holds the body's field errors as sent (``[{"field": "spec.taglines.0", "message": ...}]``);
    ``field_errors`` groups their messages by field; ``problem`` is the whole body, extension members included
    (e.g. a 429's ``limit`` and ``retry_after_s``).
    """

    def __init__(self, status: int, problem: Mapping[str, Any], *, headers: Mapping[str, str] | None = None) -> None:
        try:
            parsed: Problem | None = Problem.model_validate({"title": "error", **problem, "status": status})
        except ValueError:  # a body that is not quite a problem still raises with what it has
            parsed = None
        self.status = status
        self.problem = dict(problem)
        self.type = parsed.type if parsed else str(problem.get("type") or "about:blank")
        self.title = parsed.title if parsed and parsed.title else str(problem.get("title") or "error")
        self.detail = (parsed.detail if parsed else None) or str(problem.get("detail") or "")
        self.errors: list[dict[str, Any]] = [dict(e) for e in problem.get("errors") or [] if isinstance(e, Mapping)]
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else f"{status} {self.title}")

    @property
    def field_errors(self) -> dict[str, list[str]]:
        """Messages by field name (dotted path, e.g. ``spec.sizes.0``)."""
        out: dict[str, list[str]] = {}
        for e in self.errors:
            out.setdefault(str(e.get("field") or "body"), []).append(str(e.get("message") or ""))
        return out

    @classmethod
    def from_response(cls, response: httpx.Response) -> AtelierError:
        """The problem of an error answer whose body has been read; a body that is not a JSON object (a proxy's
        HTML page) becomes ``title`` = the reason phrase, ``detail`` = its start."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"title": response.reason_phrase or "error", "detail": response.text[:500]}
        return cls(response.status_code, body, headers=response.headers)


ApiError = AtelierError  # the name before the SDK had an async client

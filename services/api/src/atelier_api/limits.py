"""Request body limits, enforced on the bytes as they arrive (Content-Length is only a hint)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import RequestTooLarge, problem_response
from .schemas import FieldError

JSON_BODY_MAX = 16 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries around the one file


class BodyLimitMiddleware:
    """Answer 413 when a body is, or says it is, larger than the limit for its path.

    ``limit_for(path)`` gives ``(max_bytes, field)``. Past the limit the next ``receive()`` raises
    :class:`RequestTooLarge`, an HTTPException that FastAPI's body parsing lets through to the
    problem handler, so reading stops there.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, field = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            detail = f"request body of {declared} bytes exceeds {limit} bytes"
            response = problem_response(413, detail=detail, errors=[FieldError(field=field, message=detail)],
                                        headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit, field=field)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

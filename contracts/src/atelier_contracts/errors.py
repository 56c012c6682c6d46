"""Atelier's error hierarchy; ``atelier_api`` maps it to RFC 9457 problem+json in one place.

    AtelierError
    ├── InvalidInput          400/422 — bad field; carries the field path
    │   └── PayloadTooLarge   413
    │   └── UnsupportedMedia  415
    ├── NotFound              404 — also for other tenants' objects
    ├── Conflict              409 — idempotency key reused with another body, illegal transition
    ├── Unauthorized          401
    ├── Forbidden             403 — authenticated, but the key's role does not allow it
    ├── StorageError          503 — object store unreachable or failed
    └── StageError            — a stage failed; ``retryable`` says whether to try again
"""

from __future__ import annotations


class AtelierError(Exception):
    """Base of every error Atelier raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidInput(AtelierError):
    status = 422
    title = "Invalid input"


class PayloadTooLarge(InvalidInput):
    status = 413
    title = "Payload too large"


class UnsupportedMedia(InvalidInput):
    status = 415
    title = "Unsupported media type"


class NotFound(AtelierError):
    status = 404
    title = "Not found"


class Conflict(AtelierError):
    status = 409
    title = "Conflict"


class Unauthorized(AtelierError):
    status = 401
    title = "Unauthorized"


class Forbidden(AtelierError):
    status = 403
    title = "Forbidden"


class StorageError(AtelierError):
    status = 503
    title = "Storage unavailable"


class StageError(AtelierError):
    """A stage could not finish; ``retryable=False`` fails the job at once."""

    def __init__(self, detail: str, *, retryable: bool = True, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retryable = retryable


class JobCanceled(AtelierError):
    """Raised inside a stage when its job was canceled; the stage stops at the next step."""

    status = 409
    title = "Job canceled"

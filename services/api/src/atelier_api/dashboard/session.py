"""Dashboard sessions: an API key is exchanged for a server-side session and a signed, HTTP-only cookie.

Signing in records a ``dashboard_sessions`` row (tenant, key, expiry); the cookie holds
``{session id, csrf token, issued at}`` signed with HMAC-SHA256 — never the key itself. Every request
re-checks the row (there, not signed out, not expired) and its key (there, not revoked), so signing
out, or revoking the key, ends the session on the server: a copied cookie stops working too.
Anonymous visitors get a cookie with a CSRF token only (no row), so the sign-in form is protected
against login CSRF; signing in rotates the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atelier_control.auth import authenticate_key, end_dashboard_session, start_dashboard_session
from atelier_control.models import ApiKey, DashboardSession, Tenant
from atelier_control.secrets import SECRET_FILE as SECRET_FILE  # the secret moved to the control plane (asset
from atelier_control.secrets import resolve_secret as resolve_secret  # URLs sign with it too): re-exported here
from atelier_runtime.settings import Settings
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger(__name__)

COOKIE = "atelier_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class Signer:
    """``base64url(json).base64url(hmac)``: tamper-evident, not secret (nothing secret goes in)."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"atelier-dashboard-session\x00" + secret).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def dumps(self, data: dict[str, Any]) -> str:
        body = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._mac(body.encode()))}"

    def loads(self, token: str) -> dict[str, Any] | None:
        body, _, mac = token.partition(".")
        if not body or not mac:
            return None
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body.encode())):
                return None
            data = json.loads(_unb64(body))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the dashboard: a tenant, through one of its API keys."""

    tenant_id: str
    tenant_name: str
    key_id: str
    key_prefix: str
    csrf: str
    session_id: str


@dataclass(frozen=True)
class SessionData:
    """What the cookie carries: a CSRF token, and once signed in the id of a ``dashboard_sessions`` row."""

    csrf: str
    session_id: str | None = None
    issued_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"c": self.csrf, "iat": int(self.issued_at)}
        if self.session_id:
            out["s"] = self.session_id
        return out


def signer_for(request: Request) -> Signer:
    """One signer per app, built on first use (the secret may be read from disk)."""
    state = request.app.state
    signer: Signer | None = getattr(state, "dashboard_signer", None)
    if signer is None:
        signer = Signer(resolve_secret(state.settings))
        state.dashboard_signer = signer
    return signer


def read_session(request: Request, *, max_age_s: int) -> SessionData | None:
    """The cookie's content when its signature holds and it is not older than ``max_age_s``."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    data = signer_for(request).loads(token)
    if data is None or not isinstance(data.get("c"), str) or not isinstance(data.get("iat"), int):
        return None
    if data["iat"] + max_age_s < time.time() or data["iat"] > time.time() + 300:
        return None
    sid = data.get("s")
    return SessionData(csrf=data["c"], session_id=sid if isinstance(sid, str) else None, issued_at=float(data["iat"]))


def new_session(*, session_id: str | None = None) -> SessionData:
    return SessionData(csrf=secrets.token_urlsafe(24), session_id=session_id, issued_at=time.time())


def cookie_secure(request: Request) -> bool:
    """Secure when the request came over https, or always with ``ATELIER_COOKIE_SECURE=true`` (TLS proxy)."""
    settings: Settings = request.app.state.settings
    return bool(settings.cookie_secure) or request.url.scheme == "https"


def write_session(request: Request, response: Response, data: SessionData, *, max_age_s: int) -> None:
    """Set the cookie: HTTP-only, SameSite=Lax, Secure over https (or always, see ``cookie_secure``)."""
    response.set_cookie(
        COOKIE, signer_for(request).dumps(data.to_json()), max_age=max_age_s, path="/", httponly=True,
        samesite="lax", secure=cookie_secure(request),
    )


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=cookie_secure(request))


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC), PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def viewer_from(session: Session, data: SessionData | None) -> Viewer | None:
    """The signed-in viewer, or None when the cookie is anonymous, or its session was signed out, expired or
    deleted, or the session's key was revoked or deleted."""
    if data is None or data.session_id is None:
        return None
    row = session.get(DashboardSession, data.session_id)
    if row is None or row.revoked_at is not None or _utc(row.expires_at) <= datetime.now(UTC):
        return None
    key = session.get(ApiKey, row.key_id)
    if key is None or key.revoked_at is not None or key.tenant_id != row.tenant_id:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    if tenant is None:
        return None
    return Viewer(tenant_id=tenant.id, tenant_name=tenant.name, key_id=key.id, key_prefix=key.prefix,
                  csrf=data.csrf, session_id=row.id)


def sign_in(session: Session, api_key: str, *, max_age_s: int) -> SessionData:
    """Check the key exactly as the JSON API does (``authenticate``) and record a session; Unauthorized
    otherwise. The caller commits."""
    _tenant, key = authenticate_key(session, api_key.strip())
    row = start_dashboard_session(session, key, max_age_s=max_age_s)
    return new_session(session_id=row.id)


def sign_out(session: Session, session_id: str | None) -> None:
    """End a server-side session (every copy of its cookie is signed out); the caller commits."""
    if session_id is not None:
        end_dashboard_session(session, session_id)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))

"""Tenants, API keys and dashboard sessions. A key is ``atl_<prefix>_<secret>``; only its SHA-256 is stored.

Revoking a key stops it at the next request and ends the dashboard sessions signed in with it.

Roles: an ``admin`` key may also issue, list and revoke the tenant's keys; a ``member`` key does everything else
(and may revoke itself, the one thing to do with a key that leaked). A tenant's first key is an admin key, new keys
are members unless asked otherwise, and the tenant's last active admin key cannot be revoked (nobody could
manage keys through the API after it; an operator still can, with ``atelier keys`` on the database)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from atelier_contracts.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from .models import KEY_ROLES, ApiKey, DashboardSession, Tenant, utcnow

MAX_ACTIVE_KEYS = 100  # per tenant: a leaked key cannot mint keys without bound
KEY_NAME_MAX = 200


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """Create a tenant and its first API key; the key is returned once and never stored."""
    if session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise Conflict(f"tenant {name!r} already exists", field="name")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant, issue_key(session, tenant.id)


def issue_key(session: Session, tenant_id: str, name: str = "default", *, role: str = "admin") -> str:
    """A new key for the system's own callers (tenant creation, the demo): an admin key unless told, no cap."""
    return create_key(session, tenant_id, name, role=role, capped=False)[1]


def create_key(session: Session, tenant_id: str, name: str = "default", *, role: str = "member",
               capped: bool = True) -> tuple[ApiKey, str]:
    """A new key of the tenant: its row and the key itself (returned once, never stored).

    ``role``: ``admin`` or ``member`` (InvalidInput naming ``role`` otherwise).
    ``capped``: refuse when the tenant already has ``MAX_ACTIVE_KEYS`` active keys (InvalidInput)."""
    if role not in KEY_ROLES:
        raise InvalidInput(f"a key's role is one of {', '.join(KEY_ROLES)}, not {role!r}", field="role")
    name = name.strip()
    if not name or len(name) > KEY_NAME_MAX:
        raise InvalidInput(f"a key name is 1 to {KEY_NAME_MAX} characters", field="name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput("a key name cannot hold control characters", field="name")
    if capped:
        active = session.scalar(select(func.count()).select_from(ApiKey)
                                .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))) or 0
        if active >= MAX_ACTIVE_KEYS:
            raise InvalidInput(f"a tenant may have at most {MAX_ACTIVE_KEYS} active API keys: revoke one first",
                               field="name")
    prefix = secrets.token_hex(4)
    key = f"atl_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant_id, prefix=prefix, hash=hash_key(key), name=name, role=role)
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, tenant_id: str) -> Sequence[ApiKey]:
    """The tenant's keys, revoked ones included, oldest first."""
    return session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)
                           .order_by(ApiKey.created_at, ApiKey.id)).all()


def require_admin(role: str, action: str) -> None:
    """Forbidden unless ``role`` (the calling key's) is ``admin``; ``action`` names what was asked."""
    if role != "admin":
        raise Forbidden(f"this API key's role is {role!r}: only an admin key may {action}")


def revoke_key(session: Session, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke one of the tenant's keys and end the dashboard sessions signed in with it.

    Another tenant's key is NotFound, exactly like a key that does not exist. Revoking a revoked key
    changes nothing (its first ``revoked_at`` stays). The tenant's last active admin key is a Conflict."""
    # FOR UPDATE on the tenant's active admin keys: two admins revoking each other's keys at once cannot both pass
    # the last-admin check (SQLite serialises writers anyway)
    admins = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.role == "admin",
                                                  ApiKey.revoked_at.is_(None)).with_for_update()).all()
    row = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id))
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    now = utcnow()
    if row.revoked_at is None and row.role == "admin" and len(admins) <= 1:
        raise Conflict(f"{key_id} is the tenant's last active admin key: issue another admin key before revoking "
                       "it", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = now
    session.execute(update(DashboardSession)
                    .where(DashboardSession.key_id == row.id, DashboardSession.revoked_at.is_(None))
                    .values(revoked_at=now))
    session.flush()
    return row


def find_tenant(session: Session, id_or_name: str) -> Tenant:
    """A tenant by id or by name (what the CLI takes); NotFound otherwise."""
    tenant = session.scalar(select(Tenant).where(or_(Tenant.id == id_or_name, Tenant.name == id_or_name)))
    if tenant is None:
        raise NotFound(f"no tenant with id or name {id_or_name!r}", field="tenant")
    return tenant


def start_dashboard_session(session: Session, key: ApiKey, *, max_age_s: int) -> DashboardSession:
    """Record a dashboard sign-in made with ``key``; expired sessions (anyone's) are dropped on the way."""
    now = utcnow()
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
    row = DashboardSession(tenant_id=key.tenant_id, key_id=key.id, created_at=now,
                           expires_at=now + timedelta(seconds=max_age_s))
    session.add(row)
    session.flush()
    return row


def end_dashboard_session(session: Session, session_id: str) -> None:
    """Sign-out: the session stays on record, revoked, until it expires."""
    session.execute(update(DashboardSession)
                    .where(DashboardSession.id == session_id, DashboardSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))


def authenticate(session: Session, key: str) -> Tenant:
    """The tenant that owns ``key``; Unauthorized for anything else."""
    return authenticate_key(session, key)[0]


def authenticate_key(session: Session, key: str) -> tuple[Tenant, ApiKey]:
    """The tenant that owns ``key`` and the key's row; Unauthorized for anything else."""
    found = key_owner(session, key)
    tenant, row = session.get(Tenant, found.tenant_id), session.get(ApiKey, found.key_id)
    if tenant is None or row is None:  # deleted between the two reads
        raise Unauthorized("unknown or revoked API key")
    return tenant, row


@dataclass(frozen=True)
class KeyOwner:
    """Who holds an API key: its tenant (id and name) and the key (id and role)."""

    tenant_id: str
    tenant_name: str
    key_id: str
    role: str


# built once: every request of the API starts with this read (a statement built per call costs more than its query)
_ACTIVE_KEYS_OF_PREFIX = (
    select(ApiKey.hash, ApiKey.id, ApiKey.role, Tenant.id, Tenant.name)
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .where(ApiKey.prefix == bindparam("prefix"), ApiKey.revoked_at.is_(None))
)


def key_owner(session: Session, key: str) -> KeyOwner:
    """Whose key ``key`` is, in one query of plain columns (no ORM objects); Unauthorized for anything else."""
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "atl":
        raise Unauthorized("malformed API key")
    digest = hash_key(key)
    for stored, key_id, role, tenant_id, tenant_name in session.execute(_ACTIVE_KEYS_OF_PREFIX,
                                                                        {"prefix": parts[1]}):
        if hmac.compare_digest(stored, digest):
            return KeyOwner(tenant_id=tenant_id, tenant_name=tenant_name, key_id=key_id, role=role)
    raise Unauthorized("unknown or revoked API key")

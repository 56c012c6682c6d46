"""Tenants and API keys. A key is ``atl_<prefix>_<secret>``; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from atelier_contracts.errors import Conflict, Unauthorized
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey, Tenant


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


def issue_key(session: Session, tenant_id: str, name: str = "default") -> str:
    prefix = secrets.token_hex(4)
    key = f"atl_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(tenant_id=tenant_id, prefix=prefix, hash=hash_key(key), name=name))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> Tenant:
    """The tenant that owns ``key``; Unauthorized for anything else."""
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "atl":
        raise Unauthorized("malformed API key")
    digest = hash_key(key)
    rows = session.scalars(select(ApiKey).where(ApiKey.prefix == parts[1], ApiKey.revoked_at.is_(None)))
    for row in rows:
        if hmac.compare_digest(row.hash, digest):
            tenant = session.get(Tenant, row.tenant_id)
            if tenant is not None:
                return tenant
    raise Unauthorized("unknown or revoked API key")

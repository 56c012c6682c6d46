"""Migration 0003 (server-side dashboard sessions): runs on SQLite and PostgreSQL, matches the models, cascades."""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.models import ApiKey, Base, DashboardSession, Tenant, utcnow
from atelier_migrations import config, upgrade
from sqlalchemy import func, inspect, select

TABLE = "dashboard_sessions"



def _diff_on_sessions(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    return [d for d in diffs if TABLE in repr(d)]


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        names = inspect(engine).get_table_names()
        assert TABLE in names
        indexed = {tuple(i["column_names"]) for i in inspect(engine).get_indexes(TABLE)}
        assert {("key_id",), ("tenant_id",), ("expires_at",)} <= indexed
        fks = {fk["referred_table"]: fk["options"].get("ondelete") for fk in inspect(engine).get_foreign_keys(TABLE)}
        assert fks == {"tenants": "CASCADE", "api_keys": "CASCADE"}
    finally:
        engine.dispose()
    assert _diff_on_sessions(db_url) == []  # the migration creates exactly what the model says
    command.downgrade(config(db_url), "0002")
    engine = make_engine(db_url)
    try:
        names = inspect(engine).get_table_names()
        assert TABLE not in names and {"api_keys", "webhooks", "brands"} <= set(names)
    finally:
        engine.dispose()
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        assert TABLE in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_deleted_tenant_takes_its_sessions_along(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    try:
        with session_scope(factory) as s:
            tenant, _key = create_tenant(s, "acme")
            key = s.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant.id))
            assert key is not None
            s.add(DashboardSession(tenant_id=tenant.id, key_id=key.id, expires_at=utcnow() + timedelta(days=1)))
            tenant_id = tenant.id
        with session_scope(factory) as s:
            assert s.scalar(select(func.count()).select_from(DashboardSession)) == 1
            s.delete(s.get(Tenant, tenant_id))
        with session_scope(factory) as s:
            assert s.scalar(select(func.count()).select_from(DashboardSession)) == 0
    finally:
        engine.dispose()

"""Migration 0006 (API key roles): keys made before roles keep managing keys (admin), new rows are members; runs
on SQLite and PostgreSQL and matches the model."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from atelier_control.db import make_engine
from atelier_control.models import Base
from atelier_migrations import config, upgrade
from sqlalchemy import inspect, text


def test_old_keys_become_admins_and_new_rows_members(db_url: str) -> None:
    command.upgrade(config(db_url), "0005")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO api_keys (id, tenant_id, prefix, hash, name, created_at) VALUES "
                              "('key_old', 'ten_1', 'aaaa', 'h1', 'default', CURRENT_TIMESTAMP)"))
    finally:
        engine.dispose()
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO api_keys (id, tenant_id, prefix, hash, name, created_at) VALUES "
                              "('key_new', 'ten_1', 'bbbb', 'h2', 'ci', CURRENT_TIMESTAMP)"))
            roles = dict(conn.execute(text("SELECT id, role FROM api_keys")).all())
            assert roles == {"key_old": "admin", "key_new": "member"}
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diffs if "api_keys" in repr(d)] == []
    finally:
        engine.dispose()
    command.downgrade(config(db_url), "0005")
    engine = make_engine(db_url)
    try:
        assert "role" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
    finally:
        engine.dispose()
    upgrade(db_url)

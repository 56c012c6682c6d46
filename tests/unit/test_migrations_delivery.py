"""Migration 0002 (brand kits, webhooks, webhook deliveries): runs on SQLite and PostgreSQL, matches the models."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from atelier_control.db import make_engine
from atelier_control.models import Base
from atelier_migrations import config, upgrade
from sqlalchemy import inspect

TABLES = {"brands", "webhooks", "webhook_deliveries", "webhook_cursor"}



def _diff_on_my_tables(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()

    def table_of(d: object) -> str | None:
        item = d[0] if isinstance(d, list) else d
        obj = item[1] if isinstance(item, tuple) and len(item) > 1 else None
        table = getattr(obj, "table", obj)
        return getattr(table, "name", None) if table is not None else (item[2] if isinstance(item, tuple) else None)

    return [d for d in diffs if table_of(d) in TABLES]


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        uniques = {u["name"] for u in inspect(engine).get_unique_constraints("webhook_deliveries")}
        assert "uq_webhook_deliveries_webhook_event" in uniques  # no event queued twice for an endpoint
    finally:
        engine.dispose()
    assert _diff_on_my_tables(db_url) == []  # the migration creates exactly what the models say
    command.downgrade(config(db_url), "0001")
    engine = make_engine(db_url)
    try:
        assert not TABLES & set(inspect(engine).get_table_names())
        assert "jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    upgrade(db_url)

"""Migrations 0004 (a job's external_id and metadata) and 0005 (a webhook's previous secret and format): run on
SQLite and PostgreSQL, match the models, and rows stored before them read back with the defaults."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from atelier_control.db import make_engine
from atelier_control.models import Base
from atelier_migrations import config, upgrade
from sqlalchemy import inspect, text


def test_upgrade_keeps_old_jobs_and_matches_the_model(db_url: str) -> None:
    command.upgrade(config(db_url), "0003")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO jobs (id, tenant_id, kind, status, spec, request_hash, gpu_seconds, "
                              "created_at, updated_at) VALUES ('job_old', 'ten_1', 'story', 'queued', '{}', 'h', 0, "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO webhooks (id, tenant_id, url, secret, events, enabled, created_at, "
                              "updated_at) VALUES ('whk_old', 'ten_1', 'https://x.example/h', 'whsec_eA==', '[]', "
                              "true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    finally:
        engine.dispose()
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
        assert {"external_id", "metadata"} <= columns
        indexed = {tuple(i["column_names"]) for i in inspect(engine).get_indexes("jobs")}
        assert ("tenant_id", "external_id") in indexed
        with engine.connect() as conn:
            row = conn.execute(text("SELECT external_id, metadata FROM jobs WHERE id = 'job_old'")).one()
            assert row[0] is None and row[1] in ({}, "{}")
            hook = conn.execute(text("SELECT format, previous_secret FROM webhooks WHERE id = 'whk_old'")).one()
            assert hook[0] == "standard" and hook[1] is None
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diffs if "jobs" in repr(d) or "webhooks" in repr(d)] == []
    finally:
        engine.dispose()
    command.downgrade(config(db_url), "0003")
    engine = make_engine(db_url)
    try:
        assert "external_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        assert "format" not in {c["name"] for c in inspect(engine).get_columns("webhooks")}
    finally:
        engine.dispose()
    upgrade(db_url)

"""``atelier keys create|ls|revoke --tenant``: on the database directly (the embedded SQLite file here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from atelier.cli import app
from atelier_contracts.errors import Unauthorized
from atelier_control.auth import authenticate, list_keys
from atelier_control.db import engine_from_settings, session_factory, session_scope
from atelier_control.models import DashboardSession, utcnow
from atelier_runtime.settings import Settings
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

KEY = re.compile(r"api key \(store it now, it is not shown again\): (atl_\S+)")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("ATELIER_BROKER_URL", "ATELIER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def factory(home: Path) -> Iterator[sessionmaker[Session]]:
    engine = engine_from_settings(Settings(home=home))
    yield session_factory(engine)
    engine.dispose()


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def tenant(name: str) -> tuple[str, str]:
    out = run("tenants", "create", name)
    tenant_id = re.search(r"tenant (ten_\w+)", out).group(1)  # type: ignore[union-attr]
    return tenant_id, KEY.search(out).group(1)  # type: ignore[union-attr]


def check(factory: sessionmaker[Session], key: str) -> str | None:
    """The tenant id the key authenticates as, or None when it is refused."""
    with factory() as s:
        try:
            return authenticate(s, key).id
        except Unauthorized:
            return None


def test_create_ls_revoke(home: Path, factory: sessionmaker[Session]) -> None:
    acme_id, first = tenant("acme")
    out = run("keys", "create", "ci", "--tenant", "acme")
    key = KEY.search(out).group(1)  # type: ignore[union-attr]
    key_id = re.search(r"key (key_\w+) \(ci\) of tenant acme", out).group(1)  # type: ignore[union-attr]
    assert check(factory, key) == acme_id and key != first

    listed = json.loads(run("keys", "ls", "--tenant", acme_id, "--json"))  # by id as well as by name
    assert [k["name"] for k in listed] == ["default", "ci"] and listed[1]["id"] == key_id
    assert all(set(k) == {"id", "name", "role", "prefix", "created_at", "revoked_at"} and k["revoked_at"] is None
               for k in listed)
    assert [k["role"] for k in listed] == ["admin", "member"]  # the tenant's first key is its admin
    assert json.loads(run("keys", "list", "--tenant", acme_id, "--json")) == listed  # `list` spells `ls` too
    table = run("keys", "ls", "--tenant", "acme")
    assert key_id in table and "active" in table and key.split("_", 2)[2] not in table

    with session_scope(factory) as s:  # a dashboard session signed in with the key
        s.add(DashboardSession(id="dss_cli", tenant_id=acme_id, key_id=key_id,
                               expires_at=utcnow() + timedelta(days=1)))
    out = run("keys", "revoke", key_id, "--tenant", "acme")
    assert f"revoked key {key_id} (ci)" in out
    assert check(factory, key) is None and check(factory, first) == acme_id
    with factory() as s:
        session = s.get(DashboardSession, "dss_cli")
        assert session is not None and session.revoked_at is not None
    listed = json.loads(run("keys", "ls", "--tenant", "acme", "--json"))
    assert [k["revoked_at"] is not None for k in listed] == [False, True]
    assert "revoked 20" in run("keys", "ls", "--tenant", "acme")


def test_other_tenants_keys_and_unknown_names_are_errors(home: Path, factory: sessionmaker[Session]) -> None:
    acme_id, acme_key = tenant("acme")
    tenant("globex")
    with factory() as s:
        acme_key_id = list_keys(s, acme_id)[0].id
    err = CliRunner().invoke(app, ["keys", "revoke", acme_key_id, "--tenant", "globex"])
    assert err.exit_code == 1 and "not found" in err.output
    assert check(factory, acme_key) == acme_id  # untouched
    err = CliRunner().invoke(app, ["keys", "create", "ci", "--tenant", "nobody"])
    assert err.exit_code == 1 and "no tenant" in err.output
    err = CliRunner().invoke(app, ["keys", "create", "   ", "--tenant", "acme"])
    assert err.exit_code == 1 and "name" in err.output
    assert [k["name"] for k in json.loads(run("keys", "ls", "--tenant", "acme", "--json"))] == ["default"]
    assert CliRunner().invoke(app, ["keys", "ls"]).exit_code == 2  # --tenant is required

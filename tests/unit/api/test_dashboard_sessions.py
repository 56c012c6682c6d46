"""Server-side dashboard sessions: sign-out and key revocation end a session on the server (a copied cookie is
signed out too), anonymous visitors get a CSRF-only cookie and no row, and ``cookie_secure`` forces Secure."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from api_testkit import CSRF_INPUT, CSRF_META, TenantCtx, sign_in
from atelier_api import create_app
from atelier_api.dashboard.session import COOKIE, Signer, resolve_secret
from atelier_control.db import session_scope
from atelier_control.models import ApiKey, DashboardSession, utcnow
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker


def signed_in(client: TestClient, cookie: str | None = None) -> bool:
    """Whether the dashboard lets this client (or a client holding only ``cookie``) in."""
    if cookie is not None:
        client.cookies.clear()
        client.cookies.set(COOKIE, cookie)
    r = client.get("/dashboard/jobs", follow_redirects=False)
    assert r.status_code in (200, 303), r.text
    if r.status_code == 303:
        assert r.headers["location"].startswith("/dashboard/login")
    return r.status_code == 200


def new_key(client: TestClient, tenant: TenantCtx, name: str = "dashboard") -> dict[str, Any]:
    r = client.post("/v1/keys", json={"name": name}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def sessions(factory: sessionmaker[Session]) -> list[DashboardSession]:
    with factory() as s:
        return list(s.scalars(select(DashboardSession).order_by(DashboardSession.created_at)))


def cookie_payload(settings: Settings, value: str) -> dict[str, Any]:
    data = Signer(resolve_secret(settings)).loads(value)
    assert data is not None
    return data


def test_the_cookie_names_a_server_side_session_and_nothing_else(client: TestClient, tenant: TenantCtx,
                                                                 settings: Settings,
                                                                 factory: sessionmaker[Session]) -> None:
    sign_in(client, tenant.key)
    data = cookie_payload(settings, client.cookies[COOKIE])
    assert set(data) == {"c", "iat", "s"}  # csrf, issued at, session id: no tenant, no key id
    [row] = sessions(factory)
    assert row.id == data["s"] and row.tenant_id == tenant.id and row.revoked_at is None
    with factory() as s:
        key = s.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant.id))
        assert key is not None and row.key_id == key.id
    lifetime = row.expires_at - row.created_at
    assert abs(lifetime.total_seconds() - settings.session_max_age_s) < 5


def test_anonymous_visitors_get_a_csrf_cookie_and_no_row(client: TestClient, settings: Settings,
                                                         factory: sessionmaker[Session]) -> None:
    page = client.get("/dashboard/login")
    data = cookie_payload(settings, client.cookies[COOKIE])
    assert set(data) == {"c", "iat"} and CSRF_INPUT.search(page.text).group(1) == data["c"]  # type: ignore[union-attr]
    assert sessions(factory) == []
    assert not signed_in(client)


def test_sign_out_ends_the_session_on_the_server(app: Any, client: TestClient, tenant: TenantCtx,
                                                 factory: sessionmaker[Session]) -> None:
    csrf = sign_in(client, tenant.key)
    copied = client.cookies[COOKIE]
    with TestClient(app) as thief:
        assert signed_in(thief, copied)  # a copy works while the session lives
        r = client.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert not signed_in(client)
        assert not signed_in(thief, copied)  # replayed after sign-out: signed out, though its signature holds
        assert thief.post("/dashboard/logout", data={"csrf_token": csrf}).status_code == 401
    [row] = sessions(factory)
    assert row.revoked_at is not None


def test_revoking_the_key_signs_its_dashboard_sessions_out(app: Any, client: TestClient, tenant: TenantCtx,
                                                           factory: sessionmaker[Session]) -> None:
    made = new_key(client, tenant)
    sign_in(client, made["key"])
    with TestClient(app) as other:
        sign_in(other, tenant.key)  # a session of the tenant's other key
        assert signed_in(client) and signed_in(other)
        assert client.post(f"/v1/keys/{made['id']}/revoke", headers=tenant.headers).status_code == 200
        assert not signed_in(client)
        r = client.get("/dashboard/jobs", headers={"X-Requested-With": "fetch"})
        assert r.status_code == 401  # scripts are told to sign in again
        assert signed_in(other)  # only that key's sessions end
    rows = {row.key_id: row for row in sessions(factory)}
    assert rows[made["id"]].revoked_at is not None
    assert [r.revoked_at for k, r in rows.items() if k != made["id"]] == [None]
    # and the revoked key cannot sign in again
    page = client.get("/dashboard/login")
    token = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/dashboard/login", data={"api_key": made["key"], "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 401 and "not accepted" in r.text


def test_a_key_revoked_from_the_cli_path_signs_out_too(client: TestClient, tenant: TenantCtx,
                                                       factory: sessionmaker[Session]) -> None:
    """The per-request key check stands on its own: a key revoked without touching its sessions still signs out."""
    sign_in(client, tenant.key)
    with session_scope(factory) as s:
        for key in s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)):
            key.revoked_at = utcnow()
    assert sessions(factory)[0].revoked_at is None
    assert not signed_in(client)


def test_expired_or_deleted_rows_sign_out_even_with_a_fresh_cookie(client: TestClient, tenant: TenantCtx,
                                                                   factory: sessionmaker[Session]) -> None:
    sign_in(client, tenant.key)
    good = client.cookies[COOKIE]
    with session_scope(factory) as s:
        row = s.scalars(select(DashboardSession)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert not signed_in(client, good)
    with session_scope(factory) as s:
        row = s.scalars(select(DashboardSession)).one()
        row.expires_at = utcnow() + timedelta(hours=1)
    assert signed_in(client, good)
    with session_scope(factory) as s:
        s.delete(s.scalars(select(DashboardSession)).one())
    assert not signed_in(client, good)


def test_signing_in_again_ends_the_previous_session_and_prunes_expired_ones(
        client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    made = new_key(client, tenant)
    csrf = sign_in(client, tenant.key)
    first = client.cookies[COOKIE]
    with session_scope(factory) as s:  # someone's long-expired session
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id)).first()
        s.add(DashboardSession(id="dss_old", tenant_id=tenant.id, key_id=key_id,
                               expires_at=utcnow() - timedelta(days=1)))
    r = client.post("/dashboard/login", data={"api_key": made["key"], "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert signed_in(client)
    second = client.cookies[COOKIE]
    assert second != first
    rows = {row.id: row for row in sessions(factory)}
    assert "dss_old" not in rows and len(rows) == 2
    assert sum(row.revoked_at is None for row in rows.values()) == 1
    assert not signed_in(client, first)
    assert signed_in(client, second)


def test_a_refused_sign_in_ends_the_session_the_browser_had(client: TestClient, tenant: TenantCtx,
                                                            factory: sessionmaker[Session]) -> None:
    csrf = sign_in(client, tenant.key)
    first = client.cookies[COOKIE]
    r = client.post("/dashboard/login", data={"api_key": "atl_nope_nope", "csrf_token": csrf},
                    follow_redirects=False)
    assert r.status_code == 401
    assert not signed_in(client, first)


def test_a_forged_login_post_cannot_sign_anyone_out(client: TestClient, tenant: TenantCtx,
                                                    factory: sessionmaker[Session]) -> None:
    sign_in(client, tenant.key)
    good = client.cookies[COOKIE]
    r = client.post("/dashboard/login", data={"api_key": "x", "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 401
    assert signed_in(client, good)  # the session row was not touched
    assert sessions(factory)[0].revoked_at is None


# ---------------------------------------------------------------- the Secure flag


def _app(settings: Settings, engine: Engine, store: LocalStore, celery: Any) -> Any:
    return create_app(settings, engine=engine, store=store, celery=celery, runtime=MemoryRuntime())


def test_cookie_secure_forces_secure_over_plain_http(settings: Settings, engine: Engine, store: LocalStore,
                                                     celery: Any, tenant: TenantCtx) -> None:
    forced = settings.model_copy(update={"cookie_secure": True})
    with TestClient(_app(forced, engine, store, celery)) as c:
        page = c.get("/dashboard/login")
        assert c.base_url.scheme == "http"
        assert "Secure" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
        token = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]
        # the client would not send a Secure cookie back over http; hand it over as a proxy's browser would
        c.cookies.set(COOKIE, page.cookies[COOKIE])
        r = c.post("/dashboard/login", data={"api_key": tenant.key, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
        c.cookies.set(COOKIE, r.cookies[COOKIE])
        csrf = CSRF_META.search(c.get("/dashboard/jobs").text).group(1)  # type: ignore[union-attr]
        out = c.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
        assert out.status_code == 303 and "Secure" in out.headers["set-cookie"] and COOKIE in out.headers["set-cookie"]


def test_by_default_secure_follows_the_request_scheme(settings: Settings, engine: Engine, store: LocalStore,
                                                      celery: Any) -> None:
    assert settings.cookie_secure is None
    app = _app(settings, engine, store, celery)
    with TestClient(app) as plain, TestClient(app, base_url="https://testserver") as tls:
        assert "Secure" not in plain.get("/dashboard/login").headers["set-cookie"]
        assert "Secure" in tls.get("/dashboard/login").headers["set-cookie"]


def test_the_setting_reads_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("ATELIER_COOKIE_SECURE", "true")
    assert Settings().cookie_secure is True
    monkeypatch.delenv("ATELIER_COOKIE_SECURE")
    assert Settings().cookie_secure is None


def test_no_rows_are_written_by_browsing(client: TestClient, tenant: TenantCtx, engine: Engine) -> None:
    sign_in(client, tenant.key)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(DashboardSession)).scalar()
        snapshot = conn.execute(select(DashboardSession.__table__)).all()
    for path in ("/dashboard/jobs", "/dashboard/system", "/dashboard/jobs?status=failed"):
        assert client.get(path).status_code == 200
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DashboardSession)).scalar() == before == 1
        assert conn.execute(select(DashboardSession.__table__)).all() == snapshot

"""``/v1/keys``: issue (shown once), list (never a secret), revoke (refused from the next request on), per tenant;
and the SDK's ``create_key`` / ``keys`` / ``revoke_key`` over the same routes."""

from __future__ import annotations

from typing import Any

import pytest
from api_testkit import TenantCtx, sdk_over
from atelier_control import auth
from atelier_control.auth import hash_key
from atelier_control.models import ApiKey
from atelier_sdk import ApiError, ApiKeyInfo
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def issue(client: TestClient, tenant: TenantCtx, name: str = "ci", role: str | None = None) -> dict[str, Any]:
    body = {"name": name} if role is None else {"name": name, "role": role}
    r = client.post("/v1/keys", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_issue_list_use_revoke(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    made = issue(client, tenant, "  ci  ")
    key = made["key"]
    assert key.startswith(f"atl_{made['prefix']}_") and made["id"].startswith("key_")
    assert made["name"] == "ci" and made["revoked_at"] is None and made["created_at"] and made["role"] == "member"
    # only the hash is stored
    with factory() as s:
        row = s.get(ApiKey, made["id"])
        assert row is not None and row.hash == hash_key(key) and row.tenant_id == tenant.id

    # the list: both keys, no secret, no hash
    r = client.get("/v1/keys", headers=tenant.headers)
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["name"] for i in items] == ["default", "ci"]
    assert all(set(i) == {"id", "name", "role", "prefix", "created_at", "revoked_at"} for i in items)
    assert [i["role"] for i in items] == ["admin", "member"]  # the tenant's first key is its admin key
    assert key not in r.text and key.split("_", 2)[2] not in r.text and hash_key(key) not in r.text
    assert tenant.key.split("_", 2)[2] not in r.text

    # the new key works like any other, but a member key does not manage keys
    assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    forbidden = client.get("/v1/keys", headers=bearer(key))
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]

    # revoked: refused from the very next request on; the tenant's other key keeps working
    r = client.post(f"/v1/keys/{made['id']}/revoke", headers=tenant.headers)
    assert r.status_code == 200, r.text
    revoked_at = r.json()["revoked_at"]
    assert revoked_at is not None and "key" not in r.json()
    denied = client.get("/v1/jobs", headers=bearer(key))
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert denied.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200
    listed = {i["id"]: i for i in client.get("/v1/keys", headers=tenant.headers).json()["items"]}
    assert listed[made["id"]]["revoked_at"] == revoked_at

    # revoking again changes nothing (the first revocation time stays)
    again = client.post(f"/v1/keys/{made['id']}/revoke", headers=tenant.headers)
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked_at


def test_a_key_may_revoke_itself(client: TestClient, tenant: TenantCtx) -> None:
    made = issue(client, tenant)
    r = client.post(f"/v1/keys/{made['id']}/revoke", headers=bearer(made["key"]))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert client.get("/v1/keys", headers=bearer(made["key"])).status_code == 401
    assert client.post("/v1/keys", json={"name": "x"}, headers=bearer(made["key"])).status_code == 401


def test_delete_revokes_too(client: TestClient, tenant: TenantCtx) -> None:
    """DELETE /v1/keys/{id} is the REST spelling of revoke: the row stays, listed as revoked; the key is refused."""
    made = issue(client, tenant)
    r = client.delete(f"/v1/keys/{made['id']}", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert client.get("/v1/keys", headers=bearer(made["key"])).status_code == 401
    listed = {k["id"]: k for k in client.get("/v1/keys", headers=tenant.headers).json()["items"]}
    assert listed[made["id"]]["revoked_at"] is not None
    assert client.delete("/v1/keys/key_nope", headers=tenant.headers).status_code == 404


def test_another_tenants_key_is_404_and_untouched(client: TestClient, tenant: TenantCtx,
                                                  other_tenant: TenantCtx) -> None:
    made = issue(client, tenant)
    r = client.post(f"/v1/keys/{made['id']}/revoke", headers=other_tenant.headers)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    nothing = client.post("/v1/keys/key_0123456789abcdef0123456789abcdef/revoke", headers=other_tenant.headers)
    assert nothing.status_code == 404
    assert r.json()["title"] == nothing.json()["title"]
    # the key still works and the other tenant never sees it
    assert client.get("/v1/jobs", headers=bearer(made["key"])).status_code == 200
    theirs = client.get("/v1/keys", headers=other_tenant.headers)
    assert made["id"] not in theirs.text and [i["name"] for i in theirs.json()["items"]] == ["default"]
    # a key minted by one tenant authenticates as that tenant only
    admin = issue(client, tenant, "second-admin", role="admin")
    mine = client.get("/v1/keys", headers=bearer(admin["key"])).json()["items"]
    assert made["id"] in {i["id"] for i in mine}


def test_keys_need_a_bearer_key(client: TestClient) -> None:
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("POST", "/v1/keys/key_x/revoke")):
        r = client.request(method, path, json={"name": "x"} if method == "POST" else None)
        assert r.status_code == 401, (method, path)
    assert client.get("/v1/keys", headers=bearer("atl_nope_nope")).status_code == 401


@pytest.mark.parametrize("body, field", [({}, "name"), ({"name": "   "}, "name"), ({"name": "x" * 201}, "name"),
                                         ({"name": "a\x00b"}, "name"), ({"name": "a\nb"}, "name"),
                                         ({"name": "ok", "scopes": ["all"]}, "scopes"),
                                         ({"name": "ok", "role": "owner"}, "role"), ({"name": "ok", "role": None}, "role")])
def test_bad_bodies_are_422_naming_the_field_and_write_nothing(client: TestClient, tenant: TenantCtx,
                                                                 body: dict[str, Any], field: str) -> None:
    r = client.post("/v1/keys", json=body, headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert field in {e["field"] for e in r.json()["errors"]}
    assert len(client.get("/v1/keys", headers=tenant.headers).json()["items"]) == 1


def test_active_keys_are_capped_and_revoking_frees_a_place(client: TestClient, tenant: TenantCtx,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_ACTIVE_KEYS", 2)
    second = issue(client, tenant, "second")
    r = client.post("/v1/keys", json={"name": "third"}, headers=tenant.headers)
    assert r.status_code == 422 and "at most 2" in r.json()["detail"]
    client.post(f"/v1/keys/{second['id']}/revoke", headers=tenant.headers)
    assert issue(client, tenant, "third")["name"] == "third"


def test_openapi_documents_the_key_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    create = spec["paths"]["/v1/keys"]["post"]
    listing = spec["paths"]["/v1/keys"]["get"]
    revoke = spec["paths"]["/v1/keys/{key_id}/revoke"]["post"]
    assert (create["operationId"], listing["operationId"], revoke["operationId"]) == (
        "create_key", "list_keys", "revoke_key")
    assert "404" in revoke["responses"] and "401" in revoke["responses"]
    assert "application/problem+json" in revoke["responses"]["404"]["content"]
    schemas = spec["components"]["schemas"]
    assert "key" in schemas["ApiKeyCreated"]["properties"]
    assert set(schemas["ApiKeyView"]["properties"]) == {"id", "name", "role", "prefix", "created_at", "revoked_at"}
    assert "403" in create["responses"] and "409" in revoke["responses"]


def test_member_keys_cannot_manage_keys_but_may_revoke_themselves(client: TestClient, tenant: TenantCtx,
                                                                  factory: sessionmaker[Session]) -> None:
    member = issue(client, tenant, "member")
    other = issue(client, tenant, "other")
    for method, path, body in (("POST", "/v1/keys", {"name": "x", "role": "admin"}), ("GET", "/v1/keys", None),
                               ("POST", f"/v1/keys/{other['id']}/revoke", None), ("DELETE", f"/v1/keys/{other['id']}", None),
                               ("POST", f"/v1/keys/{tenant_key_id(client, tenant)}/revoke", None)):
        r = client.request(method, path, json=body, headers=bearer(member["key"]))
        assert r.status_code == 403, (method, path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json") and "member" in r.json()["detail"]
    with factory() as s:  # nothing was written: no new key, nobody revoked
        rows = s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).all()
    assert len(rows) == 3 and all(r.revoked_at is None for r in rows)
    # a member key's other routes stay open, and it may revoke itself (what to do with a leaked key)
    assert client.get("/v1/jobs", headers=bearer(member["key"])).status_code == 200
    assert client.delete(f"/v1/keys/{member['id']}", headers=bearer(member["key"])).status_code == 200
    assert client.get("/v1/jobs", headers=bearer(member["key"])).status_code == 401


def tenant_key_id(client: TestClient, tenant: TenantCtx) -> str:
    return str(client.get("/v1/keys", headers=tenant.headers).json()["items"][0]["id"])


def test_an_admin_key_issues_admins_and_the_last_admin_key_stays(client: TestClient, tenant: TenantCtx) -> None:
    first = tenant_key_id(client, tenant)
    # the tenant's only admin key: revoking it (even by itself) would leave nobody to manage keys
    for path in (f"/v1/keys/{first}/revoke", f"/v1/keys/{first}"):
        r = client.request("POST" if path.endswith("revoke") else "DELETE", path, headers=tenant.headers)
        assert r.status_code == 409 and r.json()["errors"][0]["field"] == "key_id", r.text
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200
    second = issue(client, tenant, "second-admin", role="admin")
    assert second["role"] == "admin"
    assert client.get("/v1/keys", headers=bearer(second["key"])).status_code == 200
    # with a second admin the first may go; then the second is the last one
    assert client.post(f"/v1/keys/{first}/revoke", headers=bearer(second["key"])).status_code == 200
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 401
    assert client.post(f"/v1/keys/{second['id']}/revoke", headers=bearer(second["key"])).status_code == 409
    # a revoked admin key does not count, and revoking it again changes nothing
    again = client.post(f"/v1/keys/{first}/revoke", headers=bearer(second["key"]))
    assert again.status_code == 200 and again.json()["revoked_at"] is not None


def test_revoking_a_key_revokes_its_rows_in_the_database(client: TestClient, tenant: TenantCtx,
                                                         factory: sessionmaker[Session]) -> None:
    made = issue(client, tenant)
    client.post(f"/v1/keys/{made['id']}/revoke", headers=tenant.headers)
    with factory() as s:
        active = s.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))).all()
    assert made["id"] not in active and len(active) == 1


# ---------------------------------------------------------------- the SDK


def test_sdk_create_list_revoke(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx) -> None:
    with sdk_over(client, tenant.key) as atelier:
        made = atelier.create_key("sdk")
        assert isinstance(made, ApiKeyInfo) and made.active and made.key and made.key.startswith("atl_")
        listed = atelier.keys()
        assert [k.name for k in listed] == ["default", "sdk"] and all(k.key is None for k in listed)
        assert made.role == "member" and [k.role for k in listed] == ["admin", "member"]
        with sdk_over(client, made.key) as fresh:
            with pytest.raises(ApiError) as exc:
                fresh.keys()  # a member key does not list keys
            assert exc.value.status == 403
            revoked = fresh.revoke_key(made.id)  # a key may revoke itself
            assert not revoked.active and revoked.revoked_at is not None
            with pytest.raises(ApiError) as exc:
                fresh.keys()
            assert exc.value.status == 401
        admin = atelier.create_key("sdk-admin", role="admin")
        assert admin.role == "admin"
        assert {k.id: k.active for k in atelier.keys()} == {listed[0].id: True, made.id: False, admin.id: True}
    with sdk_over(client, other_tenant.key) as other, pytest.raises(ApiError) as exc:
        other.revoke_key(listed[0].id)
    assert exc.value.status == 404

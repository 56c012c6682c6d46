"""``/v1/keys``: the tenant's API keys — issue one (shown once), list them, revoke one.

A revoked key is refused from the next request on, and the dashboard sessions signed in with it end.
Only the key's SHA-256 is stored; the list never shows a hash or a secret.

Admin-scoped: issuing, listing and revoking keys needs an ``admin`` key (403 otherwise), except that any key may
revoke itself. The tenant's first key is an admin key; keys issued here are ``member`` keys unless the body asks
for ``admin``; the tenant's last active admin key cannot be revoked (409).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

from atelier_control import auth
from atelier_control.models import ApiKey
from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..deps import SessionDep, TenantDep
from ..problems import problem_responses
from ..views import as_utc

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=problem_responses(401, 403))

KeyId = Annotated[str, Path(max_length=64)]
KeyRole = Literal["admin", "member"]
KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=auth.KEY_NAME_MAX)]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName = Field(description="What the key is for (e.g. `ci`, `dashboard-alice`).")
    role: KeyRole = Field("member", description="`member` (the default): every route but key management; `admin`: "
                                                "also issues, lists and revokes the tenant's keys.")


class ApiKeyView(BaseModel):
    id: str
    name: str
    role: KeyRole
    prefix: str = Field(description="The `atl_<prefix>_` part of the key: tells keys apart without the secret.")
    created_at: datetime
    revoked_at: datetime | None = Field(description="When the key was revoked; null while it is active.")


class ApiKeyCreated(ApiKeyView):
    key: str = Field(description="The API key (`atl_...`). Shown in this answer only: store it now.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyView]


def key_view(row: ApiKey) -> ApiKeyView:
    created = as_utc(row.created_at)
    assert created is not None
    return ApiKeyView(id=row.id, name=row.name, role=cast(KeyRole, row.role),
                      prefix=row.prefix, created_at=created, revoked_at=as_utc(row.revoked_at))


@router.post("", status_code=201, response_model=ApiKeyCreated, operation_id="create_key",
             responses=problem_responses(422), summary="Issue a new API key (the answer shows it, this once)")
def create_key(body: ApiKeyCreate, principal: TenantDep, session: SessionDep) -> ApiKeyCreated:
    auth.require_admin(principal.role, "issue API keys")
    row, key = auth.create_key(session, principal.tenant_id, body.name, role=body.role)
    view = key_view(row)
    session.commit()
    return ApiKeyCreated(**view.model_dump(), key=key)


@router.get("", response_model=ApiKeyList, operation_id="list_keys",
            summary="List the tenant's API keys, revoked ones included (no secrets)")
def list_keys(principal: TenantDep, session: SessionDep) -> ApiKeyList:
    auth.require_admin(principal.role, "list API keys")
    return ApiKeyList(items=[key_view(row) for row in auth.list_keys(session, principal.tenant_id)])


@router.post("/{key_id}/revoke", response_model=ApiKeyView, operation_id="revoke_key",
             responses=problem_responses(404, 409),
             summary="Revoke a key: refused from the next request on; its dashboard sessions end")
def revoke_key(key_id: KeyId, principal: TenantDep, session: SessionDep) -> ApiKeyView:
    if key_id != principal.key_id:  # any key may revoke itself
        auth.require_admin(principal.role, "revoke another API key")
    row = auth.revoke_key(session, principal.tenant_id, key_id)
    view = key_view(row)
    session.commit()
    return view


@router.delete("/{key_id}", response_model=ApiKeyView, operation_id="delete_key", responses=problem_responses(404, 409),
               summary="Revoke a key (the same as POST /v1/keys/{id}/revoke; the row stays, listed as revoked)")
def delete_key(key_id: KeyId, principal: TenantDep, session: SessionDep) -> ApiKeyView:
    return revoke_key(key_id, principal, session)

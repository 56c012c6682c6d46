"""``/v1/webhooks``: endpoints (SSRF-guarded), their signing secrets, the delivery log and redelivery."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from .. import webhooks as service
from ..deps import SessionDep, SettingsDep, TenantDep
from ..problems import problem_responses

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=problem_responses(401, 422))

WebhookId = Annotated[str, Path(max_length=64)]
DeliveryId = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=service.WebhookView,
             summary="Register an endpoint (the answer carries its whsec_ secret, shown this once)")
def create_webhook(body: service.WebhookCreate, principal: TenantDep, session: SessionDep,
                   settings: SettingsDep) -> service.WebhookView:
    return service.create(session, settings, tenant_id=principal.tenant_id, body=body)


@router.get("", response_model=service.WebhookList, summary="List endpoints")
def list_webhooks(principal: TenantDep, session: SessionDep) -> service.WebhookList:
    return service.list_webhooks(session, tenant_id=principal.tenant_id)


@router.get("/{webhook_id}", response_model=service.WebhookView, responses=problem_responses(404),
            summary="Read an endpoint")
def get_webhook(webhook_id: WebhookId, principal: TenantDep, session: SessionDep) -> service.WebhookView:
    return service.webhook_view(service.get_webhook(session, tenant_id=principal.tenant_id, webhook_id=webhook_id))


@router.patch("/{webhook_id}", response_model=service.WebhookView, responses=problem_responses(404),
              summary="Change an endpoint's URL, events, description or enabled flag")
def update_webhook(webhook_id: WebhookId, body: service.WebhookUpdate, principal: TenantDep, session: SessionDep,
                   settings: SettingsDep) -> service.WebhookView:
    return service.update(session, settings, tenant_id=principal.tenant_id, webhook_id=webhook_id, body=body)


@router.delete("/{webhook_id}", status_code=204, response_class=Response, responses=problem_responses(404),
               summary="Delete an endpoint and its delivery log")
def delete_webhook(webhook_id: WebhookId, principal: TenantDep, session: SessionDep) -> Response:
    service.delete(session, tenant_id=principal.tenant_id, webhook_id=webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", response_model=service.WebhookView, responses=problem_responses(404),
             summary="Replace the signing secret (the answer carries the new one; the old one keeps signing "
                     "for grace_s seconds)")
def rotate_secret(
    webhook_id: WebhookId, principal: TenantDep, session: SessionDep,
    grace_s: Annotated[int, Query(ge=0, le=service.MAX_GRACE_S, description=(
        "Seconds during which every message carries a signature with the old secret too (default 24 h; 0: the old "
        "secret stops signing now)."))] = 86400,
) -> service.WebhookView:
    return service.rotate_secret(session, tenant_id=principal.tenant_id, webhook_id=webhook_id, grace_s=grace_s)


@router.get("/{webhook_id}/deliveries", response_model=service.DeliveryList, responses=problem_responses(404),
            summary="The delivery log, newest first")
def list_deliveries(
    webhook_id: WebhookId, principal: TenantDep, session: SessionDep,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> service.DeliveryList:
    return service.list_deliveries(session, tenant_id=principal.tenant_id, webhook_id=webhook_id, status=status,
                                   limit=limit, cursor=cursor)


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=service.DeliveryView,
            responses=problem_responses(404), summary="One delivery with its attempts")
def get_delivery(webhook_id: WebhookId, delivery_id: DeliveryId, principal: TenantDep,
                 session: SessionDep) -> service.DeliveryView:
    return service.delivery_view(service.get_delivery(session, tenant_id=principal.tenant_id, webhook_id=webhook_id,
                                                      delivery_id=delivery_id))


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202, response_model=service.DeliveryView,
             responses=problem_responses(404), summary="Send a delivery again (same webhook-id)")
def redeliver(webhook_id: WebhookId, delivery_id: DeliveryId, principal: TenantDep,
              session: SessionDep) -> service.DeliveryView:
    return service.redeliver(session, tenant_id=principal.tenant_id, webhook_id=webhook_id, delivery_id=delivery_id)


@router.post("/{webhook_id}/test", status_code=202, response_model=service.DeliveryView,
             responses=problem_responses(404, 409),
             summary="Send a signed webhook.test event to this endpoint (see its delivery log for the outcome)")
def send_test(webhook_id: WebhookId, principal: TenantDep, session: SessionDep) -> service.DeliveryView:
    return service.send_test(session, tenant_id=principal.tenant_id, webhook_id=webhook_id)

"""Webhook endpoints and their delivery log (the service behind ``/v1/webhooks``).

Registration passes the SSRF guard (``atelier_control.ssrf``: public addresses, and only the ports of
``webhook_allowed_ports`` when that is set) and creates a ``whsec_`` secret, shown on
creation and rotation only. Deliveries are written and sent by the orchestrator's dispatcher
(``atelier_orchestrator.webhooks``); here they are listed and re-queued.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from atelier_contracts.errors import Conflict, InvalidInput, NotFound
from atelier_control.events import emit_now, envelope, message_id
from atelier_control.models import Webhook, WebhookDelivery, utcnow
from atelier_control.ssrf import AllowList, check_url, parse_ports
from atelier_runtime.settings import Settings
from atelier_sdk.webhooks import WEBHOOK_EVENTS
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from .jobs import decode_cursor, encode_cursor
from .views import as_utc

EventName = Literal["job.succeeded", "job.failed", "job.canceled", "job.warning", "stage.completed", "artifact.created"]
Url = Annotated[str, StringConstraints(min_length=8, max_length=2000, strip_whitespace=True)]
MAX_WEBHOOKS = 20
LOG_KEEP = 30


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _check_secret(value: str) -> str:
    if not value.startswith("whsec_"):
        raise ValueError("must start with whsec_")
    try:
        raw = base64.b64decode(value[6:], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be whsec_ followed by base64") from exc
    if not 24 <= len(raw) <= 64:
        raise ValueError("must hold 24 to 64 random bytes")
    return value


WebhookFormat = Literal["standard", "slack"]
FORMAT_DOC = ("`standard`: the Standard Webhooks JSON body (`{type, timestamp, data}`); `slack`: a Slack "
              "incoming-webhook message (`{text}`: the event in one line, with its links) for a Slack, Teams or "
              "Mattermost incoming-webhook URL. Both carry the signature headers.")
MAX_GRACE_S = 7 * 24 * 3600


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(description="https:// endpoint that receives the events (public address; SSRF-guarded).")
    events: list[EventName] = Field(default_factory=lambda: list(WEBHOOK_EVENTS), min_length=1,
                                    description="Event types to send.")
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    enabled: bool = True
    secret: str | None = Field(default=None, description="Your own `whsec_...` secret; default: generated.")
    format: WebhookFormat = Field(default="standard", description=FORMAT_DOC)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return None if v is None else _check_secret(v)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    events: list[EventName] | None = Field(default=None, min_length=1)
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    enabled: bool | None = None
    format: WebhookFormat | None = Field(default=None, description=FORMAT_DOC)


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    description: str | None
    created_at: datetime
    format: WebhookFormat = "standard"
    previous_secret_expires_at: datetime | None = Field(
        default=None, description="After a rotation: until when the previous secret also signs every message.")
    secret: str | None = Field(default=None, description="Only in the answers to create and rotate-secret.")


class WebhookList(BaseModel):
    items: list[WebhookView]


class DeliveryView(BaseModel):
    id: str
    webhook_id: str
    event_id: int
    event_type: str
    message_id: str = Field(description="The `webhook-id` header: the same on every retry and redelivery.")
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
    log: list[dict[str, Any]] = Field(description="Attempts: {attempt, at, status_code, error, ms}, newest last.")


class DeliveryList(BaseModel):
    items: list[DeliveryView]
    next_cursor: str | None


def webhook_view(h: Webhook, *, secret: bool = False) -> WebhookView:
    created = as_utc(h.created_at)
    assert created is not None
    until = as_utc(h.previous_secret_until) if h.previous_secret else None
    return WebhookView(id=h.id, url=h.url, events=list(h.events or []), enabled=h.enabled, description=h.description,
                       created_at=created, format=h.format or "standard",  # type: ignore[arg-type]
                       previous_secret_expires_at=until if until is not None and until > utcnow() else None,
                       secret=h.secret if secret else None)


def delivery_view(d: WebhookDelivery) -> DeliveryView:
    created = as_utc(d.created_at)
    assert created is not None
    return DeliveryView(id=d.id, webhook_id=d.webhook_id, event_id=d.event_id, event_type=d.event_type,
                        message_id=d.message_id, status=d.status,  # type: ignore[arg-type]
                        attempts=d.attempts, next_attempt_at=as_utc(d.next_attempt_at) if d.status == "pending" else None,
                        last_status_code=d.last_status_code, last_error=d.last_error, created_at=created,
                        delivered_at=as_utc(d.delivered_at), payload=d.payload, log=list(d.log or []))


def _guard(url: str, settings: Settings) -> None:
    check_url(url, allow=AllowList.parse(settings.ssrf_allow), ports=parse_ports(settings.webhook_allowed_ports),
              field="url")


def get_webhook(session: Session, *, tenant_id: str, webhook_id: str) -> Webhook:
    h = session.scalar(select(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant_id))
    if h is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return h


def create(session: Session, settings: Settings, *, tenant_id: str, body: WebhookCreate) -> WebhookView:
    _guard(body.url, settings)
    count = len(list(session.scalars(select(Webhook.id).where(Webhook.tenant_id == tenant_id))))
    if count >= MAX_WEBHOOKS:
        raise InvalidInput(f"a tenant may have at most {MAX_WEBHOOKS} webhooks", field="url")
    h = Webhook(tenant_id=tenant_id, url=body.url, secret=body.secret or new_secret(), events=list(dict.fromkeys(body.events)),
                enabled=body.enabled, description=body.description, format=body.format)
    session.add(h)
    session.commit()
    return webhook_view(h, secret=True)


def list_webhooks(session: Session, *, tenant_id: str) -> WebhookList:
    rows = session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id).order_by(Webhook.created_at, Webhook.id))
    return WebhookList(items=[webhook_view(h) for h in rows])


def update(session: Session, settings: Settings, *, tenant_id: str, webhook_id: str, body: WebhookUpdate) -> WebhookView:
    h = get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    if body.url is not None:
        _guard(body.url, settings)
        h.url = body.url
    if body.events is not None:
        h.events = list(dict.fromkeys(body.events))
    if "description" in body.model_fields_set:
        h.description = body.description
    if body.enabled is not None:
        h.enabled = body.enabled
    if body.format is not None:
        h.format = body.format
    session.commit()
    return webhook_view(h)


def rotate_secret(session: Session, *, tenant_id: str, webhook_id: str, grace_s: int = 86400) -> WebhookView:
    """A new secret; for ``grace_s`` seconds the old one signs every message too (a second ``v1,`` signature), so
    receivers can switch to the new secret without missing or rejecting a message. ``grace_s=0`` retires it now."""
    h = get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    h.previous_secret, h.previous_secret_until = (h.secret, utcnow() + timedelta(seconds=grace_s)) if grace_s else \
        (None, None)
    h.secret = new_secret()
    session.commit()
    return webhook_view(h, secret=True)


def delete(session: Session, *, tenant_id: str, webhook_id: str) -> None:
    h = get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    session.delete(h)
    session.commit()


def list_deliveries(session: Session, *, tenant_id: str, webhook_id: str, status: str | None = None,
                    limit: int = 50, cursor: str | None = None) -> DeliveryList:
    """An endpoint's deliveries, newest first (keyset pagination on created_at, id)."""
    get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(WebhookDelivery.created_at < created_at,
                              and_(WebhookDelivery.created_at == created_at, WebhookDelivery.id < last_id)))
    rows = list(session.scalars(stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
                                .limit(limit + 1)))
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit and page:
        next_cursor = encode_cursor(page[-1])  # type: ignore[arg-type]  # same (created_at, id) shape
    return DeliveryList(items=[delivery_view(d) for d in page], next_cursor=next_cursor)


def get_delivery(session: Session, *, tenant_id: str, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    d = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                     WebhookDelivery.webhook_id == webhook_id,
                                                     WebhookDelivery.tenant_id == tenant_id))
    if d is None:
        raise NotFound(f"delivery {delivery_id} not found")
    return d


def send_test(session: Session, *, tenant_id: str, webhook_id: str) -> DeliveryView:
    """Queue a signed ``webhook.test`` message to this endpoint only (whatever events it subscribes to), through
    the same outbox, signing and retries as every event; its delivery log shows how it went. A disabled endpoint
    sends nothing, so testing one is a conflict."""
    h = get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    if not h.enabled:
        raise Conflict(f"webhook {webhook_id} is disabled; enable it (PATCH enabled: true) to test it", field="enabled")
    ev = emit_now(session, tenant_id=tenant_id, job_id=None, type="webhook.test",  # its id names the message
                  data={"webhook_id": h.id, "url": h.url})
    now = utcnow()
    d = WebhookDelivery(webhook_id=h.id, tenant_id=tenant_id, event_id=ev.id, event_type=ev.type,
                        message_id=message_id(ev.id), status="pending", attempts=0, next_attempt_at=now, log=[],
                        created_at=now,
                        payload=envelope(ev, {"event_id": ev.id, "job_id": None, "webhook_id": h.id,
                                              "message": "A test event from Atelier: your endpoint is reachable "
                                                         "and can verify our signature."}))
    session.add(d)
    session.commit()
    return delivery_view(d)


def redeliver(session: Session, *, tenant_id: str, webhook_id: str, delivery_id: str) -> DeliveryView:
    """Queue a delivery again now, whatever its state (same ``webhook-id``); the retry window starts over."""
    d = get_delivery(session, tenant_id=tenant_id, webhook_id=webhook_id, delivery_id=delivery_id)
    now = utcnow()
    d.status, d.next_attempt_at = "pending", now
    d.log = [*(d.log or []), {"redelivered_at": now.isoformat()}][-LOG_KEEP:]
    session.commit()
    return delivery_view(d)

"""Webhook dispatcher: an outbox in the database, sent by a thread that runs beside the reconciler.

1. **Enqueue** — events of the types endpoints subscribe to (``job.succeeded``, ``job.failed``,
   ``job.canceled``, ``stage.completed``, ``artifact.created``) become ``webhook_deliveries`` rows, one per
   (endpoint, event), unique in the database: however many dispatchers run, an event is queued once
   per endpoint. A cursor (``webhook_cursor``) remembers how far the events were read; it only moves past
   events older than a grace period, so an event whose transaction committed late is still seen.
2. **Send** — due rows are claimed in a transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
   serialises writers) by pushing ``next_attempt_at`` out by a lease, then sent outside it. The URL passes
   the SSRF guard again at send time and the request goes to the address that was checked; redirects are
   not followed. A 2xx ends the delivery; anything else is retried with exponential backoff and full
   jitter until ``webhook_retry_for_s`` (24 h) after the event, then the delivery is marked failed.
3. **Signing** — Standard Webhooks: ``webhook-id`` (the same on every retry of a message),
   ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
   "{id}.{timestamp}.{body}">`` keyed with the endpoint's ``whsec_`` secret.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from atelier_control.models import Event, Webhook, WebhookCursor, WebhookDelivery, new_id, utcnow
from atelier_control.ssrf import AllowList, Resolver, UnsafeUrl, resolve_checked
from atelier_runtime.settings import Settings
from atelier_sdk.webhooks import WEBHOOK_EVENTS, sign_webhook
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

ENQUEUE_BATCH = 500
CURSOR_GRACE_S = 30.0
LOG_KEEP = 30
USER_AGENT = "Atelier-Webhooks/0.1"


def _aware(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def message_id(event_id: int) -> str:
    """The ``webhook-id`` of an event's message: stable across retries and redeliveries."""
    return f"msg_evt_{event_id}"


def event_payload(ev: Event) -> dict[str, Any]:
    """The JSON body of an event's message (Standard Webhooks' ``{type, timestamp, data}``)."""
    created = _aware(ev.created_at) or utcnow()
    data: dict[str, Any] = {"event_id": ev.id, "job_id": ev.job_id, **(ev.data or {})}
    if ev.type.startswith("job.") and ev.job_id:
        data["status"] = ev.type.split(".", 1)[1]
        data["job_url"] = f"/v1/jobs/{ev.job_id}"
        if ev.type == "job.succeeded":
            data["bundle_url"] = f"/v1/jobs/{ev.job_id}/bundle"
    if ev.type == "artifact.created" and data.get("artifact_id"):
        data["content_url"] = f"/v1/artifacts/{data['artifact_id']}/content"
    return {"type": ev.type, "timestamp": created.isoformat().replace("+00:00", "Z"), "data": data}


def body_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def backoff_s(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (1-based): exponential from ``webhook_backoff_s``, capped, full jitter
    in its upper half so a burst of failures spreads out."""
    base = min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * (2 ** max(0, attempt - 1)))
    return base * (0.5 + 0.5 * (rng or random).random())


# ---------------------------------------------------------------- enqueue


def _insert_ignore(session: Session, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(WebhookDelivery).values(rows).on_conflict_do_nothing(
            constraint="uq_webhook_deliveries_webhook_event")
    elif dialect == "sqlite":
        stmt = sqlite_insert(WebhookDelivery).values(rows).on_conflict_do_nothing(
            index_elements=["webhook_id", "event_id"])
    else:  # pragma: no cover - other databases: one row at a time
        n = 0
        for row in rows:
            try:
                with session.begin_nested():
                    session.add(WebhookDelivery(**row))
                n += 1
            except IntegrityError:
                pass
        return n
    res = session.execute(stmt)
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def enqueue_events(factory: sessionmaker[Session], *, now: datetime | None = None,
                   grace_s: float = CURSOR_GRACE_S) -> int:
    """Turn new events into delivery rows for every enabled endpoint that wants them; returns rows added."""
    now = now or utcnow()
    with factory() as session, session.begin():
        hooks = list(session.scalars(select(Webhook).where(Webhook.enabled.is_(True))))
        if not hooks:
            return 0
        cursor = session.get(WebhookCursor, 1)
        if cursor is None:
            # start where the first endpoint appeared: endpoints get events from after they exist
            first = min(_aware(h.created_at) or now for h in hooks)
            start = session.scalar(select(func.max(Event.id)).where(
                Event.created_at < first - timedelta(seconds=grace_s))) or 0
            try:
                with session.begin_nested():
                    session.add(WebhookCursor(id=1, last_event_id=start))
            except IntegrityError:
                pass
            cursor = session.get(WebhookCursor, 1)
            assert cursor is not None
        horizon = session.scalar(select(func.max(Event.id)).where(Event.created_at < now - timedelta(seconds=grace_s)))
        by_tenant: dict[str, list[Webhook]] = {}
        for h in hooks:
            by_tenant.setdefault(h.tenant_id, []).append(h)
        events = list(session.scalars(
            select(Event).where(Event.id > cursor.last_event_id, Event.type.in_(WEBHOOK_EVENTS),
                                Event.tenant_id.in_(list(by_tenant)))
            .order_by(Event.id).limit(ENQUEUE_BATCH)))
        rows = []
        for ev in events:
            created = _aware(ev.created_at) or now
            for h in by_tenant.get(ev.tenant_id, []):
                wanted = h.events or list(WEBHOOK_EVENTS)
                if ev.type not in wanted or created < (_aware(h.created_at) or now):
                    continue
                rows.append({"id": new_id("whd"), "webhook_id": h.id, "tenant_id": ev.tenant_id,
                             "event_id": ev.id, "event_type": ev.type, "message_id": message_id(ev.id),
                             "payload": event_payload(ev), "status": "pending", "attempts": 0,
                             "next_attempt_at": now, "log": [], "created_at": now})
        added = _insert_ignore(session, rows)
        new_last = horizon or 0
        if len(events) == ENQUEUE_BATCH:
            new_last = min(new_last, events[-1].id)
        if new_last > cursor.last_event_id:
            cursor.last_event_id = new_last
        return added


# ---------------------------------------------------------------- send


class Sender:
    """Sends one signed message to one endpoint, connecting only to the address the SSRF guard approved."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None,
                 resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.allow = AllowList.parse(settings.ssrf_allow)
        self.resolver = resolver
        self.client = httpx.Client(transport=transport, follow_redirects=False, trust_env=False,
                                   timeout=settings.webhook_timeout_s, headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self.client.close()

    def send(self, url: str, secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
             ) -> tuple[int | None, str | None]:
        """(HTTP status or None, error or None) of one attempt."""
        try:
            checked = resolve_checked(url, allow=self.allow, resolver=self.resolver)
        except UnsafeUrl as exc:
            return None, f"refused by the SSRF guard: {exc.detail}"
        ts = int(timestamp if timestamp is not None else time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts),
                   "webhook-signature": sign_webhook(secret, msg_id, ts, body)}
        parts = urlsplit(url)
        ip = checked.addresses[0]
        host_ip = f"[{ip}]" if ":" in ip else ip
        netloc = f"{host_ip}:{parts.port}" if parts.port else host_ip
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers["host"] = parts.netloc.rsplit("@", 1)[-1]
        extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
        try:
            resp = self.client.post(target, content=body, headers=headers, extensions=extensions)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= resp.status_code < 300:
            return resp.status_code, None
        excerpt = resp.text[:200] if resp.content else ""
        if 300 <= resp.status_code < 400:
            return resp.status_code, f"redirects are not followed (Location: {resp.headers.get('location', '')})"
        return resp.status_code, f"HTTP {resp.status_code}: {excerpt}".strip()


def claim_due(factory: sessionmaker[Session], *, settings: Settings, now: datetime | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """Claim due deliveries of enabled endpoints (a lease, so no other dispatcher sends them meanwhile)."""
    now = now or utcnow()
    lease = timedelta(seconds=2 * settings.webhook_timeout_s + 30)
    with factory() as session, session.begin():
        stmt = (select(WebhookDelivery, Webhook).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                       Webhook.enabled.is_(True))
                .order_by(WebhookDelivery.next_attempt_at).limit(limit))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
        claimed = []
        for d, h in session.execute(stmt).all():
            d.attempts += 1
            d.next_attempt_at = now + lease
            d.last_attempt_at = now
            claimed.append({"id": d.id, "attempt": d.attempts, "url": h.url, "secret": h.secret,
                            "message_id": d.message_id, "payload": d.payload, "created_at": _aware(d.created_at)})
        return claimed


def record_result(factory: sessionmaker[Session], claim: dict[str, Any], status: int | None, error: str | None, *,
                  settings: Settings, seconds: float, now: datetime | None = None,
                  rng: random.Random | None = None) -> str:
    """Store one attempt's outcome; returns the delivery's new status."""
    now = now or utcnow()
    with factory() as session, session.begin():
        d = session.get(WebhookDelivery, claim["id"])
        if d is None or d.attempts != claim["attempt"] or d.status != "pending":
            return d.status if d is not None else "gone"  # redelivered or finished by someone else meanwhile
        entry = {"attempt": d.attempts, "at": now.isoformat(), "status_code": status, "error": error,
                 "ms": round(seconds * 1000, 1)}
        d.log = [*(d.log or []), entry][-LOG_KEEP:]
        d.last_status_code, d.last_error = status, error
        window_start = max([_aware(d.created_at) or now] + [datetime.fromisoformat(e["redelivered_at"])
                                                             for e in d.log if e.get("redelivered_at")])
        if error is None:
            d.status, d.delivered_at = "succeeded", now
        elif now - window_start >= timedelta(seconds=settings.webhook_retry_for_s):
            d.status = "failed"
        else:
            d.next_attempt_at = now + timedelta(seconds=backoff_s(d.attempts, settings, rng))
        return d.status


class WebhookDispatcher(threading.Thread):
    """Enqueue and send webhook deliveries every ``webhook_poll_s`` until stopped."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, *,
                 transport: httpx.BaseTransport | None = None, resolver: Resolver | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(daemon=True, name="atelier-webhooks")
        self.factory, self.settings, self.clock = factory, settings, clock
        self.sender = Sender(settings, transport=transport, resolver=resolver)
        self.stop_event = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=settings.webhook_concurrency, thread_name_prefix="atelier-webhook")
        self.sent = 0

    def _send_one(self, claim: dict[str, Any]) -> str:
        t0 = time.monotonic()
        status, error = self.sender.send(claim["url"], claim["secret"], claim["message_id"], body_bytes(claim["payload"]))
        result = record_result(self.factory, claim, status, error, settings=self.settings,
                               seconds=time.monotonic() - t0, now=self.clock())
        if error:
            log.info("webhook %s attempt %d to %s failed: %s", claim["message_id"], claim["attempt"], claim["url"], error)
        return result

    def run_once(self) -> int:
        """One pass: enqueue new events, send what is due; returns the number of attempts made."""
        enqueue_events(self.factory, now=self.clock())
        claims = claim_due(self.factory, settings=self.settings, now=self.clock())
        if claims:
            list(self.pool.map(self._send_one, claims))
        self.sent += len(claims)
        return len(claims)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("webhook dispatch pass failed")
                busy = 0
            if not busy:
                self.stop_event.wait(self.settings.webhook_poll_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sender.close()

"""Webhook dispatcher: an outbox in the database, sent by a thread that runs beside the reconciler.

1. **Enqueue** — events of the types endpoints subscribe to (``job.succeeded``, ``job.failed``,
   ``job.canceled``, ``stage.completed``, ``artifact.created``) become ``webhook_deliveries`` rows, one per
   (endpoint, event), unique in the database: however many dispatchers run, an event is queued once
   per endpoint. A cursor (``webhook_cursor``) remembers how far the events were read; it only moves past
   events older than a grace period, so an event whose transaction committed late is still seen.
2. **Claim** — due rows are claimed in a transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
   serialises writers) by pushing ``next_attempt_at`` out by a lease, fairly: round-robin across tenants,
   each endpoint's oldest rows first, at most ``webhook_max_in_flight`` per tenant in flight, and only as many
   as the worker pool (``webhook_concurrency``) has free workers. A pass never waits for a send.
3. **Send** — in a worker thread, outside any transaction. The URL passes the SSRF guard again at send time
   (addresses and ``webhook_allowed_ports``) and the request goes to the address that was checked; redirects
   are not followed. One attempt has a total deadline (``webhook_send_deadline_s``: connect, send, read the
   answer; every socket operation is cut to what is left of it, so a receiver trickling bytes is cut off) and
   reads at most 1 KB of the answer. The lease is longer than the deadline by a margin at both ends and the send
   stops that margin before the lease runs out, so no other pass sends the same delivery while it is in flight.
   A 2xx (its answer complete, or 1 KB of it, within the deadline) ends the delivery; anything else is retried
   with exponential backoff and full jitter until ``webhook_retry_for_s`` (24 h) after the event, then the
   delivery is marked failed. A sanitized excerpt of a failing answer (at most 1 KB) goes to the delivery row
   (``last_error``; the attempts log keeps its first 200 characters) for the tenant's ``GET .../deliveries``;
   process logs never carry receiver-supplied text.
4. **Signing** — Standard Webhooks: ``webhook-id`` (the same on every retry of a message),
   ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
   "{id}.{timestamp}.{body}">`` keyed with the endpoint's ``whsec_`` secret.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx
from atelier_contracts import items, placements
from atelier_contracts.catalogue import S_DELIVER
from atelier_control.asset_urls import AssetLink, AssetLinks
from atelier_control.events import envelope, message_id
from atelier_control.models import Artifact, Event, Job, Stage, Webhook, WebhookCursor, WebhookDelivery, new_id, utcnow
from atelier_control.ssrf import AllowList, Resolver, UnsafeUrl, parse_ports, resolve_checked
from atelier_runtime.observability import WEBHOOK_DELIVERIES
from atelier_runtime.settings import Settings
from atelier_sdk.webhooks import WEBHOOK_EVENTS, sign_webhook
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

ENQUEUE_BATCH = 500
CURSOR_GRACE_S = 30.0
LOG_KEEP = 30
LOG_ENTRY_CHARS = 200  # of an attempt's error, kept in its entry of the attempts log (last_error keeps it all)
USER_AGENT = "Atelier-Webhooks/0.1"
RESPONSE_READ_MAX = 1024  # bytes of a receiver's answer that are read at all
LEASE_MARGIN_S = 15.0  # a send ends this long before its lease; as long again covers recording and clock skew
MIN_SEND_S = 0.05  # a claim with less time than this left is not sent
CANDIDATES_MIN = 200  # due rows read per claim, at least
LinkFor = Callable[[Artifact], AssetLink]  # an artifact → the expiring URL a receiver fetches it at


def _aware(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def event_payload(ev: Event, job: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of an event's message (Standard Webhooks' ``{type, timestamp, data}``).

    ``job``: what :func:`job_context` read of the event's job — its ``external_id`` and ``metadata`` go into every
    ``job.*`` event, the delivered ``assets`` and ``documents`` into ``job.succeeded``."""
    data: dict[str, Any] = {"event_id": ev.id, "job_id": ev.job_id, **(ev.data or {})}
    if ev.type.startswith("job.") and ev.job_id:
        data["status"] = ev.type.split(".", 1)[1]
        data["job_url"] = f"/v1/jobs/{ev.job_id}"
        if job is not None:
            data["external_id"], data["metadata"] = job.get("external_id"), dict(job.get("metadata") or {})
        if ev.type == "job.succeeded":
            data["bundle_url"] = f"/v1/jobs/{ev.job_id}/bundle"
            if job is not None and "assets" in job:
                data["assets"], data["documents"] = job["assets"], job["documents"]
                data["manifest"] = job.get("manifest")
    if ev.type == "artifact.created" and data.get("artifact_id"):
        data["content_url"] = f"/v1/artifacts/{data['artifact_id']}/content"
    return envelope(ev, data)


_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "application/pdf": "pdf",
            "text/html": "html", "application/json": "json"}


def _asset(artifact: Artifact, item: str, links: LinkFor | None) -> dict[str, Any]:
    """One delivered file as a webhook lists it: what it is, where it goes, and how to fetch and check it."""
    try:  # a campaign's "<size>-v<k>" item; a story's pages and documents have no placement
        size: str | None = items.parse_size_variant(item)[0]
        placement_name = placements.placement(size).name  # type: ignore[arg-type]
    except ValueError:
        size = placement_name = None
    return {"artifact_id": artifact.id, "item": item, "kind": artifact.kind, "placement": placement_name,
            "size": f"{artifact.width}x{artifact.height}" if artifact.width and artifact.height else size,
            "width": artifact.width, "height": artifact.height,
            "format": _FORMATS.get(artifact.content_type, artifact.content_type), "content_type": artifact.content_type,
            "bytes": artifact.size_bytes, "sha256": artifact.sha256,
            **({"url": f"/v1/artifacts/{artifact.id}/content", "url_expires_at": None} if links is None else
               _link_fields(links(artifact)))}


def _link_fields(link: AssetLink) -> dict[str, Any]:
    return {"url": link.url, "url_expires_at": link.expires_at.isoformat().replace("+00:00", "Z")}


def asset_links(settings: Settings) -> LinkFor:
    """The deployment's expiring asset URLs (``atelier_control.asset_urls``: S3 presigned for
    ``s3_public_endpoint``, else the API's signed ``/v1/assets/...``, absolute with ``public_base_url``)."""
    links = AssetLinks.from_settings(settings)
    return lambda a: links.link(a.id, a.key, content_type=a.content_type, filename=a.name)


def job_context(session: Session, events: Sequence[Event], *, links: LinkFor | None = None
                ) -> dict[str, dict[str, Any]]:
    """Per job of ``job.*`` events: its ``external_id`` and ``metadata``, and, for a job that succeeded, the files
    its ``deliver`` stage delivered (``assets``: the images, in the manifest's order; ``documents``: a storybook's
    PDF and HTML; ``manifest``) — read in three queries for the whole batch. ``links`` makes each file's expiring
    URL (:func:`asset_links`); without it the URL is the API's authenticated content path."""
    job_ids = {ev.job_id for ev in events if ev.job_id and ev.type.startswith("job.")}
    if not job_ids:
        return {}
    out: dict[str, dict[str, Any]] = {
        jid: {"external_id": ext, "metadata": labels or {}}
        for jid, ext, labels in session.execute(select(Job.id, Job.external_id, Job.labels).where(Job.id.in_(job_ids)))}
    done = {ev.job_id for ev in events if ev.type == "job.succeeded" and ev.job_id in out}
    if not done:
        return out
    delivered: dict[str, dict[str, Any]] = {
        st.job_id: st.output or {} for st in session.scalars(
            select(Stage).where(Stage.job_id.in_(done), Stage.name == S_DELIVER, Stage.status == "succeeded"))}
    keys = {k for o in delivered.values() for k in [*o.get("assets", []), *o.get("documents", []),
                                                    o.get("manifest_key") or ""] if k}
    rows = session.execute(select(Artifact, Stage.item).outerjoin(Stage, Stage.id == Artifact.stage_id)
                           .where(Artifact.job_id.in_(done), Artifact.key.in_(keys))).all() if keys else []
    by_key = {(a.job_id, a.key): (a, item or "") for a, item in rows}
    for jid in done:
        o = delivered.get(jid, {})
        files = {name: [_asset(*by_key[(jid, k)], links) for k in o.get(name, []) if (jid, k) in by_key]
                 for name in ("assets", "documents")}
        manifest = by_key.get((jid, o.get("manifest_key") or ""))
        out[jid].update(files, manifest=_asset(*manifest, links) if manifest else None)
    return out


def body_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


SLACK_ASSET_LINKS = 6  # assets linked by name in a Slack message (the rest are counted)


def _slack_link(url: str | None, label: str, base_url: str | None) -> str:
    if not url:
        return label
    if url.startswith("/") and base_url:
        url = base_url.rstrip("/") + url
    if not url.startswith(("http://", "https://")):
        return label  # a relative link is no use in a chat client
    safe = label.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<{url}|{safe}>"


def slack_message(payload: Mapping[str, Any], *, base_url: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook message for an event (``{"text": ...}``; Teams and Mattermost incoming webhooks take
    the same): what happened in one line, the job's reference, and links to the delivered assets and the bundle
    where they are absolute (``public_base_url``)."""
    kind, data = str(payload.get("type", "")), dict(payload.get("data") or {})
    job = data.get("job_id")
    ref = f" ({data['external_id']})" if data.get("external_id") else ""
    name = f"job `{job}`{ref}" if job else "Atelier"
    if kind == "job.succeeded":
        assets = list(data.get("assets") or [])
        failures = list(data.get("failures") or [])
        head = f"Atelier {name} succeeded" + (f" with {len(failures)} item(s) failed" if failures else "")
        parts = [f"{len(assets)} asset(s)"] if assets else []
        links = [_slack_link(a.get("url"), str(a.get("placement") or a.get("item") or "asset"), base_url)
                 for a in assets[:SLACK_ASSET_LINKS]]
        if len(assets) > SLACK_ASSET_LINKS:
            links.append(f"and {len(assets) - SLACK_ASSET_LINKS} more")
        if data.get("bundle_url"):
            links.append(_slack_link(str(data["bundle_url"]), "bundle", base_url))
        text = head + (": " + ", ".join(parts + links) if parts or links else "")
    elif kind == "job.failed":
        text = f"Atelier {name} failed: {data.get('error') or 'no reason given'}"
    elif kind == "job.canceled":
        text = f"Atelier {name} was canceled"
    elif kind == "job.warning":
        text = f"Atelier {name}: {data.get('warning') or data.get('message') or 'a warning'}"
    elif kind == "webhook.test":
        text = "Atelier test event: this endpoint is reachable."
    else:
        what = data.get("stage") or data.get("name") or data.get("artifact_id") or ""
        text = f"Atelier {kind} {what} for {name}".replace("  ", " ").strip()
    return {"text": text}


def message_body(payload: dict[str, Any], fmt: str | None, *, base_url: str | None = None) -> bytes:
    """What is sent to an endpoint of format ``fmt``: the Standard Webhooks body, or a Slack message."""
    return body_bytes(slack_message(payload, base_url=base_url) if fmt == "slack" else payload)


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
                   grace_s: float = CURSOR_GRACE_S, links: LinkFor | None = None) -> int:
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
        jobs = job_context(session, events, links=links)
        rows = []
        for ev in events:
            created = _aware(ev.created_at) or now
            payload = event_payload(ev, jobs.get(ev.job_id or ""))
            for h in by_tenant.get(ev.tenant_id, []):
                wanted = h.events or list(WEBHOOK_EVENTS)
                if ev.type not in wanted or created < (_aware(h.created_at) or now):
                    continue
                rows.append({"id": new_id("whd"), "webhook_id": h.id, "tenant_id": ev.tenant_id,
                             "event_id": ev.id, "event_type": ev.type, "message_id": message_id(ev.id),
                             "payload": payload, "status": "pending", "attempts": 0,
                             "next_attempt_at": now, "log": [], "created_at": now})
        added = _insert_ignore(session, rows)
        new_last = horizon or 0
        if len(events) == ENQUEUE_BATCH:
            new_last = min(new_last, events[-1].id)
        if new_last > cursor.last_event_id:
            cursor.last_event_id = new_last
        return added


# ---------------------------------------------------------------- send

_deadline = threading.local()


def _bounded(timeout: float | None) -> float | None:
    """A socket operation's timeout, cut to what is left of the calling thread's send deadline (if one is set)."""
    end = getattr(_deadline, "at", None)
    if end is None:
        return timeout
    left = max(end - time.monotonic(), 0.001)
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read, write and TLS handshake ends by the send deadline: a receiver that
    trickles bytes (headers or body) cannot keep a send alive past it, as a per-read timeout would let it."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.connect_tcp(host, port, _bounded(timeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.connect_unix_socket(path, _bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _httpx_error(exc: httpcore.NetworkError | httpcore.TimeoutException | httpcore.ProtocolError | Exception
                 ) -> httpx.TransportError:
    """httpx's exception of the same name (ReadTimeout, ConnectError, RemoteProtocolError, ...)."""
    kind = getattr(httpx, type(exc).__name__, None)
    if isinstance(kind, type) and issubclass(kind, httpx.TransportError):
        return kind(str(exc))
    return httpx.TransportError(str(exc))


class _DeadlineResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.inner
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _httpx_error(exc) from exc

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport on an httpcore connection pool whose sockets honour the calling thread's send deadline
    (httpcore's public ``network_backend``: every connect, read, write and TLS handshake is cut to what is left)."""

    def __init__(self) -> None:
        self.pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                            network_backend=_DeadlineBackend(), max_connections=100,
                                            max_keepalive_connections=20, keepalive_expiry=5.0)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        try:
            resp = self.pool.handle_request(req)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _httpx_error(exc) from exc
        return httpx.Response(status_code=resp.status, headers=resp.headers, stream=_DeadlineResponseStream(resp.stream),
                              extensions=resp.extensions)

    def close(self) -> None:
        self.pool.close()


def sanitize(text: bytes | str, limit: int = RESPONSE_READ_MAX) -> str:
    """Receiver-supplied text fit for the delivery log: printable characters, whitespace runs collapsed, at most
    ``limit`` UTF-8 bytes."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


@dataclass(frozen=True)
class Outcome:
    """One attempt: ``error`` is None when it was delivered. ``error`` may end with a sanitized excerpt of the
    receiver's answer (at most :data:`RESPONSE_READ_MAX` bytes, for the tenant's own delivery log); ``summary``
    never carries receiver-supplied text and is what process logs get."""

    status_code: int | None
    error: str | None = None
    summary: str | None = None


class Sender:
    """Sends one signed message to one endpoint, connecting only to the address the SSRF guard approved.

    An attempt ends by its deadline (``webhook_send_deadline_s`` from its start, or earlier when the caller says
    so): connecting, sending and reading the answer all count, and a receiver still answering then is cut off.
    At most :data:`RESPONSE_READ_MAX` bytes of the answer are read (streamed; the rest is never downloaded)."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None,
                 resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.allow = AllowList.parse(settings.ssrf_allow)
        self.ports = parse_ports(settings.webhook_allowed_ports)
        self.resolver = resolver
        self.client = httpx.Client(transport=transport or DeadlineTransport(), follow_redirects=False,
                                   trust_env=False, timeout=settings.webhook_timeout_s,
                                   headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self.client.close()

    def send(self, url: str, secret: str | Sequence[str], msg_id: str, body: bytes, *, timestamp: int | None = None,
             deadline: float | None = None) -> Outcome:
        """One attempt; ``deadline`` is a ``time.monotonic()`` instant (default: the setting from now). Several
        secrets (a rotation's grace period) give one ``v1,`` signature each, space-separated."""
        start = time.monotonic()
        end = start + self.settings.webhook_send_deadline_s if deadline is None else deadline
        try:
            checked = resolve_checked(url, allow=self.allow, resolver=self.resolver, ports=self.ports)
        except UnsafeUrl as exc:
            return Outcome(None, f"refused by the SSRF guard: {exc.detail}", "refused by the SSRF guard")
        if time.monotonic() >= end:
            return Outcome(None, f"no answer within {end - start:.3g} s (name resolution took it all)",
                           "deadline exceeded")
        ts = int(timestamp if timestamp is not None else time.time())
        secrets = [secret] if isinstance(secret, str) else list(secret)
        signature = " ".join(sign_webhook(s, msg_id, ts, body) for s in secrets)
        headers = {"content-type": "application/json", "accept-encoding": "identity", "webhook-id": msg_id,
                   "webhook-timestamp": str(ts), "webhook-signature": signature}
        parts = urlsplit(url)
        ip = checked.addresses[0]
        host_ip = f"[{ip}]" if ":" in ip else ip
        netloc = f"{host_ip}:{parts.port}" if parts.port else host_ip
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers["host"] = parts.netloc.rsplit("@", 1)[-1]
        extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
        outer, _deadline.at = getattr(_deadline, "at", None), end
        try:
            with self.client.stream("POST", target, content=body, headers=headers, extensions=extensions) as resp:
                head = _read_capped(resp, end)
        except httpx.TimeoutException as exc:
            if time.monotonic() >= end - 0.05:
                return Outcome(None, f"no complete answer within {end - start:.3g} s: cut off at the deadline",
                               "deadline exceeded")
            return Outcome(None, f"{type(exc).__name__}: {sanitize(str(exc))}", type(exc).__name__)
        except httpx.HTTPError as exc:  # its text may quote what the receiver sent (a bad status line, say)
            return Outcome(None, f"{type(exc).__name__}: {sanitize(str(exc))}", type(exc).__name__)
        finally:
            _deadline.at = outer
        code = resp.status_code
        if 200 <= code < 300:
            return Outcome(code)
        if 300 <= code < 400:
            location = sanitize(resp.headers.get("location", ""), 200)
            return Outcome(code, f"redirects are not followed (Location: {location})", f"HTTP {code} (not followed)")
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        excerpt = sanitize(head) if encoding in ("", "identity") else f"({sanitize(encoding, 40)}-encoded answer)"
        return Outcome(code, f"HTTP {code}: {excerpt}".strip(), f"HTTP {code}")


def _read_capped(resp: httpx.Response, end: float) -> bytes:
    """The first :data:`RESPONSE_READ_MAX` bytes of the body, streamed; raises a timeout past ``end``."""
    buf = bytearray()
    for chunk in resp.iter_raw():
        buf += chunk[:RESPONSE_READ_MAX - len(buf)]
        if len(buf) >= RESPONSE_READ_MAX:
            break  # closing the response now drops the connection: the rest is never read
        if time.monotonic() >= end:
            raise httpx.ReadTimeout("the send deadline passed", request=resp.request)
    return bytes(buf)


# ---------------------------------------------------------------- claim and record


def lease_for(settings: Settings) -> float:
    """Seconds a claim holds a delivery: the send deadline plus a margin at both ends (the sender stops
    ``LEASE_MARGIN_S`` before the lease ends; the rest covers recording the result and clock skew)."""
    return settings.webhook_send_deadline_s + 2 * LEASE_MARGIN_S


def _round_robin(rows: Sequence[Any], limit: int, busy: Mapping[str, int], cap: int,
                 turns: Mapping[str, int]) -> list[str]:
    """Pick up to ``limit`` candidate ids, one tenant at a time: the tenant with the fewest deliveries in flight
    (then the one served longest ago) goes next, and no tenant goes past ``cap`` in flight."""
    queues: dict[str, deque[str]] = {}
    for row in rows:
        queues.setdefault(row.tenant_id, deque()).append(row.id)
    load = {t: busy.get(t, 0) for t in queues}
    picked: list[str] = []
    while len(picked) < limit:
        ready = [t for t, q in queues.items() if q and load[t] < cap]
        if not ready:
            break
        tenant = min(ready, key=lambda t: (load[t], turns.get(t, -1), t))
        picked.append(queues[tenant].popleft())
        load[tenant] += 1
    return picked


def claim_due(factory: sessionmaker[Session], *, settings: Settings, now: datetime | None = None,
              limit: int = 50, busy: Mapping[str, int] | None = None, per_tenant: int | None = None,
              lease_s: float | None = None, turns: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Claim due deliveries of enabled endpoints, fairly across tenants (a lease, so no other dispatcher sends
    them meanwhile).

    ``busy`` counts each tenant's deliveries already in flight here, ``per_tenant`` caps that count (default: no
    cap) and ``turns`` says when each tenant was last served (lower: longer ago). Candidates are read without
    locks (each endpoint's oldest due rows first, so one endpoint's backlog cannot crowd out the others), locked
    and re-checked (``SKIP LOCKED`` on PostgreSQL: another dispatcher's are skipped), then picked round-robin
    across tenants; the candidates not picked are released at commit."""
    now = now or utcnow()
    lease = timedelta(seconds=lease_for(settings) if lease_s is None else lease_s)
    busy = busy or {}
    cap = per_tenant or limit
    full = [t for t, n in busy.items() if n >= cap]
    due = (WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now, Webhook.enabled.is_(True))
    with factory() as session, session.begin():
        rank = func.row_number().over(partition_by=WebhookDelivery.webhook_id,
                                      order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id)).label("rank")
        ranked = (select(WebhookDelivery.id, WebhookDelivery.tenant_id, WebhookDelivery.next_attempt_at, rank)
                  .join(Webhook, Webhook.id == WebhookDelivery.webhook_id).where(*due))
        if full:
            ranked = ranked.where(WebhookDelivery.tenant_id.not_in(full))
        sub = ranked.subquery()
        rows = session.execute(select(sub.c.id, sub.c.tenant_id).where(sub.c.rank <= min(cap, limit))
                               .order_by(sub.c.rank, sub.c.next_attempt_at, sub.c.id)
                               .limit(max(CANDIDATES_MIN, 8 * limit))).all()
        if not rows:
            return []
        # lock every candidate still due (another dispatcher's are skipped), then pick among those: dispatchers
        # claiming at once get disjoint picks rather than racing for the same few rows
        stmt = (select(WebhookDelivery, Webhook).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.id.in_([r.id for r in rows]), *due))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
        locked = {d.id: (d, h) for d, h in session.execute(stmt).all()}
        picked = _round_robin([r for r in rows if r.id in locked], limit, busy, cap, turns or {})
        claimed = []
        for delivery_id in picked:
            d, h = locked[delivery_id]
            d.attempts += 1
            d.next_attempt_at = now + lease
            d.last_attempt_at = now
            claimed.append({"id": d.id, "attempt": d.attempts, "url": h.url, "secret": h.signing_secrets(now),
                            "format": h.format,
                            "message_id": d.message_id, "payload": d.payload, "created_at": _aware(d.created_at),
                            "tenant_id": d.tenant_id, "webhook_id": d.webhook_id, "lease_until": now + lease})
        return claimed


def record_result(factory: sessionmaker[Session], claim: dict[str, Any], status: int | None, error: str | None, *,
                  settings: Settings, seconds: float, now: datetime | None = None,
                  rng: random.Random | None = None) -> str:
    """Store one attempt's outcome; returns the delivery's new status. Only the claim's holder records: a result
    that comes after the delivery was claimed again (its lease ran out), redelivered as finished or finished by
    someone else is dropped."""
    now = now or utcnow()
    with factory() as session, session.begin():
        d = session.get(WebhookDelivery, claim["id"])
        if d is None or d.attempts != claim["attempt"] or d.status != "pending":
            return d.status if d is not None else "gone"  # redelivered or finished by someone else meanwhile
        entry = {"attempt": d.attempts, "at": now.isoformat(), "status_code": status,
                 "error": error if error is None or len(error) <= LOG_ENTRY_CHARS else error[:LOG_ENTRY_CHARS] + "…",
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
        WEBHOOK_DELIVERIES.labels("retrying" if d.status == "pending" else d.status).inc()
        return d.status


# ---------------------------------------------------------------- dispatch


class WebhookDispatcher(threading.Thread):
    """Enqueue and send webhook deliveries every ``webhook_poll_s`` until stopped.

    A pass never waits for a send: it claims as many deliveries as the pool (``webhook_concurrency``) has free
    workers, round-robin across tenants and at most ``webhook_max_in_flight`` per tenant, hands each to a worker
    and returns; a worker records its result when its send ends and wakes the loop for the next claim. A send
    ends by its deadline, and by ``lease_margin_s`` before its claim's lease runs out, so no other pass can claim
    (and send) the same delivery while it is still in flight."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, *,
                 transport: httpx.BaseTransport | None = None, resolver: Resolver | None = None,
                 clock: Callable[[], datetime] = utcnow, lease_s: float | None = None,
                 lease_margin_s: float = LEASE_MARGIN_S) -> None:
        super().__init__(daemon=True, name="atelier-webhooks")
        self.factory, self.settings, self.clock = factory, settings, clock
        self.lease_s = lease_for(settings) if lease_s is None else lease_s
        self.lease_margin_s = lease_margin_s
        self.sender = Sender(settings, transport=transport, resolver=resolver)
        self._links: LinkFor | None = None  # made on the first pass (it reads the signing secret)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=settings.webhook_concurrency, thread_name_prefix="atelier-webhook")
        self.lock = threading.Lock()
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.turns: dict[str, int] = {}
        self.turn = 0
        self.sent = 0

    def _send_one(self, claim: dict[str, Any]) -> str:
        try:
            t0 = time.monotonic()
            end = min(t0 + self.settings.webhook_send_deadline_s, claim["lease_ends"] - self.lease_margin_s)
            if end - t0 < MIN_SEND_S:
                outcome = Outcome(None, "abandoned before sending: its lease was about to run out", "abandoned")
            else:
                body = message_body(claim["payload"], claim.get("format"), base_url=self.settings.public_base_url)
                outcome = self.sender.send(claim["url"], claim["secret"], claim["message_id"], body, deadline=end)
            if outcome.error:
                log.info("webhook %s attempt %d to endpoint %s failed: %s", claim["message_id"], claim["attempt"],
                         claim.get("webhook_id", "?"), outcome.summary or "error")
            return self._record(claim, outcome, time.monotonic() - t0)
        except Exception:  # noqa: BLE001 - the lease runs out and another pass tries again
            log.exception("webhook %s attempt %d: could not send or record", claim["message_id"], claim["attempt"])
            return "pending"
        finally:
            with self.lock:
                self.in_flight.pop(claim["id"], None)
            self.wake.set()

    def _record(self, claim: dict[str, Any], outcome: Outcome, seconds: float) -> str:
        """Store the result, retrying a failing database a few times (until the lease nears its end): a result
        that is never stored means the delivery is sent again once the lease is over."""
        for wait in (0.2, 1.0, 3.0, None):
            try:
                return record_result(self.factory, claim, outcome.status_code, outcome.error, settings=self.settings,
                                     seconds=seconds, now=self.clock())
            except SQLAlchemyError:
                if wait is None or time.monotonic() + wait >= claim["lease_ends"] or self.stop_event.is_set():
                    raise
                log.warning("webhook %s: recording attempt %d failed; retrying", claim["message_id"], claim["attempt"])
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def run_once(self) -> int:
        """One pass: enqueue new events, claim what is due for the free workers and hand it to them (without
        waiting for the sends); returns the number of deliveries claimed."""
        if self._links is None:
            self._links = asset_links(self.settings)
        enqueue_events(self.factory, now=self.clock(), links=self._links)
        with self.lock:
            free = self.settings.webhook_concurrency - len(self.in_flight)
            if free <= 0 or self.stop_event.is_set():
                return 0
            busy = Counter(c["tenant_id"] for c in self.in_flight.values())
            claimed_at = time.monotonic()
            claims = claim_due(self.factory, settings=self.settings, now=self.clock(), limit=free, busy=busy,
                               per_tenant=self.settings.webhook_max_in_flight, lease_s=self.lease_s, turns=self.turns)
            for c in claims:
                c["lease_ends"] = claimed_at + self.lease_s
                self.in_flight[c["id"]] = c
                self.turn += 1
                self.turns[c["tenant_id"]] = self.turn
                self.pool.submit(self._send_one, c)
            self.sent += len(claims)
        return len(claims)

    def idle(self, timeout: float = 30.0) -> bool:
        """Wait until no send is in flight; False when ``timeout`` passed first."""
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                if not self.in_flight:
                    return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.wake.clear()
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("webhook dispatch pass failed")
                busy = 0
            if not busy:
                self.wake.wait(self.settings.webhook_poll_s)  # a finished send or stop() wakes it early

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming and wait (up to ``timeout``, default the send deadline and a second) for the sends in
        flight: each ends by its deadline and records its result."""
        with self.lock:
            self.stop_event.set()
        self.wake.set()
        self.idle(self.settings.webhook_send_deadline_s + 1.0 if timeout is None else timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sender.close()

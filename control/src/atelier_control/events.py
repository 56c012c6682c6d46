"""Job events: appended to the ``events`` table in the same transaction as the change they describe."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session, SessionTransaction

from .models import Event, utcnow

_PENDING = "atelier.pending_events"  # Session.info key: the events emitted in its open transaction
_EVENTS = Event.__table__

EVENT_TYPES = (
    "job.created", "job.started", "job.succeeded", "job.failed", "job.canceled",
    "stage.queued", "stage.started", "stage.progress", "stage.completed", "stage.failed", "stage.retrying",
    "stage.redriven", "artifact.created",
    "stage.gate", "stage.regenerating", "job.warning",  # quality gates (best-of-N) and their warnings
    "webhook.test",  # POST /v1/webhooks/{id}/test: sent to that one endpoint only, whatever it subscribes to
)


def message_id(event_id: int) -> str:
    """The ``webhook-id`` of an event's message: stable across retries and redeliveries."""
    return f"msg_evt_{event_id}"


def envelope(ev: Event, data: dict[str, Any]) -> dict[str, Any]:
    """A webhook message body in Standard Webhooks' ``{type, timestamp, data}`` shape."""
    created = ev.created_at or utcnow()
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return {"type": ev.type, "timestamp": created.isoformat().replace("+00:00", "Z"), "data": data}


def emit(session: Session, *, tenant_id: str, job_id: str | None, type: str, data: dict[str, Any] | None = None) -> None:
    """Append one event to the session's transaction: the events of a transaction are inserted together, in the
    order they were emitted, when it commits (one statement, not an ORM flush each; ``emit_now`` where the id is
    needed at once). A rolled-back transaction drops them with everything else.

    The caller must hold the job's row lock (``SELECT ... FOR UPDATE`` on ``jobs``) before its first event
    of the transaction. Ids come from a sequence when the row is inserted, so two transactions writing
    events for one job could otherwise commit out of id order, and an SSE client resuming with
    ``Last-Event-ID`` (or polling ``id > last``) would skip the late-committed, lower id for good. With the
    lock, a job's events become visible in id order. (A new job's ``job.created`` needs no lock: nobody
    else can see the job yet.)
    """
    row = _row(tenant_id=tenant_id, job_id=job_id, type=type, data=data)
    session.connection()  # the transaction they belong to has begun: its rollback or close drops them
    session.info.setdefault(_PENDING, []).append(row)


def _row(*, tenant_id: str, job_id: str | None, type: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """An event's column values; ValueError for a type that is not one of ``EVENT_TYPES``."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    return {"tenant_id": tenant_id, "job_id": job_id, "type": type, "data": data or {}, "created_at": utcnow()}


def emit_now(session: Session, *, tenant_id: str, job_id: str | None, type: str,
             data: dict[str, Any] | None = None) -> Event:
    """Append one event and insert it at once (after the transaction's earlier events), for a caller that needs
    its id before the commit — a webhook test names its message after it."""
    ev = Event(**_row(tenant_id=tenant_id, job_id=job_id, type=type, data=data))
    write_pending(session)
    session.add(ev)
    session.flush()
    return ev


def write_pending(session: Session) -> None:
    """Insert the events emitted in this transaction so far (its commit does it anyway)."""
    rows = session.info.pop(_PENDING, None)
    if rows:
        session.execute(insert(_EVENTS), rows)


@event.listens_for(Session, "before_commit")
def _write_on_commit(session: Session) -> None:
    write_pending(session)


@event.listens_for(Session, "after_transaction_end")
def _drop_at_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended: rolled back, closed (a commit wrote them)
        session.info.pop(_PENDING, None)


def events_after(session: Session, *, tenant_id: str, job_id: str, after_id: int, limit: int = 500) -> list[Event]:
    stmt = (
        select(Event)
        .where(Event.tenant_id == tenant_id, Event.job_id == job_id, Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))

"""Events are written with their transaction: together, in emit order, at its commit; never after a rollback."""

from __future__ import annotations

from typing import Any

import pytest
from atelier_control.events import emit, emit_now
from atelier_control.models import Event
from sqlalchemy import select


def _types(db: Any) -> list[str]:
    with db() as s:
        return [e.type for e in s.scalars(select(Event).order_by(Event.id))]


def test_a_transactions_events_go_in_at_its_commit_in_emit_order(db: Any) -> None:
    with db() as s, s.begin():
        emit(s, tenant_id="t", job_id="j", type="stage.completed", data={"n": 1})
        emit(s, tenant_id="t", job_id="j", type="stage.queued")
        assert list(s.scalars(select(Event))) == []  # nothing inserted before the commit
    s = db()
    emit(s, tenant_id="t", job_id="j", type="job.succeeded")
    s.commit()  # a session that only emitted commits them too
    s.close()
    assert _types(db) == ["stage.completed", "stage.queued", "job.succeeded"]
    with db() as s:
        rows = list(s.scalars(select(Event).order_by(Event.id)))
        assert rows[0].data == {"n": 1} and rows[0].created_at is not None and rows[1].data == {}


def test_a_rolled_back_or_closed_transaction_writes_none_of_its_events(db: Any) -> None:
    s = db()
    emit(s, tenant_id="t", job_id="j", type="job.canceled")
    s.rollback()
    s.commit()  # the next transaction of the same session does not carry them over
    emit(s, tenant_id="t", job_id="j", type="job.failed")
    s.close()
    with pytest.raises(RuntimeError), db() as s, s.begin():
        emit(s, tenant_id="t", job_id="j", type="job.started")
        raise RuntimeError("the transaction fails")
    assert _types(db) == []


def test_emit_now_gives_the_id_after_the_earlier_events_of_its_transaction(db: Any) -> None:
    with db() as s, s.begin():
        emit(s, tenant_id="t", job_id="j", type="stage.started")
        ev = emit_now(s, tenant_id="t", job_id=None, type="webhook.test")
        assert ev.id is not None
        emit(s, tenant_id="t", job_id="j", type="stage.completed")
    assert _types(db) == ["stage.started", "webhook.test", "stage.completed"]
    with pytest.raises(ValueError, match="unknown event type"), db() as s:
        emit(s, tenant_id="t", job_id="j", type="job.exploded")

"""Partial success: one campaign size that fails does not discard its siblings (issue: every placement works).

The engine on a real (SQLite) database, the workers played by the Driver of test_engine: the failed item's
later stages are not run, deliver gets the items that succeeded and the failures, the job ends succeeded with
them listed, a retry re-runs only the failed item (then deliver over every item); a story stays all-or-nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from atelier_control.db import session_scope
from atelier_control.jobs import retry_job
from atelier_control.models import Event, Job, Stage
from atelier_orchestrator.graphs import GRAPHS
from atelier_runtime.settings import Settings
from sqlalchemy import select

from .test_engine import Driver, _job

SIZES = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d"}, "taglines": ["t"],
         "sizes": ["300x250", "728x90", "1080x1080"]}
BAD = "728x90-v0"


@pytest.fixture
def settings() -> Settings:
    return Settings(stage_max_attempts=2, retry_backoff_s=0.0, stall_after_s=5, queued_stall_s=50)


def _run(d: Driver, job_id: str, fail: str | None = BAD, at: str = "gpu.watermark") -> list[str]:
    """Run the job to its end; the ``at`` stage of item ``fail`` fails (not retryably)."""
    order = []
    d.start(job_id)
    tasks = d.take()
    while tasks:
        for t in tasks:
            order.append(f"{t.stage}[{t.item}]")
            if t.stage == at and t.item == fail:
                d.finish(t, status="failed", retryable=False)
            else:
                d.finish(t)
        tasks = d.take()
    return order



def test_a_failed_size_is_listed_and_the_others_are_delivered(db: Any, settings: Settings) -> None:
    _, job_id = _job(db, spec=SIZES)
    d = Driver(db, settings)
    seen: list[Any] = []
    finish = d.finish

    def spy(t: Any, **kw: Any) -> None:
        if t.stage == "deliver":
            seen.append(t)
        finish(t, **kw)

    d.finish = spy  # type: ignore[method-assign]
    order = _run(d, job_id)
    assert order[-1] == "deliver[]"
    (deliver,) = seen
    assert set(deliver.upstream["gpu.watermark"]) == {"300x250-v0", "1080x1080-v0"}
    assert [(f.stage, f.item) for f in deliver.failures] == [("gpu.watermark", BAD)]
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.error is None
        rows = {(r.name, r.item): r for r in s.scalars(select(Stage).where(Stage.job_id == job_id))}
        assert rows[("gpu.watermark", BAD)].status == "failed"
        assert rows[("deliver", "")].status == "succeeded"
        events = list(s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))
    warning = next(e for e in events if e.type == "job.warning")
    assert warning.data["item"] == BAD and warning.data["failed"] is True
    done = events[-1]
    assert done.type == "job.succeeded" and done.data["partial"] is True
    assert [(f["stage"], f["item"]) for f in done.data["failures"]] == [("gpu.watermark", BAD)]


def test_the_failed_items_later_stages_are_not_run(db: Any, settings: Settings) -> None:
    _, job_id = _job(db, spec=SIZES)
    order = _run(Driver(db, settings), job_id, at="gpu.background")
    assert f"render.ad[{BAD}]" not in order and f"gpu.watermark[{BAD}]" not in order
    assert "gpu.watermark[300x250-v0]" in order
    with session_scope(db) as s:
        rows = {(r.name, r.item): r for r in s.scalars(select(Stage).where(Stage.job_id == job_id))}
        assert s.get(Job, job_id).status == "succeeded"
    assert rows[("render.ad", BAD)].status == "canceled"
    assert rows[("render.ad", BAD)].error == f"not run: gpu.background[{BAD}] did not succeed"
    assert rows[("gate.critic", BAD)].status == "canceled"
    assert rows[("gpu.watermark", BAD)].status == "canceled"


def test_retry_reruns_only_the_failed_item_then_delivers_every_item(db: Any, settings: Settings) -> None:
    tenant_id, job_id = _job(db, spec=SIZES)
    d = Driver(db, settings)
    _run(d, job_id, at="render.ad")
    with session_scope(db) as s:
        retry_job(s, tenant_id=tenant_id, job_id=job_id)
    seen: list[Any] = []
    finish = d.finish

    def spy(t: Any, **kw: Any) -> None:
        seen.append(t)
        finish(t, **kw)

    d.finish = spy  # type: ignore[method-assign]
    order = _run(d, job_id, fail=None)
    assert order == [f"render.ad[{BAD}]", f"gpu.watermark[{BAD}]", "deliver[]"]
    assert set(seen[-1].upstream["gpu.watermark"]) == {"300x250-v0", BAD, "1080x1080-v0"} and seen[-1].failures == []
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded"
        assert all(r.status == "succeeded" for r in s.scalars(select(Stage).where(Stage.job_id == job_id)))
        done = list(s.scalars(select(Event).where(Event.job_id == job_id, Event.type == "job.succeeded")
                              .order_by(Event.id)))
    assert "partial" in done[0].data and "partial" not in done[-1].data


def test_every_size_failing_fails_the_job(db: Any, settings: Settings) -> None:
    _, job_id = _job(db, spec={**SIZES, "sizes": ["300x250", "728x90"]})
    d = Driver(db, settings)
    d.start(job_id)
    tasks = d.take()
    while tasks:
        for t in tasks:
            d.finish(t, status="failed" if t.stage == "render.ad" else "succeeded", retryable=False)
        tasks = d.take()
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.error.startswith("no item succeeded: ")
        assert "render.ad[300x250-v0]" in job.error and "render.ad[728x90-v0]" in job.error
        deliver = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "deliver"))
        assert deliver.status == "canceled"


def test_a_story_page_that_fails_still_fails_the_story(db: Any, settings: Settings) -> None:
    """A storybook with a missing page is not delivered: the story graph has no partial fan-in."""
    _, job_id = _job(db, "story")
    order = _run(Driver(db, settings), job_id, fail="s1", at="gpu.scene")
    assert "deliver[]" not in order
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "failed"
    assert not GRAPHS["story"].contains_failure("gpu.scene") and GRAPHS["campaign"].contains_failure("gpu.background")
    assert not GRAPHS["campaign"].contains_failure("plan.ad_layout")  # a stage every item needs fails the job


def test_a_stage_that_went_on_without_something_says_so_as_a_job_warning(db: Any, settings: Settings) -> None:
    """An output's ``warnings`` (an asset too small for the mark, an LLM plan that fell back) become job.warning."""
    from datetime import UTC, datetime

    from atelier_contracts.tasks import StageResult
    from atelier_orchestrator import engine

    _, job_id = _job(db, spec=SIZES)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    now = datetime.now(UTC)
    res = StageResult(job_id=t.job_id, stage_id=t.stage_id, attempt=t.attempt, status="succeeded", worker="w",
                      output={"prompts": {}, "warnings": ["plan.ad_prompts: the LLM planner (openai:m) failed"]},
                      started_at=now, finished_at=now)
    engine.run_in_tx(db, d.send, lambda s, o: engine.stage_done(s, res, o, settings=settings))
    with session_scope(db) as s:
        (w,) = s.scalars(select(Event).where(Event.job_id == job_id, Event.type == "job.warning"))
        assert w.data == {"stage": "plan.ad_prompts", "item": "", "warning": "plan.ad_prompts: the LLM planner "
                                                                             "(openai:m) failed"}

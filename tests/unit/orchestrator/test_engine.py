"""The orchestrator engine on a real (SQLite) database: graph order, per-item chaining, retries, failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_contracts.tasks import ArtifactRecord, StageResult, StageTask
from atelier_control.auth import create_tenant
from atelier_control.db import session_scope
from atelier_control.jobs import cancel_job, create_job
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_orchestrator import engine
from atelier_orchestrator.graphs import GRAPHS
from atelier_orchestrator.reconciler import reconcile_once
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from sqlalchemy import func, select

CAMPAIGN = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d"}, "taglines": ["t"],
            "sizes": ["1080x1080", "1200x628"], "variants": 2}


@pytest.fixture
def settings() -> Settings:
    return Settings(stage_max_attempts=2, retry_backoff_s=0.0, stall_after_s=5, queued_stall_s=50)


class Driver:
    """Plays the workers: takes queued messages and answers with results."""

    def __init__(self, db: Any, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self.sent: list[tuple[str, list[Any], float | None]] = []

    def send(self, name: str, args: list[Any], countdown: float | None) -> None:
        self.sent.append((name, args, countdown))

    def start(self, job_id: str) -> None:
        engine.run_in_tx(self.db, self.send, lambda s, o: engine.start_job(s, job_id, o))

    def take(self) -> list[StageTask]:
        out = [StageTask.model_validate(a[0]) for n, a, _ in self.sent if n.startswith("atelier.stage.")]
        self.sent.clear()
        return out

    def finish(self, t: StageTask, *, status: str = "succeeded", retryable: bool = True, attempt: int | None = None) -> None:
        now = datetime.now(UTC)
        output: dict[str, Any] = {"done": t.stage, "item": t.item}
        if t.stage == "plan.characters":
            output["characters"] = [{"id": "c0"}, {"id": "c1"}]
        arts = [ArtifactRecord(key=f"{t.key_prefix}/{t.stage}/{t.item or 'x'}.png", kind="asset", name=t.item or "x",
                               content_type="image/png", size_bytes=1, sha256="0" * 64)]
        res = StageResult(job_id=t.job_id, stage_id=t.stage_id, attempt=attempt or t.attempt, status=status,  # type: ignore[arg-type]
                          output=output if status == "succeeded" else {}, artifacts=arts if status == "succeeded" else [],
                          error=None if status == "succeeded" else {"type": "Boom", "message": "x", "retryable": retryable},
                          worker="w", started_at=now, finished_at=now + timedelta(milliseconds=5))
        engine.run_in_tx(self.db, self.send, lambda s, o: engine.stage_done(s, res, o, settings=self.settings))

    def run_all(self, job_id: str) -> list[str]:
        order: list[str] = []
        self.start(job_id)
        tasks = self.take()
        while tasks:
            for t in tasks:
                order.append(f"{t.stage}[{t.item}]")
                self.finish(t)
            tasks = self.take()
        return order


def _job(db: Any, kind: str = "campaign", spec: dict[str, Any] | None = None) -> tuple[str, str]:
    with session_scope(db) as s:
        tenant, _ = create_tenant(s, f"t-{kind}-{id(spec)}")
        model = CampaignSpec if kind == "campaign" else StorySpec
        job, _ = create_job(s, tenant_id=tenant.id, kind=kind,
                            spec=model.model_validate(spec or (CAMPAIGN if kind == "campaign" else {"premise": "p", "culture": "Japan", "pages": 3})))
        return tenant.id, job.id


def test_campaign_runs_every_stage_in_order(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    order = d.run_all(job_id)
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded"
        assert job.finished_at is not None
        rows = s.scalars(select(Stage).where(Stage.job_id == job_id)).all()
        assert len(rows) == 2 + 4 * 4 + 1
        # no VLM configured: gate.critic[size×variant] is skipped without a task (attempts 0), saying so
        critic = [r for r in rows if r.name == "gate.critic"]
        assert len(critic) == 4 and all("critic absent" in r.output["skipped"] and r.attempts == 0 for r in critic)
        assert all(r.status == "succeeded" and r.attempts == 1 for r in rows if r.name != "gate.critic")
        types = [e.type for e in s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))]
    assert order[0] == "plan.ad_prompts[]" and order[1] == "plan.ad_layout[]" and order[-1] == "deliver[]"
    for item in ("1080x1080-v0", "1200x628-v1"):
        assert order.index(f"gpu.background[{item}]") < order.index(f"render.ad[{item}]") < order.index(f"gpu.watermark[{item}]")
    assert types[0] == "job.created" and types[1] == "job.started" and types[-1] == "job.succeeded"



def test_a_result_with_no_started_notice_before_it_records_the_start(db: Any, settings: Settings) -> None:
    """Short stages send no ``stage_started`` (the worker's notice is due only after ``started_notice_after_s``):
    the result records the start, and every stage still has one stage.started event, before its completion."""
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.run_all(job_id)  # the driver's workers send results only
    with session_scope(db) as s:
        rows = s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.attempts > 0)).all()
        assert rows and all(r.started_at is not None and r.worker == "w" for r in rows)
        events = [(e.type, e.data) for e in s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))]
    for r in rows:
        mine = [t for t, data in events if t.startswith("stage.") and data.get("stage") == r.name
                and data.get("item") == r.item]
        assert mine.count("stage.started") == 1, (r.name, r.item, mine)
        assert mine.index("stage.started") < mine.index("stage.completed"), mine
    # a notice that arrives after the result changes nothing
    t = rows[0]
    engine.run_in_tx(db, d.send, lambda s, o: engine.stage_started(s, engine.StageStarted(
        job_id=job_id, stage_id=t.id, attempt=1, worker="late", started_at=datetime.now(UTC))))
    with session_scope(db) as s:
        assert s.get(Stage, t.id).worker == "w"
        assert s.scalar(select(func.count()).select_from(Event).where(Event.job_id == job_id)) == len(events)


def test_a_first_progress_report_carrying_the_start_records_it_first(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    started = engine.StageStarted(job_id=job_id, stage_id=t.stage_id, attempt=t.attempt, worker="w",
                                  started_at=datetime.now(UTC))
    engine.run_in_tx(db, d.send, lambda s, o: engine.stage_progress(s, engine.StageProgress(
        job_id=job_id, stage_id=t.stage_id, step=1, total=4, started=started)))
    with session_scope(db) as s:
        assert s.get(Stage, t.stage_id).status == "running"
        types = [e.type for e in s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))]
    assert types[-2:] == ["stage.started", "stage.progress"]

def test_per_item_chaining_does_not_wait_for_siblings(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    for _ in range(2):
        (t,) = d.take()
        d.finish(t)
    backgrounds = d.take()
    assert {t.item for t in backgrounds} == {"1080x1080-v0", "1080x1080-v1", "1200x628-v0", "1200x628-v1"}
    d.finish(backgrounds[0])
    (render,) = d.take()
    assert render.stage == "render.ad" and render.item == backgrounds[0].item
    assert render.upstream["gpu.background"] == {"done": "gpu.background", "item": backgrounds[0].item}
    assert "plan" not in render.upstream["plan.ad_layout"] and render.upstream["plan.ad_layout"]["done"] == "plan.ad_layout"


def test_story_fans_out_over_characters_after_planning(db: Any, settings: Settings) -> None:
    _, job_id = _job(db, "story")
    order = Driver(db, settings).run_all(job_id)
    assert "gpu.character_sheet[c0]" in order and "gpu.character_sheet[c1]" in order
    assert order.index("gpu.character_sheet[c1]") < order.index("plan.scene_layout[]") < order.index("gpu.scene[s0]")
    assert sum(1 for o in order if o.startswith("gpu.watermark")) == 3
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"


def test_retry_then_fail_after_max_attempts(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    d.finish(t, status="failed")
    (again,) = d.take()
    assert again.stage_id == t.stage_id and again.attempt == 2
    d.finish(again, status="failed")
    assert d.take() == []
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "plan.ad_prompts" in (job.error or "")
        assert s.scalar(select(func.count()).select_from(Stage).where(Stage.job_id == job_id, Stage.status == "pending")) == 0


def test_non_retryable_failure_fails_at_once(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    d.finish(t, status="failed", retryable=False)
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "failed"


def test_duplicate_results_write_no_duplicate_artifacts(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    d.finish(t)
    d.finish(t)  # redelivered task finished a second time
    assert len(d.take()) == 1  # plan.ad_layout queued once
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == job_id)) == 1


def test_cancel_stops_further_stages(db: Any, settings: Settings) -> None:
    tenant_id, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    runtime = MemoryRuntime()
    with session_scope(db) as s:
        cancel_job(s, runtime, tenant_id=tenant_id, job_id=job_id)
    d.finish(t)
    assert d.take() == []
    assert runtime.is_canceled(job_id)
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "canceled"
        assert {r.status for r in s.scalars(select(Stage).where(Stage.job_id == job_id))} == {"canceled"}


def test_reconciler_redrives_a_silent_running_stage(db: Any, settings: Settings) -> None:
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    runtime = MemoryRuntime()
    runtime.heartbeat(t.stage_id)
    later = datetime.now(UTC) + timedelta(seconds=settings.stall_after_s + 1)
    rep = reconcile_once(db, runtime, d.send, settings=settings, now=later)
    assert rep.stages_redriven == 1
    (again,) = d.take()
    assert again.stage_id == t.stage_id
    # a second pass right after does not send it again, nor one a stall later: a second re-drive waits twice as long
    assert reconcile_once(db, runtime, d.send, settings=settings, now=later).stages_redriven == 0
    after_one_stall = later + timedelta(seconds=settings.stall_after_s + 1)
    assert reconcile_once(db, runtime, d.send, settings=settings, now=after_one_stall).stages_redriven == 0
    after_two_stalls = later + timedelta(seconds=2 * settings.stall_after_s + 1)
    assert reconcile_once(db, runtime, d.send, settings=settings, now=after_two_stalls).stages_redriven == 1
    d.take()
    d.finish(again)
    d.finish(t)  # the original worker's late result is ignored
    assert [x.stage for x in d.take()] == ["plan.ad_layout"]


def test_a_stage_that_finishes_after_the_reconcilers_scan_stays_finished(db: Any, settings: Settings) -> None:
    """The scan reads rows, then decides one by one: a result recorded in between must win (it once lost: the
    scan's stale snapshot was merged into the re-drive's session and flushed over the succeeded row)."""
    _, job_id = _job(db)
    d = Driver(db, settings)
    d.start(job_id)
    (t,) = d.take()
    engine.run_in_tx(db, d.send, lambda s, o: engine.stage_started(s, engine.StageStarted(
        job_id=t.job_id, stage_id=t.stage_id, attempt=t.attempt, worker="w", started_at=datetime.now(UTC))))

    class FinishesDuringThePass(MemoryRuntime):
        def last_heartbeat(self, stage_id: str) -> float | None:
            if stage_id == t.stage_id:
                d.finish(t)  # the worker's result lands after the scan read the row as running
            return super().last_heartbeat(stage_id)

    later = datetime.now(UTC) + timedelta(seconds=settings.stall_after_s + 1)
    assert reconcile_once(db, FinishesDuringThePass(), d.send, settings=settings, now=later).stages_redriven == 0
    with session_scope(db) as s:
        row = s.get(Stage, t.stage_id)
        assert row is not None and row.status == "succeeded" and row.finished_at is not None
        assert row.output == {"done": t.stage, "item": t.item}


def test_graphs_are_well_formed() -> None:
    for kind, graph in GRAPHS.items():
        names = [s.name for s in graph.stages]
        assert len(names) == len(set(names)), kind
        assert names[-1] == "deliver"


def test_studio_backdrop_skips_the_gpu_background(db: Any, settings: Settings) -> None:
    _, job_id = _job(db, spec=dict(CAMPAIGN, backdrop="studio"))
    order = Driver(db, settings).run_all(job_id)
    assert not [o for o in order if o.startswith("gpu.background")]
    assert sum(1 for o in order if o.startswith("render.ad")) == 4
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"
        bgs = s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name == "gpu.background")).all()
        assert len(bgs) == 4 and all(b.status == "succeeded" and b.output["skipped"] for b in bgs)

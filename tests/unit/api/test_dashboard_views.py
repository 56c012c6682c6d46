"""The dashboard's pieces without HTTP: retry through the real engine, timeline geometry, charts, gallery
scores and badges, form field mapping, queue depths and workers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from atelier_api.dashboard import charts, system
from atelier_api.dashboard.forms import JobForm, build_request, form_field
from atelier_api.dashboard.gallery import build_gallery, c2pa_badge, gate_scores, watermark_badge
from atelier_api.dashboard.plans import regional_canvas
from atelier_api.dashboard.timeline import axis_ticks, build_timeline, duration
from atelier_api.schemas import ArtifactView, JobView, StageView
from atelier_contracts.errors import Conflict, NotFound
from atelier_contracts.plans import PlannerInfo, Region, RegionalPlan
from atelier_contracts.specs import CampaignSpec
from atelier_contracts.tasks import StageResult, StageTask
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.jobs import create_job, retry_job
from atelier_control.models import Event, Job, Stage
from atelier_migrations import upgrade
from atelier_orchestrator import engine
from atelier_runtime.settings import Settings
from sqlalchemy import select

T0 = datetime(2030, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- retry_job through the orchestrator's engine


class Worker:
    """Plays the workers and the orchestrator's task loop around the real engine."""

    def __init__(self, db: Any, settings: Settings) -> None:
        self.db, self.settings, self.sent = db, settings, []

    def send(self, name: str, args: list[Any], countdown: float | None) -> None:
        self.sent.append((name, args))

    def start(self, job_id: str) -> None:
        engine.run_in_tx(self.db, self.send, lambda s, o: engine.start_job(s, job_id, o))

    def take(self) -> list[StageTask]:
        tasks = [StageTask.model_validate(a[0]) for n, a in self.sent if n.startswith("atelier.stage.")]
        self.sent.clear()
        return tasks

    def answer(self, t: StageTask, *, ok: bool) -> None:
        now = datetime.now(UTC)
        res = StageResult(job_id=t.job_id, stage_id=t.stage_id, attempt=t.attempt,
                          status="succeeded" if ok else "failed", output={"stage": t.stage} if ok else {},
                          artifacts=[], worker="w1", started_at=now, finished_at=now + timedelta(milliseconds=3),
                          error=None if ok else {"type": "ValueError", "message": "bad layout", "retryable": False})
        engine.run_in_tx(self.db, self.send, lambda s, o: engine.stage_done(s, res, o, settings=self.settings))


@pytest.fixture
def db(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    upgrade(url)
    return session_factory(make_engine(url))


def test_retry_job_restarts_a_failed_job_from_its_failed_stage(db: Any) -> None:
    settings = Settings(stage_max_attempts=1, retry_backoff_s=0.0)
    spec = CampaignSpec.model_validate({"brand": {"name": "B"}, "product": {"name": "P", "description": "d"},
                                        "taglines": ["t"], "sizes": ["1080x1080"], "variants": 2})
    with session_scope(db) as s:
        tenant, _ = create_tenant(s, "acme")
        other, _ = create_tenant(s, "globex")
        job, _ = create_job(s, tenant_id=tenant.id, kind="campaign", spec=spec)
        tenant_id, other_id, job_id = tenant.id, other.id, job.id
    w = Worker(db, settings)
    w.start(job_id)
    (prompts,) = w.take()
    w.answer(prompts, ok=True)
    (layout,) = w.take()
    w.answer(layout, ok=False)  # not retryable: the job fails
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "failed"  # type: ignore[union-attr]
    with session_scope(db) as s:
        with pytest.raises(NotFound):
            retry_job(s, tenant_id=other_id, job_id=job_id)  # another tenant's job is not there
    with session_scope(db) as s:
        job = retry_job(s, tenant_id=tenant_id, job_id=job_id)
        assert job.status == "queued" and job.error is None and job.finished_at is None
        rows = {r.name: r for r in s.scalars(select(Stage).where(Stage.job_id == job_id))}
        assert rows["plan.ad_prompts"].status == "succeeded" and rows["plan.ad_prompts"].output
        assert rows["plan.ad_layout"].status == "pending" and rows["plan.ad_layout"].error is None
        assert rows["plan.ad_layout"].attempts == 1  # kept: a late result of attempt 1 is still told apart
    with session_scope(db) as s:  # its events went in with its commit
        retrying = s.scalars(select(Event).where(Event.job_id == job_id, Event.type == "stage.retrying")).all()
        assert [e.data["stage"] for e in retrying] == ["plan.ad_layout"] and retrying[0].data["manual"] is True
    with session_scope(db) as s, pytest.raises(Conflict):
        retry_job(s, tenant_id=tenant_id, job_id=job_id)  # queued now: nothing to retry
    w.start(job_id)  # what the API sends after the commit
    (again,) = w.take()
    assert again.stage == "plan.ad_layout" and again.attempt == 2
    assert again.upstream["plan.ad_prompts"] == {"stage": "plan.ad_prompts"}
    w.answer(again, ok=True)
    while tasks := w.take():
        for t in tasks:
            w.answer(t, ok=True)
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        types = [e.type for e in s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))]
    assert types.count("job.started") == 2 and types[-1] == "job.succeeded"
    assert types.index("job.failed") < types.index("stage.retrying") < len(types) - 1


# ---------------------------------------------------------------- timeline


def _stage(name: str, item: str, status: str, q: float | None, s: float | None, f: float | None) -> StageView:
    def at(x: float | None) -> datetime | None:
        return T0 + timedelta(seconds=x) if x is not None else None

    seconds = (f - s) if s is not None and f is not None else None
    return StageView(id=f"stg_{name}{item}", name=name, item=item, status=status, attempts=1, worker=None,  # type: ignore[arg-type]
                     queued_at=at(q), started_at=at(s), finished_at=at(f), seconds=seconds, error=None)


def _job(stages: list[StageView], *, finished: float | None = None) -> JobView:
    return JobView(id="job_1", kind="campaign", status="succeeded" if finished else "running", progress=0.5,  # type: ignore[arg-type]
                   created_at=T0, started_at=T0, finished_at=T0 + timedelta(seconds=finished) if finished else None,
                   error=None, gpu_seconds=0.0, spec={}, stages=stages)


def test_timeline_places_queue_wait_and_run_on_one_axis() -> None:
    job = _job([_stage("plan.ad_prompts", "", "succeeded", 0, 1, 2),
                _stage("gpu.background", "a", "succeeded", 2, 4, 8),
                _stage("gpu.background", "b", "running", 2, 6, None),
                _stage("deliver", "", "pending", None, None, None)])
    tl = build_timeline(job, now=T0 + timedelta(seconds=10))
    assert tl.span_s == 10 and [g.name for g in tl.groups] == ["plan.ad_prompts", "gpu.background", "deliver"]
    first = tl.groups[0].bars[0]
    assert (first.wait_left, first.wait_width, first.run_left, first.run_width) == (0, 10, 10, 10)
    a, b = tl.groups[1].bars
    assert (a.run_left, a.run_width) == (40, 40)
    assert b.running and (b.run_left, b.run_width) == (60, 40) and b.seconds == 4  # runs until now
    assert tl.groups[1].status == "running" and tl.groups[1].done == 1 and tl.groups[1].seconds is None
    assert (tl.groups[1].left, tl.groups[1].width) == (20, 80)
    pending = tl.groups[2].bars[0]
    assert pending.run_width == 0 and pending.wait_width == 0 and tl.groups[2].status == "pending"


def test_finished_timeline_ends_at_the_job_end() -> None:
    job = _job([_stage("a", "", "succeeded", 0, 0, 30), _stage("b", "", "succeeded", 30, 31, 120)], finished=120)
    tl = build_timeline(job, now=T0 + timedelta(hours=5))
    assert tl.span_s == 120 and tl.groups[1].bars[0].run_width == pytest.approx(100 * 89 / 120)
    assert [label for _, label in tl.ticks] == ["0.0 s", "30 s", "1 min", "1 min 30 s", "2 min"]


@pytest.mark.parametrize(("seconds", "text"), [(0.123, "0.12 s"), (12.34, "12.3 s"), (245, "4 min 05 s"),
                                               (7380, "2 h 03 min"), (None, "–")])
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_axis_ticks_are_round_and_few() -> None:
    for span in (0.8, 7, 59, 61, 900, 4000, 90000):
        ticks = axis_ticks(span)
        assert 2 <= len(ticks) <= 6 and ticks[0][0] == 0 and all(0 <= p <= 100 for p, _ in ticks)


# ---------------------------------------------------------------- charts


def test_bar_chart_scales_to_a_round_maximum_and_escapes_labels() -> None:
    assert [charts.nice_max(v) for v in (0, 0.3, 7, 12, 26, 990)] == [1, 0.5, 10, 20, 50, 1000]
    svg = str(charts.bar_chart([0, 5, 10], ["a", "<b>", "c"], title="GPU & co", unit="s"))
    assert svg.count('<rect class="bar"') == 3 and "&lt;b&gt;" in svg and "GPU &amp; co" in svg
    heights = [float(h) for h in re.findall(r'class="bar"[^>]* height="([\d.]+)"', svg)]
    assert heights[0] == 0 and heights[2] == pytest.approx(2 * heights[1])


# ---------------------------------------------------------------- gallery


def _art(kind: str, name: str, meta: dict[str, Any]) -> ArtifactView:
    return ArtifactView(id=f"art_{kind}{name}", kind=kind, name=name, content_type="image/png", size_bytes=1,
                        sha256="0" * 64, width=10, height=10, meta=meta, created_at=T0, stage_id=None,
                        key=f"k/{kind}/{name}", url="/x")


def test_gallery_groups_by_size_and_variant_and_pages_in_order() -> None:
    g = build_gallery([_art("asset", "300x250-v1", {}), _art("asset", "300x250-v0", {}),
                       _art("asset", "728x90-v0", {}), _art("background", "300x250-v0", {}),
                       _art("manifest", "manifest", {})], sizes=["728x90", "300x250"])
    assert [s.size for s in g.sizes] == ["728x90", "300x250"]
    assert [t.variant for t in g.sizes[1].tiles] == [0, 1] and g.sizes[1].tiles[0].title == "300x250 · variant 1"
    assert [t.artifact.kind for t in g.intermediates] == ["background"] and [a.kind for a in g.other] == ["manifest"]
    book = build_gallery([_art("asset", f"s{i}", {}) for i in (10, 2, 0, 1)])
    assert [t.page for t in book.pages] == [1, 2, 3, 11] and not book.sizes


def test_gate_scores_come_from_any_of_the_recorded_shapes() -> None:
    scores = gate_scores({"gates": {"identity": {"similarity": 0.71, "passed": True}}},
                         {"checks": {"ocr": {"cer": 0.0, "passed": True}, "contrast": 4.5, "safe_zones": False}},
                         {"identity": 0.2})  # the first value of a name wins
    got = {s.name: (s.value, s.state) for s in scores}
    assert got == {"identity": ("0.71 ✓", "ok"), "ocr": ("0 ✓", "ok"), "contrast": ("4.5", "info"),
                   "safe_zones": ("fail", "bad")}


def test_watermark_and_c2pa_badges() -> None:
    assert watermark_badge({}).state == "none"
    ok = watermark_badge({"watermark": {"method": "dwtDctSvd", "readback_ok": True, "bit_accuracy": 0.99}})
    assert ok.state == "ok" and "0.990" in ok.detail
    assert watermark_badge({"watermark": {"readback_ok": False}}).state == "bad"
    assert c2pa_badge({}).label == "no C2PA"
    assert c2pa_badge({"c2pa": {"state": "Trusted"}}).state == "ok"
    assert c2pa_badge({"c2pa": {"status": "untrusted"}}).state == "warn"
    assert c2pa_badge({"c2pa": {"valid": False}}).state == "bad"


def test_rpg_grid_cells_cover_the_canvas_once() -> None:
    info = PlannerInfo(backend="rules", model="rules", prompt_version="1")
    plan = RegionalPlan(plan_id="p", seed=1, width=1200, height=600, planner=info, base_prompt="beach",
                        split_ratio="1,1,2;1,1", regions=[Region(row=0, col=0, prompt="sky"),
                                                          Region(row=0, col=1, prompt="sun"),
                                                          Region(row=1, col=0, prompt="sand")])
    c = regional_canvas(plan)
    assert [b.label.split(":")[0] for b in c.boxes] == ["r0c0", "r0c1", "r1c0"]
    assert sum(b.w * b.h for b in c.boxes) == pytest.approx(1200 * 600)
    assert c.boxes[1].x == pytest.approx(400) and c.boxes[2].y == pytest.approx(300)


# ---------------------------------------------------------------- form mapping


def test_spec_error_paths_map_to_form_fields() -> None:
    assert form_field("spec.taglines.2") == "taglines" and form_field("spec.brand.palette.0") == "brand_palette"
    assert form_field("spec.product.image") == "product_image" and form_field("file") == "product_image"
    assert form_field("spec.pages") == "pages" and form_field("spec.unknown") is None
    f = JobForm(values={"kind": "campaign", "brand_name": " Acme ", "product_name": "P", "product_description": "d",
                        "taglines": "one\n\n two \n", "brand_palette": "#111111 #222222,#333333", "seed": "",
                        "cta": ""}, sizes=["300x250"])
    req = build_request(f, product_image="art_1")
    assert req.spec["taglines"] == ["one", "two"] and req.spec["brand"]["palette"] == ["#111111", "#222222", "#333333"]
    assert req.spec["product"]["image"] == "art_1" and "seed" not in req.spec and "cta" not in req.spec


# ---------------------------------------------------------------- queues and workers


class FakePipe:
    def __init__(self, lists: dict[str, int], unacked: int) -> None:
        self.lists, self.unacked, self.calls = lists, unacked, []

    def llen(self, key: str) -> None:
        self.calls.append(self.lists.get(key, 0))

    def hlen(self, key: str) -> None:
        assert key == "unacked"
        self.calls.append(self.unacked)

    def execute(self) -> list[int]:
        return self.calls


class FakeRedis:
    def __init__(self, lists: dict[str, int], unacked: int = 0) -> None:
        self.lists, self.unacked = lists, unacked

    def pipeline(self, transaction: bool = True) -> FakePipe:
        return FakePipe(self.lists, self.unacked)


def test_queue_depths_add_up_kombus_priority_lists() -> None:
    assert system.queue_depths(Settings()).mode == "embedded"
    services = Settings(broker_url="redis://127.0.0.1:1/0")
    q = system.queue_depths(services, client=FakeRedis({"gpu.diffusion": 3, "gpu.diffusion\x06\x163": 2,
                                                        "render": 1}, unacked=4))
    depths = {d.name: d.ready for d in q.depths}
    assert q.mode == "redis" and depths["gpu.diffusion"] == 5 and depths["render"] == 1 and depths["planning"] == 0
    assert q.unacked == 4
    unreachable = system.queue_depths(Settings(broker_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    assert unreachable.mode == "unreachable" and unreachable.error
    assert system.queue_depths(Settings(broker_url="amqp://x")).mode == "unknown"


class FakeInspect:
    def active_queues(self) -> dict[str, Any]:
        return {"gpu@h1": [{"name": "gpu.diffusion"}], "cpu@h2": [{"name": "render"}, {"name": "planning"}]}

    def active(self) -> dict[str, Any]:
        return {"gpu@h1": [{"name": "atelier.stage.gpu.background",
                            "args": [{"job_id": "job_mine", "stage": "gpu.background", "item": "1080x1080-v0"}]},
                           {"name": "atelier.stage.gpu.background",
                            "args": [{"job_id": "job_theirs", "stage": "gpu.background", "item": "1x1-v0"}]}],
                "cpu@h2": []}


class FakeCelery:
    class control:  # noqa: N801 - mirrors Celery's attribute
        @staticmethod
        def inspect(timeout: float) -> FakeInspect:
            return FakeInspect()


def test_workers_show_their_queues_and_only_the_viewers_job_ids() -> None:
    w = system.workers_online(Settings(broker_url="redis://x"), FakeCelery(),  # type: ignore[arg-type]
                              own_job=lambda job_id: job_id == "job_mine")
    assert w.mode == "inspected" and [x.name for x in w.items] == ["cpu@h2", "gpu@h1"]
    gpu = w.items[1]
    assert gpu.queues == ["gpu.diffusion"]
    assert [(t.stage, t.job_id) for t in gpu.active] == [("gpu.background[1080x1080-v0]", "job_mine"),
                                                        ("gpu.background[1x1-v0]", None)]
    assert system.workers_online(Settings(), FakeCelery(), own_job=lambda _: True).mode == "embedded"  # type: ignore[arg-type]


def test_hourly_buckets(db: Any) -> None:
    now = datetime(2030, 1, 2, 12, 30, tzinfo=UTC)
    spec = CampaignSpec.model_validate({"brand": {"name": "B"}, "product": {"name": "P", "description": "d"},
                                        "taglines": ["t"]})
    with session_scope(db) as s:
        tenant, _ = create_tenant(s, "acme")
        other, _ = create_tenant(s, "globex")
        for who, hours_ago, gpu in ((tenant, 0, 2.0), (tenant, 0, 1.5), (tenant, 3, 4.0), (tenant, 30, 9.0),
                                    (other, 0, 7.0)):
            job, _ = create_job(s, tenant_id=who.id, kind="campaign", spec=spec)
            s.add(Stage(job_id=job.id, name="gpu.background", item=str(gpu), queue="gpu.diffusion",
                        status="succeeded", gpu_seconds=gpu, finished_at=now - timedelta(hours=hours_ago)))
        tenant_id = tenant.id
    with session_scope(db) as s:
        hours = system.hourly(s, tenant_id=tenant_id, now=now)
    assert len(hours) == 24 and hours[-1].start == datetime(2030, 1, 2, 12, tzinfo=UTC)
    assert hours[-1].gpu_seconds == 3.5 and hours[-4].gpu_seconds == 4.0 and sum(h.gpu_seconds for h in hours) == 7.5

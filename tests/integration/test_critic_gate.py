"""The critic gate on PostgreSQL: the real engine, the real planner stages and gate.critic, a real HTTP VLM.

The VLM is the chat-completions double of the planner tests (a server on 127.0.0.1, a thread of this test),
told to see blue as right and red as wrong. The background is played by a painter (the tiny random models draw
noise, and the GPU worker's background stage is not under test here): its first attempt paints the product
box red, its regeneration paints it blue. The gate must ask for one regeneration, keep the second attempt,
and record both in the backgrounds' meta.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.plans import AdPlan
from atelier_contracts.specs import CampaignSpec
from atelier_contracts.tasks import StageResult, StageTask
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.jobs import create_job
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_orchestrator import engine
from atelier_planner.stages.ad_layout import ad_layout as ad_layout_stage
from atelier_planner.stages.ad_prompts import ad_prompts as ad_prompts_stage
from atelier_planner.stages.gate_critic import critic_gate as critic_gate_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from PIL import Image
from sqlalchemy import select

from tests.unit.planner.llm_double import ChatDouble, data_of, images_of

pytestmark = pytest.mark.integration

CAMPAIGN = {"brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"]},
            "product": {"name": "Cold Brew", "description": "A bottle of cold brew coffee"},
            "taglines": ["Slow steeped."], "sizes": ["1080x1080"], "variants": 1}
RED, BLUE = (200, 30, 30), (30, 60, 200)
PLANNER_STAGES = {"plan.ad_prompts": ad_prompts_stage, "plan.ad_layout": ad_layout_stage,
                  "gate.critic": critic_gate_stage}


class AppStub:
    def send_task(self, *_: Any, **__: Any) -> None:
        pass


def blue_judge(body: dict[str, Any]) -> dict[str, Any]:
    px = list(images_of(body)[0].convert("RGB").resize((8, 8)).getdata())
    red, blue = (sum(p[k] for p in px) for k in (0, 2))
    ok = blue > red
    return {"present": ok, "matches": ok, "confidence": 90, "reason": "mostly blue" if ok else "mostly red"}


def paint(t: StageTask) -> bytes:
    """The background of attempt ``t.regeneration``: blue, with a red product box the first time."""
    layout = AdPlan.model_validate(t.upstream["plan.ad_layout"]["plan"]).variants[0].layout
    img = Image.new("RGB", (128, 128), BLUE)
    (box,) = [b for b in layout.boxes if b.role == "product"]
    x1, y1, x2, y2 = (round(v * 128) for v in box.bbox)
    img.paste(RED if t.regeneration == 0 else BLUE, (x1, y1, x2, y2))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def double() -> Any:
    d = ChatDouble().start()
    try:
        yield d
    finally:
        d.stop()


def test_a_region_that_does_not_match_is_regenerated_on_postgres(pg_url: str, tmp_path: Path,
                                                                 double: ChatDouble) -> None:
    settings = Settings(home=tmp_path, database_url=pg_url, llm_base_url=double.base_url, vlm_model="double-vlm",
                        llm_timeout_s=5, llm_max_retries=0, gate_max_attempts=3, gate_max_regenerations=4)
    double.script = [blue_judge] * 40
    factory = session_factory(make_engine(pg_url))
    res = WorkerResources(settings)
    with session_scope(factory) as s:
        tenant, _ = create_tenant(s, f"critic-it-{datetime.now(UTC).timestamp()}")
        job, _ = create_job(s, tenant_id=tenant.id, kind="campaign", spec=CampaignSpec.model_validate(CAMPAIGN))
        job_id = job.id
    sent: list[tuple[str, list[Any]]] = []

    def send(name: str, args: list[Any], _countdown: float | None) -> None:
        sent.append((name, args))

    def finish(t: StageTask, output: dict[str, Any], artifacts: list[Any]) -> None:
        now = datetime.now(UTC)
        r = StageResult(job_id=t.job_id, stage_id=t.stage_id, attempt=t.attempt, status="succeeded", output=output,
                        artifacts=artifacts, worker="it", started_at=now, finished_at=now + timedelta(milliseconds=1),
                        regeneration=t.regeneration)
        engine.run_in_tx(factory, send, lambda s, o: engine.stage_done(s, r, o, settings=settings))

    engine.run_in_tx(factory, send, lambda s, o: engine.start_job(s, job_id, o, settings=settings))
    ran: list[StageTask] = []
    while sent:
        batch = [StageTask.model_validate(a[0]) for n, a in sent if n.startswith("atelier.stage.")]
        sent.clear()
        for t in batch:
            ran.append(t)
            ctx = StageContext(t, res, AppStub())  # type: ignore[arg-type]
            if t.stage in PLANNER_STAGES:  # the planner service's own stage functions (rules plans, the critic)
                finish(t, PLANNER_STAGES[t.stage].stage_fn(ctx), ctx.artifacts)
                continue
            out: dict[str, Any] = {}
            if t.stage == "gpu.background":  # the painter, honouring StageTask.regeneration like gpu.scene
                name = t.item if not t.regeneration else f"{t.item}.r{t.regeneration}"
                rec = ctx.put(name=name, data=paint(t), ext="png", content_type="image/png", kind="background",
                              width=128, height=128, meta={"seed": 100 + t.regeneration})
                out = {"background_key": rec.key, "seed": 100 + t.regeneration, "recipe": "layout"}
            finish(t, out, ctx.artifacts)
    order = [f"{t.stage}r{t.regeneration}" for t in ran]
    assert order.count("gpu.backgroundr0") == 1 and order.count("gpu.backgroundr1") == 1
    assert order.index("gate.criticr1") < order.index("render.adr0")
    (ad,) = [t for t in ran if t.stage == "render.ad"]
    assert ad.upstream["gpu.background"]["background_key"].endswith("/gpu.background/1080x1080-v0.r1.png")

    layout = AdPlan.model_validate(ad.upstream["plan.ad_layout"]["plan"]).variants[0].layout
    product = next(i for i, b in enumerate(layout.boxes) if b.role == "product")
    checked = [b for b in layout.boxes if b.role in ("background", "entity", "product")]
    asked = double.chat_requests("critic_region")
    assert len(asked) == 2 * len(checked) and {r["model"] for r in asked} == {"double-vlm"}
    assert [data_of(r)["region_caption"] for r in asked[:len(checked)]] == [b.caption for b in checked]
    with session_scope(factory) as s:
        assert s.get(Job, job_id).status == "succeeded"
        gate = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "gate.critic"))
        assert gate.output["passed"] is True and gate.output["kept"] == 1
        first, second = gate.output["attempts"]
        assert first["score"] == round((len(checked) - 1) / len(checked), 4) and second["score"] == 1.0
        metas = {a.name: a.meta for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id,
                                                                          Artifact.kind == "background"))}
        assert set(metas) == {"1080x1080-v0", "1080x1080-v0.r1"}
        bad, good = metas["1080x1080-v0"], metas["1080x1080-v0.r1"]
        assert bad["gates"]["gate.critic"]["passed"] is False and bad["gate_selected"] is False
        assert bad["gates"]["gate.critic"]["report"]["failed_regions"] == [product]
        verdicts = {v["index"]: v for v in bad["gates"]["gate.critic"]["report"]["verdicts"]}
        assert verdicts[product]["reason"] == "mostly red" and verdicts[product]["matches"] is False
        assert good["gates"]["gate.critic"]["passed"] is True and good["gate_selected"] is True
        assert good["gates"]["gate.critic"]["gates"] == [{"name": "critic", "score": 1.0, "passed": True,
                                                          "detail": f"{len(checked)} of {len(checked)} regions match "
                                                                    "their captions"}]
        reports = s.scalars(select(Artifact.name).where(Artifact.job_id == job_id, Artifact.kind == "gate_report")).all()
        assert sorted(reports) == ["1080x1080-v0", "1080x1080-v0.r1"]
        types = [e.type for e in s.scalars(select(Event).where(Event.job_id == job_id))]
    assert types.count("stage.regenerating") == 1 and "job.warning" not in types

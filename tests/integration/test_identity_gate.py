"""The identity gate on PostgreSQL: the real engine and the real gate stage, with a test embedder.

The diffusion stages are played by a painter (the tiny random models draw no faces): the character sheet is
Asha's face; the first attempt at scene s0 shows someone else, its regeneration shows Asha; scene s1 shows Asha
at once. The gate must regenerate s0 once (and s1 never), keep s0's second attempt, and record both with their
scores.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.specs import StorySpec
from atelier_contracts.tasks import StageResult, StageTask
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.jobs import create_job
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_gpu.stages.gate_identity import identity_gate as identity_gate_stage
from atelier_orchestrator import engine
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).parent.parent / "unit" / "identity"))
from kit import ASHA, RAMU, face, write_embedder  # noqa: E402

pytestmark = pytest.mark.integration

PLANNER = {"backend": "rules", "model": "rules", "prompt_version": "1"}
CAST = [{"character_id": "c0", "pose": "standing", "expression": "happy",
         "box": {"bbox": [0.1, 0.4, 0.4, 1.0], "role": "character"}}]


class AppStub:
    def send_task(self, *_: Any, **__: Any) -> None:
        pass


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_mismatching_scene_is_regenerated_on_postgres(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=pg_url, identity_embedder_path=write_embedder(tmp_path / "e.pt"),
                        identity_threshold=0.8, gate_max_attempts=3, gate_max_regenerations=4)
    factory = session_factory(make_engine(pg_url))
    res = WorkerResources(settings)
    with session_scope(factory) as s:
        tenant, _ = create_tenant(s, "identity-it")
        job, _ = create_job(s, tenant_id=tenant.id, kind="story",
                            spec=StorySpec.model_validate({"premise": "p", "culture": "Japan", "pages": 2}))
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

    engine.run_in_tx(factory, send, lambda s, o: engine.start_job(s, job_id, o))
    ran: list[str] = []
    while sent:
        batch = [StageTask.model_validate(a[0]) for n, a in sent if n.startswith("atelier.stage.")]
        sent.clear()
        for t in batch:
            ran.append(f"{t.stage}[{t.item}]r{t.regeneration}")
            ctx = StageContext(t, res, AppStub())
            if t.stage == "gate.identity":
                finish(t, identity_gate_stage.stage_fn(ctx), ctx.artifacts)
                continue
            out: dict[str, Any] = {}
            if t.stage == "plan.characters":
                out = {"characters": [{"id": "c0"}]}
            elif t.stage == "plan.scenes":
                out = {"plan": {"plan_id": "p1", "seed": 1, "width": 256, "height": 256, "planner": PLANNER,
                                "title": "T", "story": "S", "language": "en", "culture_notes": [],
                                "characters": [{"id": "c0", "name": "Asha", "description": "d", "sheet_prompt": "s",
                                                "seed": 0}],
                                "scenes": [{"index": i, "narration": "n", "backdrop": "b", "scene_prompt": "p",
                                            "cast": CAST} for i in range(2)]}}
            elif t.stage == "gpu.character_sheet":
                rec = ctx.put(name="c0", data=_png(face(256, **ASHA, bg=(250, 250, 250))), ext="png",
                              content_type="image/png", kind="character_sheet")
                out = {"sheet_key": rec.key}
            elif t.stage == "gpu.scene":  # the painter: someone else first in s0, Asha when regenerated and in s1
                who = RAMU if (t.item, t.regeneration) == ("s0", 0) else ASHA
                name = t.item if not t.regeneration else f"{t.item}.r{t.regeneration}"
                rec = ctx.put(name=name, data=_png(face(256, **who, bg=(60, 120, 60))), ext="png",
                              content_type="image/png", kind="scene")
                out = {"scene_key": rec.key, "seed": 100 + t.regeneration}
            finish(t, out, ctx.artifacts)
    assert ran.count("gpu.scene[s0]r0") == 1 and ran.count("gpu.scene[s0]r1") == 1
    assert ran.count("gpu.scene[s1]r0") == 1 and not any(r.startswith("gpu.scene[s1]r1") for r in ran)
    assert ran.count("gate.identity[s1]r0") == 1  # the scene whose character passed is never redrawn
    assert ran.index("gate.identity[s0]r1") < ran.index("render.storybook[s0]r0")
    with session_scope(factory) as s:
        assert s.get(Job, job_id).status == "succeeded"
        gate = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "gate.identity", Stage.item == "s0"))
        assert gate.output["passed"] is True and gate.output["kept"] == 1
        first, second = gate.output["attempts"]
        assert first["score"] < 0.8 <= second["score"]
        scenes = {a.name: a.meta for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id,
                                                                           Artifact.kind == "scene"))}
        assert scenes["s0"]["gate_selected"] is False and scenes["s0.r1"]["gate_selected"] is True
        assert scenes["s0"]["gates"]["gate.identity"]["passed"] is False
        reports = s.scalars(select(Artifact.name).where(Artifact.job_id == job_id, Artifact.kind == "gate_report")).all()
        assert sorted(reports) == ["s0", "s0.r1", "s1"]
        types = [e.type for e in s.scalars(select(Event).where(Event.job_id == job_id))]
    assert types.count("stage.regenerating") == 1 and "job.warning" not in types

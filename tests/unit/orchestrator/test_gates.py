"""Quality gates in the engine: best-of-N regeneration within a per-job budget, kept best, warnings, strict mode."""

from __future__ import annotations

from typing import Any

from atelier_contracts.specs import StorySpec
from atelier_contracts.tasks import ArtifactRecord, StageTask
from atelier_control.auth import create_tenant
from atelier_control.db import session_scope
from atelier_control.jobs import create_job
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_orchestrator import engine, gates
from sqlalchemy import select

from .gate_driver import GateDriver, attempt_name, gate_settings

settings = gate_settings


def gate_result(score: float | None, *, passed: bool | None = None, regenerate: bool = True, strict: bool = False,
                t: StageTask) -> dict[str, Any]:
    passed = (score is not None and score >= 0.5) if passed is None else passed
    key = f"{t.key_prefix}/gpu.scene/{attempt_name(t)}.png"
    return {"gates": [{"name": "identity", "score": score, "passed": passed, "detail": "d"}], "passed": passed,
            "score": score, "regenerate": regenerate and not passed, "artifact_key": key, "strict": strict,
            "warnings": [] if score is not None else ["no face found"], "detail": "no face found" if score is None else "d"}


class Driver(GateDriver):
    default_item = "s0"

    def produce(self, t: StageTask) -> tuple[dict[str, Any], list[ArtifactRecord]]:
        if t.stage == "plan.characters":
            return {"done": t.stage, "characters": [{"id": "c0"}]}, []
        if t.stage == "gpu.scene":
            name = attempt_name(t)
            key = f"{t.key_prefix}/gpu.scene/{name}.png"
            return {"scene_key": key, "seed": 100 + t.regeneration}, [ArtifactRecord(
                key=key, kind="scene", name=name, content_type="image/png", size_bytes=1, sha256="0" * 64,
                meta={"seed": 100 + t.regeneration})]
        if t.stage == "gate.identity":
            return self.gate(t), []
        return super().produce(t)


def story(db: Any, pages: int = 2) -> str:
    with session_scope(db) as s:
        tenant, _ = create_tenant(s, f"t-{id(db)}-{pages}")
        job, _ = create_job(s, tenant_id=tenant.id, kind="story",
                            spec=StorySpec.model_validate({"premise": "p", "culture": "Japan", "pages": pages}))
        return job.id


def events(db: Any, job_id: str, kind: str) -> list[dict[str, Any]]:
    with session_scope(db) as s:
        return [e.data for e in s.scalars(select(Event).where(Event.job_id == job_id, Event.type == kind)
                                          .order_by(Event.id))]


def test_a_mismatch_is_regenerated_and_both_attempts_are_recorded(db):
    scores = {0: 0.2, 1: 0.9}
    d = Driver(db, settings(), lambda t: gate_result(scores[t.regeneration] if t.item == "s0" else 0.8, t=t))
    job_id = story(db)
    d.run(job_id)
    assert [t.regeneration for t in d.runs("gpu.scene")] == [0, 1]
    assert [t.regeneration for t in d.runs("gate.identity")] == [0, 1]
    assert [t.regeneration for t in d.runs("gpu.scene", "s1")] == [0]
    (book,) = d.runs("render.storybook")
    assert book.upstream["gpu.scene"]["scene_key"].endswith("s0.r1.png")  # the page uses the passing attempt
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"
        gate = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "gate.identity", Stage.item == "s0"))
        assert gate.output["passed"] is True and gate.output["kept"] == 1
        assert [a["score"] for a in gate.output["attempts"]] == [0.2, 0.9]
        arts = {a.name: a.meta for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id,
                                                                         Artifact.kind == "scene"))}
    assert arts["s0"]["gates"]["gate.identity"]["score"] == 0.2 and arts["s0"]["gate_selected"] is False
    assert arts["s0.r1"]["gates"]["gate.identity"]["passed"] is True and arts["s0.r1"]["gate_selected"] is True
    assert [e["regeneration"] for e in events(db, job_id, "stage.regenerating")] == [1]
    assert events(db, job_id, "job.warning") == []


def test_budget_spent_keeps_the_best_attempt_and_warns(db):
    scores = {0: 0.3, 1: 0.45, 2: 0.1}
    d = Driver(db, settings(gate_max_attempts=3), lambda t: gate_result(scores[t.regeneration] if t.item == "s0"
                                                                       else 0.9, t=t))
    job_id = story(db)
    d.run(job_id)
    assert [t.regeneration for t in d.runs("gpu.scene")] == [0, 1, 2]  # best of N = 3
    (book,) = d.runs("render.storybook")
    assert book.upstream["gpu.scene"] == {"scene_key": book.upstream["gpu.scene"]["scene_key"], "seed": 101}
    assert book.upstream["gpu.scene"]["scene_key"].endswith("s0.r1.png")
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"
        scene = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "gpu.scene", Stage.item == "s0"))
        assert scene.output["seed"] == 101
    (warning,) = events(db, job_id, "job.warning")
    assert "kept regeneration 1" in warning["warning"] and warning["item"] == "s0"


def test_the_job_budget_is_shared_by_all_items(db):
    d = Driver(db, settings(gate_max_regenerations=1), lambda t: gate_result(0.1, t=t))
    job_id = story(db, pages=3)
    d.run(job_id)
    total = sum(len(d.runs("gpu.scene", f"s{i}")) for i in range(3))
    assert total == 3 + 1  # one regeneration for the whole job
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"
        assert gates.regenerations_used(s, job_id, exclude="") == 1
    assert len(events(db, job_id, "job.warning")) == 3


def test_no_face_found_warns_and_completes_without_regenerating(db):
    d = Driver(db, settings(), lambda t: gate_result(None, regenerate=False, t=t))
    job_id = story(db)
    d.run(job_id)
    assert len(d.runs("gpu.scene")) == 1
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded"
        gate = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "gate.identity", Stage.item == "s0"))
        assert gate.output["passed"] is False and gate.output["detail"] == "no face found"
    assert all("no face found" in w["warning"] for w in events(db, job_id, "job.warning"))


def test_strict_gate_fails_the_job(db):
    d = Driver(db, settings(), lambda t: gate_result(None, regenerate=False, strict=True, t=t))
    job_id = story(db)
    d.run(job_id)
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "strict gate" in (job.error or "") and "no face found" in job.error
        assert not s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name == "render.storybook",
                                                 Stage.status == "succeeded")).all()


def test_a_stale_result_for_a_reset_row_is_ignored(db):
    d = Driver(db, settings(), lambda t: gate_result(0.1 if t.regeneration == 0 else 0.9, t=t))
    job_id = story(db, pages=1)
    engine.run_in_tx(db, d.send, lambda s, o: engine.start_job(s, job_id, o))
    first_scene = None
    while True:
        tasks = [StageTask.model_validate(a[0]) for n, a, _ in d.sent if n.startswith("atelier.stage.")]
        d.sent.clear()
        if not tasks:
            break
        for t in tasks:
            if t.stage == "gpu.scene" and first_scene is None:
                first_scene = t
            d.ran.append(t)
            d.finish(t)
            if t.stage == "gate.identity" and t.regeneration == 0:
                d.finish(first_scene)  # the first scene's result delivered again, while the row waits to regenerate
    with session_scope(db) as s:
        scene = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.name == "gpu.scene"))
        assert scene.output["scene_key"].endswith("s0.r1.png") and s.get(Job, job_id).status == "succeeded"

"""gate.critic in the campaign graph: skipped without a VLM, best-of-N on gpu.background with one, on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from atelier_contracts.catalogue import STAGE_QUEUES
from atelier_contracts.specs import CampaignSpec
from atelier_contracts.tasks import Q_PLANNING, ArtifactRecord, StageTask
from atelier_control.auth import create_tenant
from atelier_control.db import session_scope
from atelier_control.jobs import create_job
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_orchestrator import gates
from atelier_orchestrator.graphs import GRAPHS
from atelier_runtime.settings import Settings
from sqlalchemy import select

from .gate_driver import GateDriver, GateFn, attempt_name, gate_settings

CAMPAIGN = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d"}, "taglines": ["t"],
            "sizes": ["1080x1080"], "variants": 2}


settings = gate_settings


def bg_name(t: StageTask, honours_regeneration: bool = True) -> str:
    return attempt_name(t) if honours_regeneration else t.item


def critic(t: StageTask, score: float | None, *, honours_regeneration: bool = True,
           status: str = "ok") -> dict[str, Any]:
    """What gate.critic returns (the planner's gate_output contract) for one background."""
    passed = status == "ok" and score == 1.0
    key = f"{t.key_prefix}/gpu.background/{bg_name(t, honours_regeneration)}.png"
    return {"gates": [{"name": "critic", "score": score, "passed": passed, "detail": "d"}], "passed": passed,
            "score": score, "regenerate": status == "ok" and not passed, "detail": f"{status} d", "artifact_key": key,
            "strict": False, "warnings": [] if passed else ["region 3 (product 'a bottle') does not match: red"],
            "critic_status": status, "report": {"status": status, "failed_regions": [] if passed else [3]}}


class Driver(GateDriver):
    default_item = "1080x1080-v0"

    def __init__(self, db: Any, settings: Settings | None, gate: GateFn, *, honours_regeneration: bool = True) -> None:
        super().__init__(db, settings, gate)
        self.honours = honours_regeneration

    def produce(self, t: StageTask) -> tuple[dict[str, Any], list[ArtifactRecord]]:
        if t.stage == "gpu.background":
            name = bg_name(t, self.honours)
            key = f"{t.key_prefix}/gpu.background/{name}.png"
            output = {"background_key": key, "seed": 100 + (t.regeneration if self.honours else 0), "recipe": "layout"}
            return output, [ArtifactRecord(key=key, kind="background", name=name, content_type="image/png",
                                           size_bytes=1, sha256="0" * 64, meta={"seed": output["seed"]})]
        if t.stage == "gate.critic":
            return self.gate(t), []
        return super().produce(t)


def campaign(db: Any, **spec: Any) -> str:
    with session_scope(db) as s:
        tenant, _ = create_tenant(s, f"t-{id(spec)}-{datetime.now(UTC).timestamp()}")
        job, _ = create_job(s, tenant_id=tenant.id, kind="campaign", spec=CampaignSpec.model_validate({**CAMPAIGN, **spec}))
        return job.id


def rows(db: Any, job_id: str, name: str) -> list[Stage]:
    with session_scope(db) as s:
        found = s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name == name).order_by(Stage.item)).all()
        s.expunge_all()
        return list(found)


def event_types(db: Any, job_id: str) -> list[str]:
    with session_scope(db) as s:
        return [e.type for e in s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))]


def backgrounds(db: Any, job_id: str) -> dict[str, dict[str, Any]]:
    with session_scope(db) as s:
        return {a.name: a.meta for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id,
                                                                         Artifact.kind == "background"))}


def test_the_gate_sits_between_the_background_and_the_ad_on_the_planning_queue() -> None:
    graph = GRAPHS["campaign"]
    names = [s.name for s in graph.stages]
    assert names.index("gpu.background") < names.index("gate.critic") < names.index("render.ad")
    assert graph.stage("gate.critic").fan_out == "size_variant" and STAGE_QUEUES["gate.critic"] == Q_PLANNING
    assert "gate.critic" in graph.stage("render.ad").after and gates.GATE_TARGETS["gate.critic"] == "gpu.background"


def test_without_a_vlm_the_gate_is_skipped_and_says_it_did_not_judge(db: Any) -> None:
    d = Driver(db, settings(), lambda t: pytest.fail("gate.critic must not be queued without a VLM"))
    job_id = campaign(db)
    d.run(job_id)
    assert [t.regeneration for t in d.runs("gpu.background")] == [0]
    (ad,) = d.runs("render.ad")
    assert ad.upstream["gate.critic"]["skipped"].startswith("critic absent: no VLM configured (ATELIER_VLM_MODEL)")
    crit = rows(db, job_id, "gate.critic")
    assert len(crit) == 2 and all(r.status == "succeeded" and r.attempts == 0 for r in crit)
    assert all("not judged" in r.output["skipped"] for r in crit)
    types = event_types(db, job_id)
    assert types[-1] == "job.succeeded" and "stage.gate" not in types and "job.warning" not in types
    assert all("gates" not in meta for meta in backgrounds(db, job_id).values())


def test_a_studio_backdrop_has_nothing_to_judge(db: Any) -> None:
    d = Driver(db, settings(vlm_model="v"), lambda t: pytest.fail("nothing to judge"))
    job_id = campaign(db, backdrop="studio")
    d.run(job_id)
    assert not d.runs("gpu.background") and len(d.runs("render.ad")) == 1
    assert all(r.output["skipped"].startswith("studio backdrop") for r in rows(db, job_id, "gate.critic"))


def test_settings_default_to_the_environment(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_VLM_MODEL", "env-vlm")  # start_job/stage_done callers that pass no settings
    d = Driver(db, None, lambda t: critic(t, 1.0))
    job_id = campaign(db)
    d.run(job_id)
    assert len(d.runs("gate.critic")) == 1 and rows(db, job_id, "gate.critic")[0].output["passed"] is True


def test_a_failing_region_regenerates_the_background_and_the_ad_uses_the_kept_one(db: Any) -> None:
    scores = {0: 0.75, 1: 1.0}
    d = Driver(db, settings(vlm_model="v"), lambda t: critic(t, scores[t.regeneration] if t.item.endswith("v0") else 1.0))
    job_id = campaign(db)
    d.run(job_id)
    assert [t.regeneration for t in d.runs("gpu.background")] == [0, 1]
    assert [t.regeneration for t in d.runs("gate.critic")] == [0, 1]
    assert [t.regeneration for t in d.runs("gpu.background", "1080x1080-v1")] == [0]
    (ad,) = d.runs("render.ad")
    assert ad.upstream["gpu.background"]["background_key"].endswith("1080x1080-v0.r1.png")
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"
    gate = rows(db, job_id, "gate.critic")[0]
    assert gate.output["passed"] is True and gate.output["kept"] == 1
    assert [a["score"] for a in gate.output["attempts"]] == [0.75, 1.0]
    metas = backgrounds(db, job_id)
    first, second = metas["1080x1080-v0"], metas["1080x1080-v0.r1"]
    assert first["gates"]["gate.critic"]["passed"] is False and first["gate_selected"] is False
    assert first["gates"]["gate.critic"]["report"]["failed_regions"] == [3]  # the per-region report, per attempt
    assert second["gates"]["gate.critic"]["passed"] is True and second["gate_selected"] is True
    assert metas["1080x1080-v1"]["gate_selected"] is True
    types = event_types(db, job_id)
    assert types.count("stage.regenerating") == 1 and "job.warning" not in types


def test_a_vlm_error_keeps_the_background_with_a_warning(db: Any) -> None:
    d = Driver(db, settings(vlm_model="v"), lambda t: critic(t, None, status="error"))
    job_id = campaign(db, variants=1)
    d.run(job_id)
    assert [t.regeneration for t in d.runs("gpu.background")] == [0]  # no regeneration: a new seed cannot help
    with session_scope(db) as s:
        assert s.get(Job, job_id).status == "succeeded"
        (warning,) = [e.data for e in s.scalars(select(Event).where(Event.job_id == job_id, Event.type == "job.warning"))]
    assert warning["stage"] == "gate.critic" and "did not pass" in warning["warning"]
    meta = backgrounds(db, job_id)["1080x1080-v0"]
    assert meta["gates"]["gate.critic"]["passed"] is False and meta["gate_selected"] is True


def test_a_target_that_ignores_the_regeneration_is_not_asked_again(db: Any) -> None:
    # the background writes the same key and seed when regenerated: one wasted try, then the gate stops asking
    d = Driver(db, settings(vlm_model="v", gate_max_attempts=5), lambda t: critic(t, 0.5, honours_regeneration=False),
               honours_regeneration=False)
    job_id = campaign(db, variants=1)
    d.run(job_id)
    assert [t.regeneration for t in d.runs("gpu.background")] == [0, 1]
    gate = rows(db, job_id, "gate.critic")[0]
    assert gate.output["passed"] is False and len(gate.output["attempts"]) == 2
    (meta,) = backgrounds(db, job_id).values()
    assert meta["gate_selected"] is True  # the one artifact both attempts scored is the one kept
    with session_scope(db) as s:
        (warning,) = [e.data["warning"] for e in s.scalars(select(Event).where(Event.job_id == job_id,
                                                                                Event.type == "job.warning"))]
        assert s.get(Job, job_id).status == "succeeded"
    assert "does not apply StageTask.regeneration" in warning


def test_a_repair_the_gate_asks_for_reaches_the_regenerated_background_once(db: Any) -> None:
    """The critic asks to repair region 3 in place; the regenerated background's task carries it; the repaired
    attempt still fails, so the next regeneration is a new seed (no repair asked for a repair)."""
    scores = {0: 0.5, 1: 0.75, 2: 1.0}

    def gate(t: StageTask) -> dict[str, Any]:
        out = critic(t, scores[t.regeneration] if t.item.endswith("v0") else 1.0)
        if not out["passed"] and t.regeneration == 0:
            out["repair"] = {"gate": "gate.critic", "artifact_key": out["artifact_key"], "regeneration": 0,
                             "regions": [{"index": 3, "role": "entity", "bbox": [0.1, 0.6, 0.4, 0.9],
                                          "prompt": "a lemon"}]}
        return out

    d = Driver(db, settings(vlm_model="v", gate_max_attempts=3), gate)
    job_id = campaign(db)
    d.run(job_id)
    first, repaired, reseeded = d.runs("gpu.background", "1080x1080-v0")
    assert first.repair is None and reseeded.repair is None and reseeded.regeneration == 2
    assert repaired.regeneration == 1 and repaired.repair is not None
    assert repaired.repair.artifact_key.endswith("gpu.background/1080x1080-v0.png")
    assert [r.index for r in repaired.repair.regions] == [3] and repaired.repair.regions[0].prompt == "a lemon"
    assert all(t.repair is None for t in d.runs("gpu.background", "1080x1080-v1"))
    assert all(t.repair is None for t in d.runs("gate.critic"))
    gate_row = rows(db, job_id, "gate.critic")[0]
    assert [a["repair"] is not None for a in gate_row.output["attempts"]] == [True, False, False]
    with session_scope(db) as s:
        regenerating = [e.data for e in s.scalars(select(Event).where(Event.job_id == job_id,
                                                                      Event.type == "stage.regenerating"))]
    assert [e["repair"] for e in regenerating] == [[3], None]

"""Plans without a job: every planning stage in order, and the reply over the broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from atelier.demo import CAMPAIGN, STORY
from atelier_contracts.plans import LayoutPlan
from atelier_contracts.specs import CampaignSpec
from atelier_contracts.tasks import PREVIEW_REPLY_PREFIX as REPLY_PREFIX
from atelier_contracts.tasks import T_PREVIEW
from atelier_planner import paid
from atelier_planner import preview as preview_module
from atelier_planner.backends.rules import RulesBackend
from atelier_planner.preview import answer_preview, preview_id, preview_plans
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings


def test_campaign_preview_matches_what_a_seeded_job_plans() -> None:
    out = preview_plans(RulesBackend(), kind="campaign", spec=CAMPAIGN)
    assert out["kind"] == "campaign" and out["backend"] == "rules"
    assert out["preview_id"] == preview_id("campaign", CAMPAIGN) and out["preview_id"].startswith("preview_")
    assert list(out["stages"]) == ["plan.ad_prompts", "plan.ad_layout"]
    job = paid.ad_layout(CampaignSpec.model_validate(CAMPAIGN), job_id="job-123")
    preview = out["stages"]["plan.ad_layout"]["plan"]
    for pv, jv in zip(preview["variants"], job.model_dump(mode="json")["variants"], strict=True):
        assert [b["bbox"] for b in pv["layout"]["boxes"]] == [b["bbox"] for b in jv["layout"]["boxes"]]
        assert [b["caption"] for b in pv["layout"]["boxes"]] == [b["caption"] for b in jv["layout"]["boxes"]]
    assert set(out["stages"]["plan.ad_layout"]["metrics"]) == set(CAMPAIGN["sizes"])


def test_story_preview_runs_every_planning_stage_without_sheets() -> None:
    out = preview_plans(RulesBackend(), kind="story", spec=STORY)["stages"]
    assert list(out) == ["plan.culture", "plan.story", "plan.characters", "plan.scenes", "plan.scene_layout"]
    layouts = [LayoutPlan.model_validate(lp) for lp in out["plan.scene_layout"]["layouts"]]
    chars = [b for lp in layouts for b in lp.boxes if b.role == "character"]
    assert len(layouts) == STORY["pages"] and chars and all(b.ref_artifact is None for b in chars)
    assert len(out["plan.scene_layout"]["metrics"]) == STORY["pages"]


def test_bad_specs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="taglines"):
        preview_plans(RulesBackend(), kind="campaign", spec={**CAMPAIGN, "taglines": []})
    with pytest.raises(ValueError, match="kind"):
        preview_plans(RulesBackend(), kind="poster", spec={})


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = make_celery(Settings(home=tmp_path))
    yield app
    app.close()


def _reply(app: Any, name: str, timeout: float = 2.0) -> Any:
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(name, no_ack=True)
        try:
            return q.get(block=True, timeout=timeout).payload
        finally:
            q.queue.delete()
            q.close()


def test_the_reply_travels_on_its_own_queue(app: Any) -> None:
    name = REPLY_PREFIX + uuid.uuid4().hex
    body = answer_preview(app, RulesBackend(), {"kind": "story", "spec": STORY, "reply_to": name,
                                               "deadline": time.time() + 30})
    assert body is not None and body["ok"] is True
    got = _reply(app, name)
    assert got["ok"] is True and got["stages"]["plan.scenes"]["plan"]["language"] == "en"


def test_errors_are_replied_and_late_requests_dropped(app: Any) -> None:
    name = REPLY_PREFIX + uuid.uuid4().hex
    answer_preview(app, RulesBackend(), {"kind": "campaign", "spec": {"brand": {}}, "reply_to": name})
    got = _reply(app, name)
    assert got["ok"] is False and got["error"]["type"] == "InvalidSpec" and got["error"]["retryable"] is False
    assert answer_preview(app, RulesBackend(), {"kind": "story", "spec": STORY, "reply_to": name,
                                                "deadline": time.time() - 1}) is None
    with pytest.raises(ValueError, match="reply_to"):
        answer_preview(app, RulesBackend(), {"kind": "story", "spec": STORY, "reply_to": "celery"})


def test_preview_task_is_registered() -> None:
    assert preview_module.preview.name == T_PREVIEW == "atelier.planner.preview"

"""POST /v1/plans:preview — the plans a spec would get, answered by a planner worker, without a job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, story_spec
from atelier_api import create_app
from atelier_contracts.catalogue import queue_modules
from atelier_contracts.plans import AdPlan, LayoutPlan, StoryPlan
from atelier_contracts.tasks import Q_PLANNING, T_START_JOB
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import resources
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

PREVIEW = "/v1/plans:preview"


@pytest.fixture(scope="module")
def planner_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Celery worker consuming only the planning queue (same in-memory broker as the API's producer);
    one per module, since a worker takes seconds to stop."""
    pytest.importorskip("atelier_planner.preview")
    app = make_celery(Settings(home=tmp_path_factory.mktemp("planner")), include=queue_modules([Q_PLANNING]))
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(Q_PLANNING)  # the memory broker is process-wide: start clean
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING",
                      queues=[Q_PLANNING], shutdown_timeout=10.0):
        yield app
    app.close()


def test_campaign_preview_returns_plans_without_a_job(client: TestClient, tenant: TenantCtx, celery: Any,
                                                     planner_worker: Any) -> None:
    spec = campaign_spec(seed=7)
    r = client.post(PREVIEW, json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "campaign" and body["backend"] == "rules" and body["preview_id"].startswith("preview_")
    assert list(body["stages"]) == ["plan.ad_prompts", "plan.ad_layout"]
    layout = body["stages"]["plan.ad_layout"]
    plan = AdPlan.model_validate(layout["plan"])
    assert [v.target.name for v in plan.variants] == spec["sizes"] and plan.seed == 7
    assert layout["planner"]["backend"] == "rules"
    for size in spec["sizes"]:
        assert layout["metrics"][size]["text_product_overlap"] == 0
    assert [s.name for s in celery.sent] == ["atelier.planner.preview"]  # no job was started
    assert T_START_JOB not in [s.name for s in celery.sent]
    assert client.get("/v1/jobs", headers=tenant.headers).json()["items"] == []


def test_story_preview_lays_out_every_scene(client: TestClient, tenant: TenantCtx, planner_worker: Any) -> None:
    r = client.post(PREVIEW, json={"kind": "story", "spec": story_spec(pages=2)}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    stages = r.json()["stages"]
    assert list(stages) == ["plan.culture", "plan.story", "plan.characters", "plan.scenes", "plan.scene_layout"]
    assert len(StoryPlan.model_validate(stages["plan.scenes"]["plan"]).scenes) == 2
    layouts = [LayoutPlan.model_validate(lp) for lp in stages["plan.scene_layout"]["layouts"]]
    assert len(layouts) == 2 and all(b.ref_artifact is None for lp in layouts for b in lp.boxes)


def test_needs_a_tenant_key(client: TestClient) -> None:
    r = client.post(PREVIEW, json={"kind": "story", "spec": story_spec()})
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("body,field", [
    ({"kind": "campaign", "spec": campaign_spec(taglines=[])}, "spec.taglines"),
    ({"kind": "campaign", "spec": campaign_spec(sizes=["10x10"])}, "spec.sizes"),
    ({"kind": "story", "spec": story_spec(pages=99)}, "spec.pages"),
    ({"kind": "poster", "spec": {}}, "kind"),
])
def test_bad_input_is_problem_json_and_reaches_no_planner(client: TestClient, tenant: TenantCtx, celery: Any,
                                                          body: dict[str, Any], field: str) -> None:
    r = client.post(PREVIEW, json=body, headers=tenant.headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()
    assert celery.sent == []


def test_product_image_must_be_the_callers_upload(client: TestClient, tenant: TenantCtx, celery: Any) -> None:
    spec = campaign_spec(product={"name": "Skates", "description": "Fast.", "image": "art_not_mine"})
    r = client.post(PREVIEW, json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "spec.product.image"
    assert celery.sent == []


def test_a_planner_that_does_not_answer_in_time_is_a_504(settings: Settings, engine: Any, store: Any, celery: Any,
                                                         runtime: Any, tenant: TenantCtx) -> None:
    quick = settings.model_copy(update={"plan_preview_timeout_s": 0.001})
    with TestClient(create_app(quick, engine=engine, store=store, celery=celery, runtime=runtime)) as c:
        r = c.post(PREVIEW, json={"kind": "story", "spec": story_spec()}, headers=tenant.headers)
    assert r.status_code == 504 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["title"] == "Planner timeout" and "'planning' queue" in r.json()["detail"]
    sent = [s for s in celery.sent if s.name == "atelier.planner.preview"]
    assert len(sent) == 1 and sent[0].args[0]["deadline"] > 0  # a worker that gets it late drops it


def test_a_planner_failure_is_a_502(client: TestClient, tenant: TenantCtx, planner_worker: Any) -> None:
    from atelier_planner.worker import BACKEND_KEY

    class Broken:
        name = "rules"

        def culture(self, *_: Any, **__: Any) -> Any:
            raise RuntimeError("the lexicon file is unreadable")

    extras = resources(planner_worker).extras
    kept = extras.get(BACKEND_KEY)
    extras[BACKEND_KEY] = Broken()
    try:
        r = client.post(PREVIEW, json={"kind": "story", "spec": story_spec()}, headers=tenant.headers)
    finally:
        extras[BACKEND_KEY] = kept
    assert r.status_code == 502 and "lexicon file is unreadable" in r.json()["detail"]


def test_openapi_documents_the_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths[PREVIEW]

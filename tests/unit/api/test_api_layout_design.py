"""POST /v1/layouts:design (the CreatiLayout designer, answered by a planner worker) and a campaign's own
``spec.layout``: held properties over many prompts, fixed boxes kept, bad input named, and a campaign planned in the
boxes it was given."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, sdk_over, story_spec
from atelier_contracts.catalogue import queue_modules
from atelier_contracts.plans import LayoutPlan
from atelier_contracts.tasks import Q_PLANNING
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

DESIGN = "/v1/layouts:design"

PROMPTS = [
    "a red kite on the left and a dog on the right, watercolour",
    "a teapot, two cups and a plate of biscuits on a wooden table",
    "a girl with a lantern at the top and a river at the bottom",
    "three boats",
    "un chat sur un canapé et une lampe à gauche",
    "a lighthouse",
]


@pytest.fixture(scope="module")
def planner_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("atelier_planner.preview")
    app = make_celery(Settings(home=tmp_path_factory.mktemp("planner")), include=queue_modules([Q_PLANNING]))
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(Q_PLANNING)
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING",
                      queues=[Q_PLANNING], shutdown_timeout=10.0):
        yield app
    app.close()


def design(client: TestClient, tenant: TenantCtx, **body: Any) -> dict[str, Any]:
    r = client.post(DESIGN, json=body, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("size", [(1024, 1024), (1600, 900), (320, 480)])
def test_designed_boxes_are_inside_the_canvas_and_captioned(client: TestClient, tenant: TenantCtx,
                                                           planner_worker: Any, size: tuple[int, int]) -> None:
    for prompt in PROMPTS:
        body = design(client, tenant, prompt=prompt, width=size[0], height=size[1])
        plan = LayoutPlan.model_validate(body["layout"])  # the contract's own checks: 0 <= x1 < x2 <= 1, <= 10 boxes
        assert (plan.width, plan.height) == size and plan.global_caption and body["backend"] == "rules"
        assert plan.boxes and all(b.caption.strip() for b in plan.boxes), (prompt, body)
        assert all(0.0 <= v <= 1.0 for b in plan.boxes for v in b.bbox)
        assert body["planner"]["backend"] == "rules" and isinstance(body["notes"], list)


def test_fixed_boxes_are_kept_and_points_place_entities(client: TestClient, tenant: TenantCtx,
                                                        planner_worker: Any) -> None:
    fixed = {"bbox": [0.55, 0.15, 0.95, 0.85], "caption": "a red kite", "role": "entity"}
    body = design(client, tenant, prompt="a red kite and a dog on a beach", boxes=[fixed])
    boxes = body["layout"]["boxes"]
    kept = [b for b in boxes if b["caption"] == "a red kite"]
    assert len(kept) == 1 and kept[0]["bbox"] == fixed["bbox"]  # kept as given, and not designed a second time
    dog = next(b for b in boxes if "dog" in b["caption"])
    assert not (dog["bbox"][0] < 0.95 and dog["bbox"][2] > 0.55 and dog["bbox"][1] < 0.85 and dog["bbox"][3] > 0.15), \
        "the designer places the rest around the fixed box"
    placed = design(client, tenant, prompt="a cat and a dog", points=[{"x": 0.8, "y": 0.3, "caption": "cat"}])
    cat = next(b for b in placed["layout"]["boxes"] if "cat" in b["caption"])
    assert abs((cat["bbox"][0] + cat["bbox"][2]) / 2 - 0.8) < 0.1 and abs((cat["bbox"][1] + cat["bbox"][3]) / 2 - 0.3) < 0.1


def test_a_fixed_box_that_breaks_a_rule_is_repaired_and_the_note_says_so(client: TestClient, tenant: TenantCtx,
                                                                          planner_worker: Any) -> None:
    body = design(client, tenant, prompt="a tiny bird", width=1000, height=1000,
                  boxes=[{"bbox": [0.5, 0.5, 0.505, 0.505], "caption": "a tiny bird"}])
    (bird,) = [b for b in body["layout"]["boxes"] if b["caption"] == "a tiny bird"]
    assert (bird["bbox"][2] - bird["bbox"][0]) * 1000 >= 16 and any("minimum size" in n for n in body["notes"])


@pytest.mark.parametrize("body,field", [
    ({}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "a cat", "width": 10}, "width"),
    ({"prompt": "a cat", "height": 99999}, "height"),
    ({"prompt": "a cat", "points": [{"x": 1.5, "y": 0.2}]}, "points.0.x"),
    ({"prompt": "a cat", "boxes": [{"bbox": [0.6, 0.1, 0.2, 0.5]}]}, "boxes.0.bbox"),
    ({"prompt": "a cat", "boxes": [{"bbox": [0.1, 0.1, 0.2, 0.5], "role": "background"}]}, "boxes.0.role"),
    ({"prompt": "a cat", "boxes": [{"bbox": [0.1, 0.1, 0.2, 0.2]}] * 11}, "boxes"),
    ({"prompt": "a cat", "colour": "red"}, "colour"),
])
def test_bad_input_is_a_422_naming_the_field_and_reaches_no_planner(client: TestClient, tenant: TenantCtx,
                                                                    celery: Any, body: dict[str, Any],
                                                                    field: str) -> None:
    r = client.post(DESIGN, json=body, headers=tenant.headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert field in {e["field"] for e in r.json()["errors"]}, r.json()
    assert celery.sent == []


def test_needs_a_key_and_is_documented(client: TestClient) -> None:
    assert client.post(DESIGN, json={"prompt": "a cat"}).status_code == 401
    op = client.get("/openapi.json").json()["paths"][DESIGN]["post"]
    assert op["operationId"] == "design_layout" and {"401", "422", "504"} <= set(op["responses"])


def test_the_sdk_designs_and_its_boxes_make_a_spec_layout(client: TestClient, tenant: TenantCtx,
                                                          planner_worker: Any) -> None:
    with sdk_over(client, tenant.key) as atelier:
        designed = atelier.design_layout("a teapot on the right and a lemon on the left", width=1200, height=628,
                                         boxes=[{"bbox": [0.55, 0.2, 0.9, 0.9], "role": "product", "caption": "teapot"}])
        assert designed.layout.width == 1200 and designed.backend == "rules"
        layout = {"boxes": [{"bbox": list(b.bbox), "role": b.role, "caption": b.caption} for b in designed.layout.boxes]}
        preview = atelier.preview_plans(campaign_spec(layout=layout, sizes=["1200x628"]), kind="campaign")
    variant = preview.stages["plan.ad_layout"]["plan"]["variants"][0]
    product = next(b for b in variant["layout"]["boxes"] if b["role"] == "product")
    assert product["bbox"] == [0.55, 0.2, 0.9, 0.9]


# ---------------------------------------------------------------- a campaign's own layout

LAYOUT = {"boxes": [
    {"bbox": [0.5, 0.2, 0.95, 0.9], "role": "product"},
    {"bbox": [0.05, 0.1, 0.45, 0.3], "role": "tagline"},
    {"bbox": [0.05, 0.35, 0.45, 0.45], "role": "tagline"},
    {"bbox": [0.1, 0.75, 0.3, 0.95], "role": "entity", "caption": "a lemon"},
]}


def test_a_campaign_with_spec_layout_is_planned_in_those_boxes(client: TestClient, tenant: TenantCtx,
                                                               planner_worker: Any) -> None:
    spec = campaign_spec(layout=LAYOUT, sizes=["1080x1080", "1200x628"], seed=3)
    r = client.post("/v1/plans:preview", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    layout = r.json()["stages"]["plan.ad_layout"]
    for variant in layout["plan"]["variants"]:
        size = variant["target"]["name"]
        boxes = {b["role"]: b for b in variant["layout"]["boxes"] if b["role"] != "tagline"}
        taglines = [b for b in variant["layout"]["boxes"] if b["role"] == "tagline"]
        assert boxes["product"]["bbox"] == LAYOUT["boxes"][0]["bbox"], size
        assert [t["bbox"] for t in taglines] == [LAYOUT["boxes"][1]["bbox"], LAYOUT["boxes"][2]["bbox"]], size
        assert [t["caption"] for t in taglines] == ["headline: Go faster", "sub: Arrive first"]
        assert boxes["entity"]["caption"] == "a lemon" and boxes["background"]["bbox"] == [0, 0, 1, 1]
        assert layout["layouts"][size]["arrangement"] == "spec.layout" and variant["mirror_odd"] is False
    # the dashboard's plan view draws the layout as submitted, and names it on every size it shaped
    from atelier_api.dashboard.plans import SPEC_LAYOUT_SIDE, plans_from_outputs

    plans = plans_from_outputs("campaign", r.json()["stages"], spec=spec)
    own = plans.spec_layout
    assert own is not None and own.title == "spec.layout" and [b.role for b in own.boxes] == [
        "product", "tagline", "tagline", "entity"]
    assert own.boxes[0].x == 0.5 * SPEC_LAYOUT_SIDE and abs(own.boxes[0].w - 0.45 * SPEC_LAYOUT_SIDE) < 1e-9
    assert own.boxes[3].label == "entity: a lemon"
    assert len(plans.layouts) == 2 and all("from spec.layout" in c.notes for c in plans.layouts)
    assert plans_from_outputs("campaign", r.json()["stages"]).spec_layout is None


@pytest.mark.parametrize("layout,message", [
    ({"boxes": [{"bbox": [0.1, 0.1, 0.5, 0.5], "role": "tagline"}]}, "exactly one product box"),
    ({"boxes": [{"bbox": [0.1, 0.1, 0.5, 0.5], "role": "product"}, {"bbox": [0.6, 0.1, 0.9, 0.2], "role": "cta"}]},
     "needs spec.cta"),
    ({"boxes": [{"bbox": [0.1, 0.1, 0.5, 0.5], "role": "product"}, {"bbox": [0.6, 0.1, 0.9, 0.2], "role": "logo"}]},
     "needs spec.brand.logo"),
    ({"boxes": [{"bbox": [0.1, 0.1, 0.5, 0.5], "role": "product"}, {"bbox": [0.6, 0.1, 0.9, 0.2], "role": "entity"}]},
     "needs a caption"),
    ({"boxes": [{"bbox": [0.1, 0.1, 0.5, 0.5], "role": "product"}] + [{"bbox": [0.6, 0.1, 0.9, 0.2],
                                                                         "role": "tagline"}] * 3}, "3 tagline boxes"),
    ({"boxes": [{"bbox": [0.5, 0.1, 0.1, 0.5], "role": "product"}]}, "0<=x1<x2<=1"),
])
def test_a_spec_layout_that_does_not_fit_the_spec_is_a_422(client: TestClient, tenant: TenantCtx, celery: Any,
                                                          layout: dict[str, Any], message: str) -> None:
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(layout=layout)},
                    headers=tenant.headers)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["field"].startswith("spec.layout") and message in e["message"] for e in errors), errors
    assert client.get("/v1/jobs", headers=tenant.headers).json()["items"] == []


def test_a_story_page_layout_for_a_page_the_story_does_not_have_is_a_422(client: TestClient, tenant: TenantCtx,
                                                                        celery: Any) -> None:
    layouts = [{"page": 4, "boxes": [{"bbox": [0.1, 0.3, 0.45, 1.0]}]}]
    r = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(layouts=layouts)}, headers=tenant.headers)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["field"].startswith("spec.layouts") and "the story has 3 page(s)" in e["message"] for e in errors)
    assert client.get("/v1/jobs", headers=tenant.headers).json()["items"] == []
    ok = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(layouts=[{**layouts[0], "page": 3}])},
                     headers=tenant.headers)
    assert ok.status_code == 202, ok.text

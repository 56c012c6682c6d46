"""Honest languages at the API: a story language the rules planner cannot write is a 422 on `spec.language`
(jobs, previews), and GET /v1/capabilities says what this deployment plans."""

from __future__ import annotations

from typing import Any

from api_testkit import TenantCtx
from atelier_api import create_app
from atelier_contracts import languages, placements
from atelier_control.models import Job
from atelier_runtime.settings import Settings
from fastapi.testclient import TestClient
from sqlalchemy import func, select

STORY = {"premise": "Two brothers build a kite for the harvest festival.", "culture": "Punjab", "pages": 3}


def test_a_story_language_the_rules_planner_cannot_write_is_refused(client: TestClient, tenant: TenantCtx,
                                                                    factory: Any) -> None:
    r = client.post("/v1/jobs", json={"kind": "story", "spec": {**STORY, "language": "de"}}, headers=tenant.headers)
    assert r.status_code == 422, r.text
    (err,) = r.json()["errors"]
    assert err["field"] == "spec.language" and "cannot write 'de'" in err["message"]
    assert "en (English), hi (Hindi), es (Spanish)" in err["message"] and "ATELIER_PLANNER_BACKEND" in err["message"]
    preview = client.post("/v1/plans:preview", json={"kind": "story", "spec": {**STORY, "language": "ja"}},
                          headers=tenant.headers)
    assert preview.status_code == 422 and preview.json()["errors"][0]["field"] == "spec.language"
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0  # nothing written
    for tag in ("hi-IN", "es-MX", "ar", "ta-IN", "pt-BR", "sw", "fr-CA"):
        ok = client.post("/v1/jobs", json={"kind": "story", "spec": {**STORY, "language": tag}}, headers=tenant.headers)
        assert ok.status_code == 202, (tag, ok.text)


def test_with_an_llm_planner_any_language_is_accepted(tmp_path: Any, engine: Any, store: Any, celery: Any,
                                                      runtime: Any, tenant: TenantCtx) -> None:
    settings = Settings(home=tmp_path, planner_backend="openai", llm_base_url="http://llm.invalid/v1", llm_model="m")
    with TestClient(create_app(settings, engine=engine, store=store, celery=celery, runtime=runtime)) as c:
        r = c.post("/v1/jobs", json={"kind": "story", "spec": {**STORY, "language": "de"}}, headers=tenant.headers)
        assert r.status_code == 202, r.text
        caps = c.get("/v1/capabilities", headers=tenant.headers).json()
    assert caps["planner_backend"] == "openai" and caps["story_languages"]["any_with_llm"] is True


def test_capabilities_list_languages_cultures_and_placements(client: TestClient, tenant: TenantCtx) -> None:
    assert client.get("/v1/capabilities").status_code == 401
    caps = client.get("/v1/capabilities", headers=tenant.headers).json()
    assert caps["planner_backend"] == "rules"
    assert caps["story_languages"]["written"] == list(languages.RULES_LANGUAGES)
    assert caps["story_languages"]["any_with_llm"] is False and "ar" in caps["story_languages"]["rtl"]
    assert "Japan" in caps["curated_cultures"]
    sizes = {p["name"]: p["size"] for p in caps["placements"]}
    assert sizes == {name: p.size for name, p in placements.PLACEMENTS.items()}
    assert caps["placement_aliases"]["leaderboard"] == "iab-leaderboard"
    assert caps["size_limits"] == {"min_side": 32, "max_side": 4096, "min_area": 12000, "max_aspect": 12.0}

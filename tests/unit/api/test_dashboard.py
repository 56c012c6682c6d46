"""The dashboard over HTTP (TestClient): sign-in, sessions, CSRF, tenancy, the job form, pages, retry."""

from __future__ import annotations

import re
from typing import Any

import pytest
from api_testkit import (
    CSRF_INPUT,
    CSRF_META,
    TenantCtx,
    add_artifact,
    add_stages,
    campaign_spec,
    emit_events,
    png_bytes,
    set_job,
    sign_in,
)
from atelier_api.dashboard.session import COOKIE, Signer, resolve_secret
from atelier_contracts.tasks import T_START_JOB
from atelier_control.db import session_scope
from atelier_control.events import emit
from atelier_control.models import ApiKey, Artifact, Job, Stage, utcnow
from atelier_runtime.settings import Settings
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker


def put_cookie(client: TestClient, value: str) -> None:
    client.cookies.clear()
    client.cookies.set(COOKIE, value)


def submit(client: TestClient, tenant: TenantCtx, **spec: Any) -> str:
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(**spec)}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def campaign_form(csrf: str, **overrides: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "csrf_token": csrf, "kind": "campaign", "brand_name": "Acme", "brand_palette": "#112233, #FFFFFF",
        "product_name": "Rocket Skates", "product_description": "Skates with rockets on them.",
        "taglines": "Go faster\nArrive first", "cta": "Buy", "sizes": ["1080x1080"], "sizes_custom": "640x360",
        "variants": "2", "locale": "en-US", "idempotency_key": "form-1",
    }
    form.update(overrides)
    return form


# ---------------------------------------------------------------- sign-in and sessions


def test_pages_need_a_session(client: TestClient) -> None:
    r = client.get("/dashboard/jobs?status=failed", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard/login?next=/dashboard/jobs%3Fstatus%3Dfailed"
    assert client.get("/dashboard/jobs", headers={"X-Requested-With": "fetch"}).status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard/jobs"


def test_wrong_key_is_refused_and_a_good_one_gives_a_signed_http_only_cookie(
        client: TestClient, tenant: TenantCtx) -> None:
    page = client.get("/dashboard/login")
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # plain http here
    token = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]
    for bad in (tenant.key[:-2] + "zz", "atl_nope_nope", "not-a-key"):
        r = client.post("/dashboard/login", data={"api_key": bad, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 401 and "not accepted" in r.text
        token = CSRF_INPUT.search(r.text).group(1)  # type: ignore[union-attr]
        assert client.get("/dashboard/jobs", follow_redirects=False).status_code == 303
    r = client.post("/dashboard/login", data={"api_key": tenant.key, "csrf_token": token,
                                              "next": "/dashboard/system"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/system"
    value = client.cookies[COOKIE]
    assert tenant.key not in value and tenant.key.split("_", 2)[2] not in value
    assert client.get("/dashboard/jobs").status_code == 200


def test_login_needs_the_forms_csrf_token(client: TestClient, tenant: TenantCtx) -> None:
    client.get("/dashboard/login")
    r = client.post("/dashboard/login", data={"api_key": tenant.key, "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 401 and "expired" in r.text
    assert client.get("/dashboard/jobs", follow_redirects=False).status_code == 303


def test_next_never_leaves_the_dashboard(client: TestClient, tenant: TenantCtx) -> None:
    token = CSRF_INPUT.search(client.get("/dashboard/login").text).group(1)  # type: ignore[union-attr]
    r = client.post("/dashboard/login", data={"api_key": tenant.key, "csrf_token": token,
                                              "next": "https://evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/dashboard/jobs"


def test_tampered_expired_or_revoked_sessions_are_signed_out(client: TestClient, tenant: TenantCtx,
                                                             settings: Settings,
                                                             factory: sessionmaker[Session]) -> None:
    sign_in(client, tenant.key)
    good = client.cookies[COOKIE]
    body, _, mac = good.partition(".")
    put_cookie(client, body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac)
    assert client.get("/dashboard/jobs", follow_redirects=False).status_code == 303
    # a cookie signed with the app's secret but issued long ago
    signer = Signer(resolve_secret(settings))
    old = signer.loads(good)
    assert old is not None
    old["iat"] -= settings.session_max_age_s + 10
    put_cookie(client, signer.dumps(old))
    assert client.get("/dashboard/jobs", follow_redirects=False).status_code == 303
    put_cookie(client, good)
    assert client.get("/dashboard/jobs").status_code == 200
    with session_scope(factory) as s:
        for key in s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)):
            key.revoked_at = utcnow()
    assert client.get("/dashboard/jobs", follow_redirects=False).status_code == 303


def test_sign_out_needs_csrf_and_ends_the_session(client: TestClient, tenant: TenantCtx) -> None:
    csrf = sign_in(client, tenant.key)
    assert client.post("/dashboard/logout", data={"csrf_token": "x"}).status_code == 403
    assert client.get("/dashboard/jobs").status_code == 200
    r = client.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.headers["set-cookie"]
    assert client.get("/dashboard/jobs", follow_redirects=False).status_code == 303


def test_session_secret_is_generated_once_and_kept(settings: Settings) -> None:
    first = resolve_secret(settings)
    path = settings.home / "session_secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert resolve_secret(settings) == first and len(first) >= 32
    configured = Settings(home=settings.home, session_secret="s" * 40)
    assert resolve_secret(configured) == b"s" * 40


def test_pages_carry_a_strict_content_security_policy(client: TestClient, tenant: TenantCtx) -> None:
    sign_in(client, tenant.key)
    r = client.get("/dashboard/jobs")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "<script src=\"/dashboard/static/dashboard.js" in r.text and "<script>" not in r.text
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert client.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")


# ---------------------------------------------------------------- tenancy


def test_another_tenants_job_and_artifacts_are_404_pages(client: TestClient, tenant: TenantCtx,
                                                         other_tenant: TenantCtx, factory: sessionmaker[Session],
                                                         store: Any) -> None:
    job_id = submit(client, tenant)
    art = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset", name="1080x1080-v0",
                       data=png_bytes((64, 64)), content_type="image/png")
    sign_in(client, other_tenant.key)
    for path in (f"/dashboard/jobs/{job_id}", f"/dashboard/jobs/{job_id}/plans", f"/dashboard/jobs/{job_id}/gallery",
                 f"/dashboard/jobs/{job_id}/events", f"/dashboard/artifacts/{art}",
                 f"/dashboard/artifacts/{art}/content", f"/dashboard/artifacts/{art}/thumb"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "Rocket" not in r.text
    assert job_id not in client.get("/dashboard/jobs").text
    csrf = CSRF_META.search(client.get("/dashboard/jobs").text).group(1)  # type: ignore[union-attr]
    assert client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf_token": csrf}).status_code == 404
    with session_scope(factory) as s:
        assert s.get(Job, job_id).status == "queued"  # type: ignore[union-attr]


def test_the_json_api_still_answers_problem_json(client: TestClient) -> None:
    r = client.get("/v1/jobs/job_x", headers={"Authorization": "Bearer atl_x_y"})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/nothing").headers["content-type"] == "application/problem+json"
    assert client.get("/dashboard/nothing").headers["content-type"].startswith("text/html")


# ---------------------------------------------------------------- the job form


def test_form_submits_a_campaign_with_its_product_image(client: TestClient, tenant: TenantCtx, celery: Any,
                                                        factory: sessionmaker[Session], app: Any) -> None:
    csrf = sign_in(client, tenant.key)
    r = client.post("/dashboard/jobs", data=campaign_form(csrf),
                    files={"product_image": ("bottle.png", png_bytes((40, 80), "RGBA", (1, 2, 3, 200)), "image/png")},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].rsplit("/", 1)[1]
    with session_scope(factory) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.tenant_id == tenant.id and job.idempotency_key == "form-1"
        assert job.spec["sizes"] == ["1080x1080", "640x360"] and job.spec["variants"] == 2
        assert job.spec["taglines"] == ["Go faster", "Arrive first"] and job.spec["brand"]["palette"] == ["#112233", "#FFFFFF"]
        upload = s.get(Artifact, job.spec["product"]["image"])
        assert upload is not None and upload.kind == "upload" and (upload.width, upload.height) == (40, 80)
    assert [(x.name, x.args, x.job_committed) for x in celery.sent] == [(T_START_JOB, [job_id], True)]
    metrics = client.get("/metrics").text
    assert 'atelier_api_jobs_submitted_total{kind="campaign"} 1.0' in metrics
    # a second post of the same form (double click) is the same job, not a second one
    again = client.post("/dashboard/jobs", data=campaign_form(csrf), follow_redirects=False)
    assert again.status_code == 409 and job_id in again.text
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1


def test_form_errors_are_shown_at_their_fields_and_nothing_is_kept(client: TestClient, tenant: TenantCtx,
                                                                  celery: Any, factory: sessionmaker[Session]) -> None:
    csrf = sign_in(client, tenant.key)
    r = client.post("/dashboard/jobs", data=campaign_form(csrf, brand_name="", taglines="", sizes=["12x12"],
                                                          sizes_custom="", variants="99", brand_palette="red"),
                    files={"product_image": ("p.png", png_bytes(), "image/png")})
    assert r.status_code == 422
    fields = dict(re.findall(r'class="field-error" data-field="(\w+)">([^<]*)<', r.text))
    assert set(fields) == {"brand_name", "taglines", "sizes", "variants", "brand_palette"}
    assert "12x12" in fields["sizes"] and "8" in fields["variants"]
    assert 'value="Rocket Skates"' in r.text  # what was typed is kept
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Artifact)) == 0  # the image was not stored either
    assert celery.sent == []


def test_form_rejects_a_file_that_is_not_an_image(client: TestClient, tenant: TenantCtx,
                                                  factory: sessionmaker[Session]) -> None:
    csrf = sign_in(client, tenant.key)
    r = client.post("/dashboard/jobs", data=campaign_form(csrf), files={"product_image": ("x.png", b"hello", "image/png")})
    assert r.status_code == 415
    assert re.search(r'data-field="product_image">[^<]*not a PNG, JPEG or WebP', r.text)
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_form_submits_a_story(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    csrf = sign_in(client, tenant.key)
    r = client.post("/dashboard/jobs", data={"csrf_token": csrf, "kind": "story", "premise": "A kite at sea.",
                                             "culture": "Gujarati", "pages": "3", "language": "en", "seed": "5",
                                             "brand_name": "ignored for stories"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    with session_scope(factory) as s:
        job = s.scalar(select(Job))
        assert job is not None and job.kind == "story"
        assert job.spec["pages"] == 3 and job.spec["seed"] == 5 and "brand" not in job.spec


def test_form_submissions_count_against_the_tenants_rate_limit(client: TestClient, tenant: TenantCtx,
                                                               settings: Settings,
                                                               factory: sessionmaker[Session]) -> None:
    pytest.importorskip("atelier_api.ratelimit", reason="this build has no submission limits")
    settings.rate_limit_jobs_per_minute = 1
    csrf = sign_in(client, tenant.key)
    first = client.post("/dashboard/jobs", data=campaign_form(csrf, idempotency_key="a"), follow_redirects=False)
    assert first.status_code == 303
    second = client.post("/dashboard/jobs", data=campaign_form(csrf, idempotency_key="b"),
                         files={"product_image": ("p.png", png_bytes(), "image/png")})
    assert second.status_code == 429 and 'id="form-errors"' in second.text
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalar(select(func.count()).select_from(Artifact)) == 0  # refused before the image was stored


def test_form_posts_without_csrf_or_from_another_origin_are_refused(client: TestClient, tenant: TenantCtx,
                                                                   factory: sessionmaker[Session]) -> None:
    csrf = sign_in(client, tenant.key)
    assert client.post("/dashboard/jobs", data=campaign_form("")).status_code == 403
    assert client.post("/dashboard/jobs", data=campaign_form("wrong")).status_code == 403
    r = client.post("/dashboard/jobs", data=campaign_form(csrf), headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_plan_preview_validates_and_reports_a_missing_planner(client: TestClient, tenant: TenantCtx,
                                                              settings: Settings) -> None:
    csrf = sign_in(client, tenant.key)
    r = client.post("/dashboard/plans/preview", data=campaign_form(csrf, taglines=""),
                    headers={"X-Requested-With": "fetch"})
    assert r.status_code == 422 and "taglines" in r.text and "<html" not in r.text
    settings.plan_preview_timeout_s = 0.3  # nothing consumes the planning queue in these tests
    r = client.post("/dashboard/plans/preview", data=campaign_form(csrf), headers={"X-Requested-With": "fetch"})
    assert r.status_code == 504 and "no planner answered" in r.text
    page = client.post("/dashboard/plans/preview", data=campaign_form(csrf, taglines=""))  # no script: a whole page
    assert page.status_code == 422 and "<html" in page.text


# ---------------------------------------------------------------- pages


def test_job_list_filters_search_and_live_rows(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx,
                                               factory: sessionmaker[Session]) -> None:
    a = submit(client, tenant, product={"name": "Rocket Skates", "description": "d"})
    b = submit(client, tenant, product={"name": "Jet Café", "description": "d"})
    c = submit(client, other_tenant, product={"name": "Rocket Boots", "description": "d"})
    set_job(factory, b, status="failed")
    sign_in(client, tenant.key)
    page = client.get("/dashboard/jobs").text
    assert a in page and b in page and c not in page
    assert re.search(rf'data-job="{b}" data-status="failed"', page)
    rows = client.get("/dashboard/jobs?q=rocket&status=&kind=&fragment=rows").text
    assert a in rows and b not in rows and c not in rows and "<html" not in rows
    assert b in client.get("/dashboard/jobs?q=caf%C3%A9").text  # non-ASCII text matches too
    assert a not in client.get("/dashboard/jobs?status=failed").text
    assert a[:12] in client.get(f"/dashboard/jobs?q={a[:12]}").text
    assert "No job matches" in client.get("/dashboard/jobs?kind=story").text


def test_job_page_shows_timeline_progress_and_the_failing_stage(client: TestClient, tenant: TenantCtx,
                                                                factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant)
    add_stages(factory, job_id, [("plan.ad_prompts", "", 0, "succeeded"), ("plan.ad_layout", "", 1, "succeeded"),
                                 ("gpu.background", "1080x1080-v0", 2, "running"),
                                 ("gpu.background", "1080x1080-v1", 2, "failed")])
    with session_scope(factory) as s:
        failed = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.status == "failed"))
        assert failed is not None
        failed.error = "RuntimeError: out of memory"
        emit(s, tenant_id=tenant.id, job_id=job_id, type="stage.progress",
             data={"stage": "gpu.background", "item": "1080x1080-v0", "step": 3, "total": 8})
    set_job(factory, job_id, status="running")
    sign_in(client, tenant.key)
    page = client.get(f"/dashboard/jobs/{job_id}").text
    assert 'id="job-status">running<' in page
    assert re.search(r'data-progress-key="gpu.background\|1080x1080-v0">\s*<progress max="8" value="3">', page)
    assert "step 3/8" in page
    assert page.count('class="g-bar run s-succeeded"') == 2
    assert 'id="cancel-job"' in page and 'id="retry-job"' not in page
    assert f'data-events="/dashboard/jobs/{job_id}/events?after=' in page
    set_job(factory, job_id, status="failed", error="stage gpu.background[1080x1080-v1] failed: RuntimeError: out of memory")
    live = client.get(f"/dashboard/jobs/{job_id}?fragment=live").text
    assert "<html" not in live and 'data-terminal="true"' in live
    assert "RuntimeError: out of memory" in live and 'id="retry-job"' in live and 'id="cancel-job"' not in live


def test_a_partial_job_shows_its_failed_items_its_warnings_and_a_retry(client: TestClient, tenant: TenantCtx,
                                                                        factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant)
    add_stages(factory, job_id, [("plan.ad_prompts", "", 0, "succeeded"), ("render.ad", "1080x1080-v0", 4, "succeeded"),
                                 ("render.ad", "728x90-v0", 4, "failed"), ("gpu.watermark", "728x90-v0", 5, "canceled"),
                                 ("deliver", "", 6, "succeeded")])
    with session_scope(factory) as s:
        failed = s.scalar(select(Stage).where(Stage.job_id == job_id, Stage.status == "failed"))
        assert failed is not None
        failed.error = "StageError: the compositor failed"
        emit(s, tenant_id=tenant.id, job_id=job_id, type="job.warning",
             data={"stage": "plan.story", "item": "", "warning": "the LLM planner (openai:m) failed; rules planned"})
    set_job(factory, job_id, status="succeeded", finished_at=utcnow())
    view = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    assert view["partial"] is True and view["failures"] == [
        {"stage": "render.ad", "item": "728x90-v0", "error": "StageError: the compositor failed"}]
    sign_in(client, tenant.key)
    live = client.get(f"/dashboard/jobs/{job_id}?fragment=live").text
    assert 'id="job-partial"' in live and "Delivered with 1 failed item" in live
    assert "render.ad[728x90-v0]" in live and "the compositor failed" in live
    assert 'id="job-warnings"' in live and "the LLM planner (openai:m) failed; rules planned" in live
    assert 'id="retry-job"' in live and "Retry failed item<" in live and 'id="open-gallery"' in live


def test_cancel_from_the_job_page(client: TestClient, tenant: TenantCtx, runtime: Any,
                                  factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant)
    csrf = sign_in(client, tenant.key)
    r = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?notice=canceled")
    assert runtime.is_canceled(job_id)
    page = client.get(r.headers["location"]).text
    assert 'id="job-status">canceled<' in page and "Job canceled" in page
    again = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
    assert again.status_code == 303  # already canceled: idempotent


def test_retry_a_failed_job_over_json_and_from_the_dashboard(client: TestClient, tenant: TenantCtx, celery: Any,
                                                             factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant)
    add_stages(factory, job_id, [("plan.ad_prompts", "", 0, "succeeded"), ("plan.ad_layout", "", 1, "failed"),
                                 ("gpu.background", "1080x1080-v0", 2, "canceled")])
    r = client.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"  # still queued
    set_job(factory, job_id, status="failed", error="stage plan.ad_layout failed: boom", finished_at=utcnow())
    celery.sent.clear()
    r = client.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["error"] is None
    assert {s["name"]: s["status"] for s in body["stages"]} == {
        "plan.ad_prompts": "succeeded", "plan.ad_layout": "pending", "gpu.background": "pending"}
    assert [(x.name, x.args, x.job_committed) for x in celery.sent] == [(T_START_JOB, [job_id], True)]
    set_job(factory, job_id, status="failed")
    csrf = sign_in(client, tenant.key)
    r = client.post(f"/dashboard/jobs/{job_id}/retry", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?notice=retrying")
    with session_scope(factory) as s:
        assert s.get(Job, job_id).status == "queued"  # type: ignore[union-attr]


def test_gallery_groups_assets_with_badges_scores_and_thumbnails(client: TestClient, tenant: TenantCtx,
                                                                factory: sessionmaker[Session], store: Any) -> None:
    job_id = submit(client, tenant)
    ids = {}
    for name in ("1080x1920-v0", "1080x1080-v1", "1080x1080-v0"):
        ids[name] = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset", name=name,
                                 data=png_bytes((600, 400)), content_type="image/png")
    render = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="render", name="1080x1080-v0",
                          data=png_bytes((60, 40)), content_type="image/png")
    with session_scope(factory) as s:
        s.get(Artifact, ids["1080x1080-v0"]).meta = {  # type: ignore[union-attr]
            "watermark": {"method": "dwtDctSvd", "readback_ok": True, "bit_accuracy": 1.0},
            "c2pa": {"state": "valid"}}
        s.get(Artifact, render).meta = {"checks": {"ocr_cer": {"value": 0.02, "passed": True},  # type: ignore[union-attr]
                                                   "contrast": {"ratio": 2.1, "passed": False}}}
    sign_in(client, tenant.key)
    page = client.get(f"/dashboard/jobs/{job_id}/gallery").text
    assert re.findall(r"<h2>(\d+x\d+)</h2>", page) == ["1080x1080", "1080x1920"]  # the spec's order
    first = page[page.index(f'data-artifact="{ids["1080x1080-v0"]}"'):]
    first = first[:first.index("</figure>")]
    assert "badge b-ok" in first and "C2PA valid" in first
    assert "gates 1/2 ✗" in first and 'score sc-bad">contrast <b>2.1 ✗' in first and "ocr_cer <b>" not in first
    assert "no watermark" in page  # the assets without a mark say so
    thumb = client.get(f"/dashboard/artifacts/{ids['1080x1080-v0']}/thumb?w=300")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(thumb.content)).size == (320, 213)
    cached = client.get(f"/dashboard/artifacts/{ids['1080x1080-v0']}/thumb?w=300",
                        headers={"If-None-Match": thumb.headers["etag"]})
    assert cached.status_code == 304
    full = client.get(f"/dashboard/artifacts/{ids['1080x1080-v0']}")
    assert f'src="/dashboard/artifacts/{ids["1080x1080-v0"]}/content"' in full.text and "dwtDctSvd" in full.text
    assert re.search(r"<code>ocr_cer</code></td><td class=\"num\">0.02 ✓</td>\s*<td><span class=\"score sc-ok\">pass",
                     full.text)
    content = client.get(f"/dashboard/artifacts/{ids['1080x1080-v0']}/content?download=true")
    assert content.content == png_bytes((600, 400)) and content.headers["content-disposition"].startswith("attachment")


INFO = {"backend": "rules", "model": "rules-v1", "prompt_version": "1"}


def _layout(w: int, h: int, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"plan_id": f"l{w}x{h}", "seed": 1, "width": w, "height": h, "planner": INFO,
            "global_caption": "a sunny kitchen", "boxes": boxes}


def _outputs(factory: sessionmaker[Session], job_id: str, outputs: dict[str, dict[str, Any]]) -> None:
    ids = add_stages(factory, job_id, [(name, "", i, "succeeded") for i, name in enumerate(outputs)])
    with session_scope(factory) as s:
        for stage_id, output in zip(ids, outputs.values(), strict=True):
            s.get(Stage, stage_id).output = output  # type: ignore[union-attr]


def test_plans_page_draws_layouts_and_the_rpg_grid(client: TestClient, tenant: TenantCtx,
                                                   factory: sessionmaker[Session]) -> None:
    from atelier_contracts.plans import AdPlan, RegionalPlan

    job_id = submit(client, tenant)
    regional = RegionalPlan.model_validate({
        "plan_id": "r", "seed": 1, "width": 1080, "height": 1080, "planner": INFO, "base_prompt": "a kitchen",
        "split_ratio": "1,1,1", "regions": [{"row": 0, "col": c, "prompt": p} for c, p in enumerate("abc")]})
    boxes = [{"bbox": [0.1, 0.2, 0.5, 0.9], "role": "product", "caption": "Rocket Skates"},
             {"bbox": [0.55, 0.1, 0.95, 0.3], "role": "tagline", "caption": "headline: Go faster"},
             {"bbox": [0.6, 0.8, 0.9, 0.9], "role": "cta", "caption": "cta: Buy"}]
    plan = AdPlan.model_validate({
        "plan_id": "a", "seed": 1, "width": 1080, "height": 1080, "planner": INFO, "product": {"name": "Rocket"},
        "taglines": [{"text": "Go faster", "level": "headline"}], "prompts": {"foreground": "f", "background": "b"},
        "variants": [{"target": {"w": w, "h": h, "name": f"{w}x{h}"}, "layout": _layout(w, h, boxes)}
                     for w, h in ((1080, 1080), (1080, 1920))]})
    _outputs(factory, job_id, {"plan.ad_prompts": {"prompts": {"foreground": "skates on a table",
                                                               "background": "a sunny kitchen"},
                                                   "regional": regional.model_dump(mode="json")},
                               "plan.ad_layout": {"plan": plan.model_dump(mode="json")}})
    sign_in(client, tenant.key)
    page = client.get(f"/dashboard/jobs/{job_id}/plans").text
    assert page.count('<figure class="canvas layout">') == 2
    assert 'viewBox="0 0 1080 1920"' in page and "skates on a table" in page
    assert page.count('<g class="box role-') == 2 * 3 + 3 and page.count("box role-region") == 3
    # boxes in canvas pixels: the product of the 1080x1920 layout starts at (108, 384)
    assert re.search(r'<rect x="108.0" y="384.0" width="432.0" height="1344.0"/>', page)
    assert ">tagline: headline: Go faster</text>" in page and ">cta: Buy</text>" in page  # the role is not repeated


def test_plans_page_draws_the_campaigns_own_layout(client: TestClient, tenant: TenantCtx) -> None:
    own = {"boxes": [{"bbox": [0.5, 0.2, 0.95, 0.9], "role": "product"},
                     {"bbox": [0.05, 0.1, 0.45, 0.3], "role": "tagline"},
                     {"bbox": [0.1, 0.75, 0.3, 0.95], "role": "entity", "caption": "a lemon"}]}
    job_id = submit(client, tenant, layout=own)
    other = submit(client, tenant)
    sign_in(client, tenant.key)
    page = client.get(f"/dashboard/jobs/{job_id}/plans").text
    assert "The campaign&#39;s own layout (spec.layout)" in page or "The campaign's own layout (spec.layout)" in page
    assert page.count('<figure class="canvas spec-layout">') == 1 and 'viewBox="0 0 1000 1000"' in page
    assert re.search(r'<rect x="500.0" y="200.0" width="450.0" height="700.0"/>', page)
    assert ">entity: a lemon</text>" in page
    assert "spec.layout" not in client.get(f"/dashboard/jobs/{other}/plans").text


def test_story_plans_and_storybook_pages(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session],
                                         store: Any) -> None:
    from atelier_contracts.plans import StoryPlan

    r = client.post("/v1/jobs", json={"kind": "story", "spec": {"premise": "A kite at sea.", "culture": "Gujarati",
                                                                  "pages": 2}}, headers=tenant.headers)
    job_id = r.json()["id"]
    cast = {"character_id": "c0", "pose": "running", "expression": "joyful",
            "box": {"bbox": [0.1, 0.3, 0.4, 0.95], "role": "character", "caption": "Asha"}}
    story = StoryPlan.model_validate({
        "plan_id": "s", "seed": 3, "width": 768, "height": 512, "planner": INFO, "title": "The Kite",
        "story": "...", "culture_notes": ["kites fly at Uttarayan"], "language": "en",
        "characters": [{"id": "c0", "name": "Asha", "description": "a girl", "sheet_prompt": "p", "seed": 1}],
        "scenes": [{"index": i, "narration": f"Page {i + 1} words.", "backdrop": "a rooftop", "cast": [cast],
                    "scene_prompt": "a girl with a kite"} for i in range(2)]})
    _outputs(factory, job_id, {"plan.scenes": {"plan": story.model_dump(mode="json")}})
    for name in ("s1", "s0"):
        add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset", name=name,
                     data=png_bytes((60, 40)), content_type="image/png")
    sign_in(client, tenant.key)
    plans = client.get(f"/dashboard/jobs/{job_id}/plans").text
    assert plans.count('<figure class="canvas scene">') == 2 and "Asha · running, joyful" in plans
    assert "Page 2 words." in plans and "The Kite" in plans and "kites fly at Uttarayan" in plans
    gallery = client.get(f"/dashboard/jobs/{job_id}/gallery").text
    assert "Storybook" in gallery and gallery.index("page 1<") < gallery.index("page 2<")


def test_system_page_in_embedded_mode(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session],
                                      store: Any) -> None:
    job_id = submit(client, tenant)
    ids = add_stages(factory, job_id, [("gpu.background", "1080x1080-v0", 2, "failed")])
    with session_scope(factory) as s:
        row = s.get(Stage, ids[0])
        assert row is not None
        row.gpu_seconds, row.finished_at = 12.5, utcnow()
    add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset", name="1080x1080-v0",
                 data=png_bytes(), content_type="image/png")
    with session_scope(factory) as s:
        emit(s, tenant_id=tenant.id, job_id=job_id, type="stage.failed",
             data={"stage": "gpu.background", "item": "1080x1080-v0", "error": "CUDA out of memory"})
    sign_in(client, tenant.key)
    page = client.get("/dashboard/system").text
    assert "embedded" in page and "embedded (this process)" in page
    assert page.count('<rect class="bar"') == 48
    assert "total 12.5" in page and "total 1<" in page
    assert "CUDA out of memory" in page and "gpu.background[1080x1080-v0]" in page


def test_dashboard_event_stream_is_the_jobs_sse(client: TestClient, tenant: TenantCtx,
                                                factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant)
    emit_events(factory, tenant.id, job_id, ["job.started", "job.succeeded"])
    set_job(factory, job_id, status="succeeded")
    sign_in(client, tenant.key)
    with client.stream("GET", f"/dashboard/jobs/{job_id}/events?after=0") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert [line[7:] for line in text.splitlines() if line.startswith("event: ")] == [
        "job.created", "job.started", "job.succeeded"]


@pytest.mark.parametrize("path", ["/dashboard/jobs/x/plans", "/dashboard/system", "/dashboard/artifacts/a/thumb"])
def test_every_page_needs_a_session(client: TestClient, path: str) -> None:
    assert client.get(path, follow_redirects=False).status_code == 303

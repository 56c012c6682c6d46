"""The dashboard in a real browser (Chromium, headless) against the embedded app with real jobs.

Each test saves a screenshot in its pytest-playwright output folder (``test-results/<test>/``).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import SLOW_MODEL, Server, chromium_missing, wait_for_job
from tests.browser.helpers import png_bytes, shoot, sign_in, wait_until

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")]

LIVE_TIMEOUT_MS = 120_000  # generous: a loaded CI machine is slow, the page just has to get there


def test_a_wrong_key_is_refused(page: Page, server: Server, shots: Path) -> None:
    page.goto(f"{server.url}/dashboard/jobs")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))  # pages need a session
    page.fill("#api_key", server.acme.key[:-4] + "XXXX")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not accepted")
    expect(page).to_have_url(f"{server.url}/dashboard/login")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["atelier_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    page.goto(f"{server.url}/dashboard/jobs")
    expect(page).to_have_url(re.compile(r"/dashboard/login"))  # still signed out
    shoot(page, shots, "wrong-key")


def test_submit_a_campaign_with_an_image_and_watch_it_succeed_live(
        page: Page, server: Server, shots: Path, tmp_path: Path, finished_campaign: dict[str, Any]) -> None:
    image = tmp_path / "bottle.png"
    image.write_bytes(png_bytes())
    sign_in(page, server.url, server.acme.key)
    page.click("text=New job")
    form = page.locator("#job-form")
    form.locator("input[name=brand_name]").fill("Northwind")
    form.locator("input[name=brand_palette]").fill("#0B3D91, #F4F1EA")
    form.locator("input[name=product_name]").fill("Trail Flask")
    form.locator("textarea[name=product_description]").fill("An insulated steel water flask for long hikes.")
    form.locator("input[name=product_image]").set_input_files(str(image))
    form.locator("textarea[name=taglines]").fill("Cold for 24 hours\nBuilt for the long trail")
    form.locator("input[name=cta]").fill("Shop now")
    form.locator("input[value='1080x1080']").uncheck()
    form.locator("input[name=sizes_custom]").fill("320x320, 480x252")
    form.locator("summary:has-text('Advanced')").click()
    form.locator("input[name=model]").fill("sdxl-tiny")
    form.locator("#submit-job").click()

    expect(page).to_have_url(re.compile(r"/dashboard/jobs/job_[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__notReloaded = true")
    status = page.locator("#job-status")
    # the page follows the job over SSE: the status changes in place, from not-finished to succeeded
    expect(status).to_have_text("succeeded", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.__notReloaded === true"), "the job page reloaded instead of updating in place"
    expect(page.locator(".g-row[data-stage='plan.ad_prompts'] .status")).to_have_text("succeeded")
    expect(page.locator(".g-group[data-stage='gpu.background'] .count")).to_have_text("2/2")
    assert page.locator(".g-bar.run.s-succeeded").count() >= 6
    expect(page.locator("#job-progress")).to_have_text("100%")
    shoot(page, shots, "job-timeline", full_page=True)

    with server.api(server.acme) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"
        assert job["spec"]["product"]["name"] == "Trail Flask"
        assert job["spec"]["sizes"] == ["320x320", "480x252"]
        upload = api.get(f"/v1/artifacts/{job['spec']['product']['image']}/content")
        assert upload.status_code == 200 and upload.content[:8] == b"\x89PNG\r\n\x1a\n"

    page.goto(f"{server.url}/dashboard/jobs")
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row.locator(".status")).to_have_text("succeeded")
    expect(row.locator(".job-link")).to_contain_text("Trail Flask")
    page.fill("input[name=q]", "Trail Flask")
    page.click("button:has-text('Filter')")
    expect(page.locator("tr[data-job]")).to_have_count(1)
    page.goto(f"{server.url}/dashboard/jobs")
    shoot(page, shots, "jobs")


def test_preview_plans_before_spending_gpu_time(page: Page, server: Server, shots: Path) -> None:
    sign_in(page, server.url, server.acme.key)
    page.click("text=New job")
    form = page.locator("#job-form")
    form.locator("input[name=brand_name]").fill("Northwind")
    form.locator("input[name=product_name]").fill("Trail Flask")
    form.locator("textarea[name=product_description]").fill("An insulated steel water flask.")
    form.locator("textarea[name=taglines]").fill("Cold for 24 hours")
    form.locator("input[value='1200x628']").check()
    form.locator("#preview-plans").click()
    preview = page.locator("#preview-result")
    expect(preview.locator(".canvas.layout")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)  # 1080x1080 and 1200x628
    expect(preview.locator(".canvas.layout figcaption b")).to_have_text(["1080x1080", "1200x628"])
    assert preview.locator(".canvas.layout").first.locator("g.box.role-product").count() == 1
    expect(page).to_have_url(f"{server.url}/dashboard/jobs")  # drawn in place, nothing submitted
    shoot(page, shots, "preview", full_page=True)
    with server.api(server.acme) as api:
        names = [j["spec"]["product"]["name"] for j in api.get("/v1/jobs").json()["items"] if j["kind"] == "campaign"]
    assert names.count("Trail Flask") == 1  # only the job the previous test submitted


def test_gallery_and_full_size_image(page: Page, server: Server, shots: Path,
                                     finished_campaign: dict[str, Any]) -> None:
    with server.api(server.acme) as api:
        job = wait_for_job(api, finished_campaign["id"])
        assets = [a for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"] if a["kind"] == "asset"]
    assert job["status"] == "succeeded" and len(assets) == 6
    sign_in(page, server.url, server.acme.key)
    page.goto(f"{server.url}/dashboard/jobs/{job['id']}/gallery")
    groups = page.locator(".size-group h2")
    expect(groups).to_have_text(["320x320", "480x252", "288x512"])
    tiles = page.locator(".size-group .tile")
    expect(tiles).to_have_count(6)
    expect(tiles.first.locator(".badge").first).to_have_text("watermark")
    expect(tiles.first.locator(".badge").first).to_have_class(re.compile("b-ok"))  # read back after marking
    expect(tiles.first.locator(".badge").nth(1)).to_contain_text("C2PA")
    # every thumbnail really loaded (decoded by the browser, not just a broken <img>)
    wait_until(page, "() => Array.from(document.querySelectorAll('.size-group img'))"
                     ".every(i => i.complete && i.naturalWidth > 0)")
    shoot(page, shots, "gallery", full_page=True)
    # the JSON API's GET /v1/jobs/{id}/bundle, behind the session cookie
    with page.expect_download() as download:
        page.click("a:has-text('Download bundle')")
    with zipfile.ZipFile(download.value.path()) as bundle:
        names = bundle.namelist()
    assert "manifest.json" in names and sum(n.endswith(".png") for n in names) == 6

    tiles.nth(1).locator("a.thumb").click()
    expect(page).to_have_url(re.compile(r"/dashboard/artifacts/art_[0-9a-f]+$"))
    full = page.locator("#full-image")
    wait_until(page, "() => document.querySelector('#full-image').naturalWidth > 0")
    natural = full.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural == [320, 320]
    expect(page.locator(".badges .badge").first).to_contain_text("watermark")
    shoot(page, shots, "full-size")


def test_cancel_a_running_job(page: Page, server: Server, shots: Path) -> None:
    sign_in(page, server.url, server.acme.key)
    page.goto(f"{server.url}/dashboard/jobs?new=story")
    form = page.locator("#job-form")
    expect(form.locator("#kind-story")).to_be_checked()
    form.locator("textarea[name=premise]").fill("A kite that wants to see the sea.")
    form.locator("input[name=culture]").fill("Gujarat, India")
    form.locator("input[name=pages]").fill("2")
    form.locator("summary:has-text('Advanced')").click()
    form.locator("input[name=model]").fill(SLOW_MODEL)  # many diffusion steps: still running when we cancel
    form.locator("#submit-job").click()
    expect(page).to_have_url(re.compile(r"/dashboard/jobs/job_[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    # live step progress of the running diffusion stage arrives over SSE
    expect(page.locator(".g-step .step-text").first).to_contain_text(re.compile(r"step \d+/\d+"), timeout=LIVE_TIMEOUT_MS)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    expect(page.locator("#job-status")).to_have_text("canceled")
    expect(page.locator("#notice")).to_contain_text("Job canceled")
    expect(page.locator("#cancel-job")).to_have_count(0)
    shoot(page, shots, "canceled", full_page=True)
    with server.api(server.acme) as api:
        job = wait_for_job(api, job_id)
    assert job["status"] == "canceled"
    assert not any(s["status"] in ("queued", "running") for s in job["stages"])
    assert job["stages"] and any(s["name"] == "gpu.character_sheet" for s in job["stages"])


def test_a_failed_job_shows_the_failing_stage_and_can_be_retried(page: Page, server: Server, shots: Path) -> None:
    spec = {"brand": {"name": "Acme"}, "product": {"name": "Anvil", "description": "A heavy anvil."},
            "taglines": ["Drops fast"], "sizes": ["320x320"], "model": "no-such-model"}
    with server.api(server.acme) as api:
        job_id = api.post("/v1/jobs", json={"kind": "campaign", "spec": spec}).json()["id"]
        assert wait_for_job(api, job_id)["status"] == "failed"
    sign_in(page, server.url, server.acme.key)
    page.goto(f"{server.url}/dashboard/jobs/{job_id}")
    error = page.locator("#job-error")
    expect(error).to_contain_text("gpu.background[320x320-v0]")
    expect(error).to_contain_text("no-such-model")
    shoot(page, shots, "failed", full_page=True)
    page.click("#retry-job")
    expect(page.locator("#notice")).to_contain_text("Retrying")
    # the retried stage runs again (attempt 2) and, the model still being absent, fails again: live, in place
    expect(page.locator("#job-status")).to_have_text("failed", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("[data-stage='gpu.background'] .attempts")).to_have_text("×2")
    with server.api(server.acme) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
    background = next(s for s in job["stages"] if s["name"] == "gpu.background")
    assert background["attempts"] == 2 and background["status"] == "failed"
    assert [s["status"] for s in job["stages"] if s["name"].startswith("plan.")] == ["succeeded", "succeeded"]


def test_another_tenants_job_stays_hidden(page: Page, server: Server, shots: Path,
                                          finished_campaign: dict[str, Any]) -> None:
    sign_in(page, server.url, server.globex.key)
    expect(page.locator(".tenant")).to_have_text("globex")
    expect(page.locator(f"tr[data-job='{finished_campaign['id']}']")).to_have_count(0)
    for path in ("", "/gallery", "/plans"):
        response = page.goto(f"{server.url}/dashboard/jobs/{finished_campaign['id']}{path}")
        assert response is not None and response.status == 404
        expect(page.locator("#error-detail")).to_contain_text("not found")
        expect(page.locator("body")).not_to_contain_text("Lumen")
    with server.api(server.acme) as api:
        asset = api.get(f"/v1/jobs/{finished_campaign['id']}/artifacts").json()["items"][0]
    response = page.goto(f"{server.url}/dashboard/artifacts/{asset['id']}/content")
    assert response is not None and response.status == 404
    shoot(page, shots, "other-tenant")


def test_plans_and_system_pages(page: Page, server: Server, shots: Path, finished_campaign: dict[str, Any]) -> None:
    with server.api(server.acme) as api:
        wait_for_job(api, finished_campaign["id"])
    sign_in(page, server.url, server.acme.key)
    expect(page.locator("tr[data-job]")).to_have_count(4)  # the jobs of the tests before: every status shows
    shoot(page, shots, "jobs-all")
    page.goto(f"{server.url}/dashboard/jobs/{finished_campaign['id']}/plans")
    layouts = page.locator(".canvas.layout")
    expect(layouts).to_have_count(3)
    assert layouts.first.locator("g.box.role-product").count() == 1
    assert layouts.first.locator("g.box.role-tagline").count() >= 1
    regional = page.locator(".canvas.regional g.box.role-region")
    assert regional.count() >= 1
    shoot(page, shots, "plans", full_page=True)

    page.click("text=System")
    expect(page.locator("#queues")).to_contain_text("embedded")
    expect(page.locator("#usage svg.chart")).to_have_count(2)
    assert page.locator("#usage svg.chart").first.locator("rect.bar").count() == 24
    images = page.locator("#usage figcaption").nth(1).inner_text()
    assert int(images.rsplit(" ", 1)[1]) >= 6
    shoot(page, shots, "system", full_page=True)


def test_pages_fit_a_phone(browser: Browser, server: Server, shots: Path, finished_campaign: dict[str, Any]) -> None:
    with server.api(server.acme) as api:
        wait_for_job(api, finished_campaign["id"])
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=1)
    try:
        page = context.new_page()
        sign_in(page, server.url, server.acme.key)
        job = f"{server.url}/dashboard/jobs/{finished_campaign['id']}"
        for name, url in (("phone-jobs", f"{server.url}/dashboard/jobs"), ("phone-job", job),
                          ("phone-gallery", f"{job}/gallery"), ("phone-plans", f"{job}/plans"),
                          ("phone-system", f"{server.url}/dashboard/system")):
            page.goto(url)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{url} scrolls sideways by {overflow}px on a phone"
            shoot(page, shots, name)
        # the job table turns into labelled cards
        page.goto(f"{server.url}/dashboard/jobs")
        assert page.locator("table.jobs thead").is_hidden()
        expect(page.locator(f"tr[data-job='{finished_campaign['id']}'] .status")).to_be_visible()
    finally:
        context.close()

"""Every /v1 operation called through the SDK against the real app over HTTP (its answer parsed into the SDK's
model), so a method that builds its path, query or body wrong fails here, not at a customer's."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_testkit import TenantCtx, add_artifact, png_bytes, set_job, story_spec
from atelier_api import create_app
from atelier_sdk import AsyncAtelierClient, AtelierClient, AtelierError, RetryPolicy
from sqlalchemy.orm import Session, sessionmaker

from .conftest import Recording, Seen, Sleeps, run_async

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")


@pytest.fixture
def wide(settings: Any, engine: Any, store: Any, celery: Any, runtime: Any, serve: Callable[[Any], str]) -> str:
    """The app letting webhooks target loopback (a receiver here), with a short planner wait."""
    app = create_app(settings.model_copy(update={"ssrf_allow": "127.0.0.1/32", "plan_preview_timeout_s": 0.2}),
                     engine=engine, store=store, celery=celery, runtime=runtime)
    return serve(app)


def finished_job(atelier: AtelierClient, factory: sessionmaker[Session], store: Any, tenant: TenantCtx) -> tuple[str, str]:
    job = atelier.submit(story_spec(), kind="story")
    artifact_id = add_artifact(factory, store, tenant_id=tenant.id, job_id=job.id, kind="page", name="page_01",
                               data=png_bytes(color=(1, 2, 3)), content_type="image/png")
    set_job(factory, job.id, status="succeeded")
    return job.id, artifact_id


def test_jobs_artifacts_and_downloads(wide: str, tenant: TenantCtx, factory: sessionmaker[Session], store: Any,
                                      tmp_path: Path, seen: Seen, transport: Recording) -> None:
    sleeps = Sleeps()
    with AtelierClient(wide, api_key=tenant.key, transport=transport, sleep=sleeps,
                       retry=RetryPolicy(jitter=lambda: 0.0)) as atelier:
        job_id, artifact_id = finished_job(atelier, factory, store, tenant)
        assert atelier.job(job_id).status == "succeeded"
        assert [j.id for j in atelier.jobs(status="succeeded", kind="story", limit=5).items] == [job_id]
        (art,) = atelier.artifacts(job_id, kind="page")
        assert art.id == artifact_id and art.url.endswith(f"/v1/artifacts/{artifact_id}/content")
        assert art.download_url and art.download_url_expires_at is not None and art.created_at is not None
        data = atelier.content(artifact_id)
        assert hashlib.sha256(data).hexdigest() == art.sha256
        signed = httpx.URL(art.download_url)
        assert atelier.asset_content(artifact_id, expires=int(signed.params["expires"]),
                                     signature=signed.params["signature"]) == data
        assert "authorization" not in seen.of("GET", "/v1/assets/")[0][3], "a signed URL is fetched without the key"
        with pytest.raises(AtelierError) as exc:
            atelier.asset_content(artifact_id, expires=int(signed.params["expires"]), signature="0" * 64)
        assert exc.value.status == 403
        # the bundle streams to a file; a connection dropped mid-download starts it over
        transport.fail(lambda r: r.url.path.endswith("/bundle"), httpx.ReadError("connection reset"), after_send=True)
        path = atelier.download_bundle(job_id, f"{tmp_path}/out/")  # a folder: <job_id>.zip in it
        assert path == tmp_path / "out" / f"{job_id}.zip" and not path.with_name(path.name + ".part").exists()
        assert "manifest.json" in zipfile.ZipFile(path).namelist()
        with pytest.raises(AtelierError) as exc:
            atelier.retry(job_id)  # a succeeded job has nothing to retry
        assert exc.value.status == 409
        queued = atelier.submit(story_spec(pages=2), kind="story")
        assert atelier.cancel(queued.id).status == "canceled"
    assert sleeps == [0.25], "the bundle's one retry"


def test_uploads_capabilities_verify_and_previews(wide: str, tenant: TenantCtx) -> None:
    with AtelierClient(wide, api_key=tenant.key) as atelier:
        up = atelier.upload(png_bytes((40, 30)), filename="bottle.png")
        assert (up.width, up.height, up.kind, up.content_type) == (40, 30, "upload", "image/png") and up.size_bytes
        caps = atelier.capabilities()
        assert caps.placements and caps.size_limits.max_side >= caps.size_limits.min_side
        assert caps.story_languages.written
        report = atelier.verify(png_bytes((64, 64)), filename="found.png")
        assert report["image"]["width"] == 64 and "watermark" in report and "verdict" in report
        with pytest.raises(AtelierError) as exc:  # no planner worker answers the memory broker
            atelier.preview_plans(story_spec(), kind="story")
        assert exc.value.status in (503, 504)


def test_keys_and_brands(wide: str, tenant: TenantCtx) -> None:
    with AtelierClient(wide, api_key=tenant.key) as atelier:
        made = atelier.create_key("ci")
        assert made.key and made.key.startswith("atl_") and made.active
        assert {k.name for k in atelier.keys()} == {"default", "ci"}
        assert not atelier.revoke_key(made.id).active
        spare = atelier.create_key("spare")
        assert atelier.delete_key(spare.id).revoked_at is not None

        brand = atelier.create_brand("Lumen", ["#3b2416"], tone="warm", banned_words=["cheap"])
        assert brand.palette == ["#3B2416"] and brand.tone == "warm" and brand.created_at is not None
        assert [b.id for b in atelier.brands()] == [brand.id] and atelier.brand(brand.id).name == "Lumen"
        changed = atelier.update_brand(brand.id, name="Lumen Co", tone=None)  # None clears; the rest stays
        assert (changed.name, changed.tone, changed.banned_words) == ("Lumen Co", None, ["cheap"])
        if DEJAVU.exists():
            assert atelier.upload_brand_font(brand.id, DEJAVU).font_family == "DejaVuSerif"
        assert atelier.delete_brand(brand.id) is None
        with pytest.raises(AtelierError) as exc:
            atelier.brand(brand.id)
        assert exc.value.status == 404


def test_webhooks_and_deliveries(wide: str, tenant: TenantCtx) -> None:
    with AtelierClient(wide, api_key=tenant.key) as atelier:
        hook = atelier.create_webhook("http://127.0.0.1:9/hooks", events=["job.succeeded"], description="ci")
        assert hook.secret and hook.secret.startswith("whsec_") and hook.format == "standard"
        assert [h.id for h in atelier.webhooks()] == [hook.id] and atelier.webhook(hook.id).secret is None
        changed = atelier.update_webhook(hook.id, description=None, enabled=False)
        assert (changed.description, changed.enabled, changed.events) == (None, False, ["job.succeeded"])
        rotated = atelier.rotate_webhook_secret(hook.id, grace_s=0)
        assert rotated.secret and rotated.secret != hook.secret
        atelier.update_webhook(hook.id, enabled=True)
        test = atelier.test_webhook(hook.id)
        assert test.event_type == "webhook.test" and test.webhook_id == hook.id
        page = atelier.deliveries(hook.id, limit=10)
        assert [d.id for d in page.items] == [test.id] and page.next_cursor is None
        assert atelier.delivery(hook.id, test.id).message_id == test.message_id
        again = atelier.redeliver(hook.id, test.id)
        assert again.id == test.id and again.message_id == test.message_id
        assert atelier.delete_webhook(hook.id) is None
        assert atelier.webhooks() == []


def test_the_async_client_calls_the_same_operations(wide: str, tenant: TenantCtx, factory: sessionmaker[Session],
                                                    store: Any, tmp_path: Path) -> None:
    with AtelierClient(wide, api_key=tenant.key) as atelier:
        job_id, artifact_id = finished_job(atelier, factory, store, tenant)

    async def main() -> tuple[Any, ...]:
        async with AsyncAtelierClient(wide, api_key=tenant.key) as atelier:
            arts, content, path, up, keys = await asyncio.gather(
                atelier.artifacts(job_id), atelier.content(artifact_id),
                atelier.download_bundle(job_id, tmp_path / "bundle.zip"),
                atelier.upload(png_bytes((40, 30))), atelier.keys())
            hook = await atelier.create_webhook("http://127.0.0.1:9/hooks")
            await atelier.delete_webhook(hook.id)
            return arts, content, path, up, keys

    arts, content, path, up, keys = run_async(main())
    assert [a.id for a in arts] == [artifact_id] and hashlib.sha256(content).hexdigest() == arts[0].sha256
    assert path == tmp_path / "bundle.zip" and zipfile.ZipFile(path).testzip() is None
    assert up.width == 40 and [k.name for k in keys] == ["default"]

"""Every standard placement in one campaign, one item failing (injected): the others are delivered, the
failure is listed, and a retry re-runs only it.

The embedded mode in this process (as ``atelier serve`` runs on a laptop): the API, the in-process Celery
worker with the real stage handlers, the tiny random-init SDXL, SQLite and the local artifact folder. The
fault is injected into the renderer's compositor for the 728x90 size only; everything else is the real code.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.placements import PLACEMENTS
from fastapi.testclient import TestClient

BAD = "728x90-v0"


def _wait(client: TestClient, headers: dict[str, str], job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.25)


def _manifest(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    arts = client.get(f"/v1/jobs/{job_id}/artifacts", headers=headers).json()["items"]
    (manifest,) = [a for a in arts if a["kind"] == "manifest"]
    return json.loads(client.get(manifest["url"], headers=headers).content)


def test_every_named_placement_with_one_failing_item(tmp_path: Path, tiny_models: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from atelier.embedded import embedded_worker
    from atelier_api import create_app
    from atelier_control.auth import create_tenant
    from atelier_control.db import engine_from_settings, session_factory, session_scope
    from atelier_migrations import upgrade
    from atelier_renderer.stages import render_ad
    from atelier_runtime.settings import Settings

    settings = Settings(home=tmp_path / "home", broker_url=None, database_url=None, storage="local",
                        models_file=tiny_models, gen_max_side=64, sse_poll_s=0.1, retry_backoff_s=0.2)
    settings.home_dir()  # created private (0700), as `atelier serve` does
    upgrade(settings.resolved_database_url())
    engine = engine_from_settings(settings)
    with session_scope(session_factory(engine)) as s:
        _, key = create_tenant(s, "acme")
    engine.dispose()
    headers = {"Authorization": f"Bearer {key}"}

    real = render_ad.compose_ad_with_report

    def compose(**kw: Any) -> Any:
        if kw["variant"].target.name == "728x90":
            raise StageError("injected: the compositor failed on 728x90", retryable=False)
        return real(**kw)

    monkeypatch.setattr(render_ad, "compose_ad_with_report", compose)

    @asynccontextmanager
    async def worker(_app: Any) -> AsyncIterator[None]:
        with embedded_worker(settings):
            yield

    spec = {"brand": {"name": "Chai House", "palette": ["#5B2C06", "#F7E7CE", "#C0392B"]},
            "product": {"name": "Masala Chai Tin", "description": "A round tin of masala chai leaves."},
            "taglines": ["Brewed the old way", "Spice in every sip"], "cta": "Shop now",
            "sizes": list(PLACEMENTS), "seed": 3,
            # the formats ad platforms take: JPEG and WebP under IAB's 150 KB, PNG for the rest
            "formats": {"iab-medium-rectangle": {"format": "jpeg"}, "iab-mobile-leaderboard": {"format": "webp"}}}
    with TestClient(create_app(settings, extra_lifespan=worker)) as client:
        r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = _wait(client, headers, job_id)
        assert job["status"] == "succeeded" and job["partial"] is True, job["error"]
        assert [(f["stage"], f["item"]) for f in job["failures"]] == [("render.ad", BAD)]
        assert "injected" in job["failures"][0]["error"]
        manifest = _manifest(client, headers, job_id)
        delivered = {a["item"] for a in manifest["assets"]}
        assert delivered == {f"{p.size}-v0" for p in PLACEMENTS.values()} - {BAD}
        assert [f["item"] for f in manifest["failed"]] == [BAD]
        # every delivered size is the size asked for, and the small ones carry the mark too
        for a in manifest["assets"]:
            assert f"{a['width']}x{a['height']}" == a["item"].removesuffix("-v0")
            assert a["watermark"]["carried"] is True, a
        files = {a["item"]: a["watermark"]["file"] for a in manifest["assets"]}
        assert files["300x250-v0"]["format"] == "jpeg" and files["300x250-v0"]["bytes"] <= 150_000
        assert files["320x50-v0"]["format"] == "webp" and files["320x50-v0"]["bytes"] <= 150_000
        assert files["1080x1920-v0"]["format"] == "png"
        events = client.get(f"/v1/jobs/{job_id}/events?after=0", headers=headers).text
        assert '"failed": true' in events or '"failed":true' in events  # the job.warning naming the item

        stages_before = {(s["name"], s["item"]): s["attempts"] for s in job["stages"]}
        monkeypatch.setattr(render_ad, "compose_ad_with_report", real)  # the fault is fixed
        r = client.post(f"/v1/jobs/{job_id}/retry", headers=headers)
        assert r.status_code == 202, r.text
        job = _wait(client, headers, job_id)
        assert job["status"] == "succeeded" and job["partial"] is False and job["failures"] == []
        rerun = {(s["name"], s["item"]) for s in job["stages"] if s["attempts"] != stages_before[(s["name"], s["item"])]}
        assert rerun == {("render.ad", BAD), ("gpu.watermark", BAD), ("deliver", "")}
        manifest = _manifest(client, headers, job_id)
        assert len(manifest["assets"]) == len(PLACEMENTS) and manifest["failed"] == []

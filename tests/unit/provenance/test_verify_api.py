"""POST /v1/verify: tenant-authenticated; a mark's job is named only to the tenant that owns it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atelier_api import create_app
from atelier_contracts.specs import StorySpec
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.jobs import create_job
from atelier_control.models import Artifact, Base
from atelier_provenance import manifests as pv
from atelier_provenance import watermark as wm
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from PIL import Image


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = Settings(home=tmp_path)
    engine = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(engine)
    factory = session_factory(engine)
    keys, ids = {}, {}
    with session_scope(factory) as s:
        for name in ("acme", "globex"):
            tenant, key = create_tenant(s, name)
            keys[name], ids[name] = key, tenant.id
        job, _ = create_job(s, tenant_id=ids["acme"], kind="story",
                            spec=StorySpec.model_validate({"premise": "p", "culture": "Japan", "pages": 1}))
        job_id = job.id
        s.add(Artifact(tenant_id=ids["acme"], job_id=job_id, kind="asset", name="s0", key=f"k/{job_id}/s0.png",
                       content_type="image/png", size_bytes=1, sha256="0" * 64, width=512, height=384, meta={}))
    celery = make_celery(settings)
    app = create_app(settings, engine=engine, store=LocalStore(tmp_path / "a"), celery=celery, runtime=MemoryRuntime())
    with TestClient(app) as client:
        yield {"client": client, "keys": keys, "ids": ids, "job_id": job_id, "settings": settings}
    celery.close()
    engine.dispose()


def marked_asset(env: dict[str, Any]) -> bytes:
    # the natural-ish image the robustness suite marks: the tenant and job ids (so the payload) are new on every run,
    # and a half-size JPEG of per-pixel noise loses its chroma to 4:2:0 subsampling (bit accuracy ~0.78, a miss
    # about one run in 200); this image reads at ~0.985 (0 misses in 300 random payloads)
    base = wm.procedural(512, 1).resize((512, 384))
    payload = wm.payload_for(env["ids"]["acme"], env["job_id"])
    buf = io.BytesIO()
    wm.embed(base, payload).save(buf, format="PNG")
    return pv.sign_asset(buf.getvalue(), "image/png", credentials=pv.load_credentials(env["settings"]), title="s0.png",
                         generation={"job_id": env["job_id"], "model": "m", "seed": 1,
                                     "watermark": {"payload_hex": payload.hex(), "width": 512, "height": 384}})


def post(env: dict[str, Any], data: bytes, tenant: str | None) -> Any:
    headers = {"Authorization": f"Bearer {env['keys'][tenant]}"} if tenant else {}
    return env["client"].post("/v1/verify", files={"file": ("x.png", data, "image/png")}, headers=headers)


def test_owner_sees_the_job_other_tenants_do_not(env):
    data = marked_asset(env)
    mine = post(env, data, "acme")
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["watermark"]["detected"] and body["watermark"]["ownership"] == "yours"
    assert body["job"]["id"] == env["job_id"] and body["c2pa"]["state"] == "trusted"
    theirs = post(env, data, "globex").json()
    assert theirs["watermark"]["detected"] and theirs["watermark"]["ownership"] == "another tenant"
    assert theirs["job"] is None
    assert post(env, data, None).status_code == 401


def test_a_stripped_resized_copy_is_found_at_the_tenants_asset_size(env):
    img = Image.open(io.BytesIO(marked_asset(env))).resize((256, 192), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    body = post(env, buf.getvalue(), "acme").json()
    assert body["c2pa"]["state"] == "absent"
    assert body["watermark"]["detected"] and body["watermark"]["expected_size"] == [512, 384]
    assert body["job"]["id"] == env["job_id"]


def test_not_an_image_is_a_problem(env):
    r = post(env, b"hello", "acme")
    assert r.status_code == 415 and r.headers["content-type"].startswith("application/problem+json")

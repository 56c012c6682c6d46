"""Plain helpers for the API tests (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from atelier_sdk import AtelierClient
from fastapi.testclient import TestClient
from PIL import Image

UPLOAD_MAX_BYTES = 512 * 1024


@dataclass
class TenantCtx:
    id: str
    key: str
    headers: dict[str, str] = field(default_factory=dict)


def campaign_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "brand": {"name": "Acme", "palette": ["#112233", "#FFFFFF"]},
        "product": {"name": "Rocket Skates", "description": "Skates with rockets on them."},
        "taglines": ["Go faster", "Arrive first"],
        "sizes": ["1080x1080", "1080x1920"],
        "variants": 2,
    }
    spec.update(overrides)
    return spec


def story_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"premise": "A kite that wants to see the sea.", "culture": "Gujarati", "pages": 3}
    spec.update(overrides)
    return spec


def png_bytes(size: tuple[int, int] = (32, 24), mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Split an event stream into frames: {"id", "event", "data"} or {"comment"}."""
    frames: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                frame[name] = json.loads(value) if name == "data" else value
        frames.append(frame)
    return frames


def add_stages(factory: Any, job_id: str, rows: list[tuple[str, str, int, str]]) -> list[str]:
    """Insert stage rows ``(name, item, position, status)``; returns their ids in order."""
    from datetime import UTC, datetime, timedelta

    from atelier_control.db import session_scope
    from atelier_control.models import Stage

    ids = []
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    with session_scope(factory) as s:
        for name, item, position, status in rows:
            done = status in ("succeeded", "failed")
            stage = Stage(job_id=job_id, name=name, item=item, position=position, queue="planning", status=status,
                          attempts=1 if status != "pending" else 0,
                          started_at=t0 if status != "pending" else None,
                          finished_at=t0 + timedelta(seconds=2.5) if done else None)
            s.add(stage)
            s.flush()
            ids.append(stage.id)
    return ids


def emit_events(factory: Any, tenant_id: str, job_id: str, types: list[str]) -> list[int]:
    from atelier_control.db import session_scope
    from atelier_control.events import emit_now

    with session_scope(factory) as s:
        return [emit_now(s, tenant_id=tenant_id, job_id=job_id, type=t, data={"n": i}).id for i, t in enumerate(types)]


def set_job(factory: Any, job_id: str, **values: Any) -> None:
    from atelier_control.db import session_scope
    from atelier_control.models import Job
    from sqlalchemy import update

    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def add_artifact(factory: Any, store: Any, *, tenant_id: str, job_id: str, kind: str, name: str, data: bytes,
                 content_type: str, stage_id: str | None = None) -> str:
    from atelier_contracts.keys import job_prefix, stage_key
    from atelier_control.db import session_scope
    from atelier_control.models import Artifact, new_id

    artifact_id = new_id("art")
    key = stage_key(job_prefix(tenant_id, job_id), "render.ad", f"{name}-{artifact_id}", "bin")
    stored = store.put(key, data, content_type)
    with session_scope(factory) as s:
        s.add(Artifact(id=artifact_id, tenant_id=tenant_id, job_id=job_id, stage_id=stage_id, kind=kind, name=name,
                       key=key, content_type=content_type, size_bytes=stored.size_bytes, sha256=stored.sha256,
                       meta={"k": kind}))
    return artifact_id


CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client: Any, key: str) -> str:
    """Sign in to the dashboard through its form; returns the session's CSRF token."""
    page = client.get("/dashboard/login")
    token = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/dashboard/login", data={"api_key": key, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    jobs = client.get("/dashboard/jobs")
    assert jobs.status_code == 200
    return CSRF_META.search(jobs.text).group(1)  # type: ignore[union-attr]


def sdk_over(client: TestClient, key: str) -> AtelierClient:
    """The SDK talking to the app in-process (its requests replayed through the TestClient)."""

    def handler(request: httpx.Request) -> httpx.Response:
        r = client.request(request.method, str(request.url.copy_with(scheme=None, host=None, port=None)),
                           headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                           content=request.content)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    return AtelierClient("http://testserver", api_key=key, transport=httpx.MockTransport(handler))

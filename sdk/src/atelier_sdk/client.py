"""A typed Python client for the Atelier API (httpx), sharing the job spec models with the server.

    from atelier_sdk import AtelierClient
    from atelier_contracts.specs import CampaignSpec

    with AtelierClient("http://127.0.0.1:8000", api_key="atl_...") as atelier:
        job = atelier.submit(CampaignSpec.model_validate({...}))
        job = atelier.wait(job.id)                      # follows the job's Server-Sent Events
        atelier.download_bundle(job.id, "out/bundle.zip")

Errors come back as :class:`ApiError` with the RFC 9457 problem's fields (``status``, ``title``,
``detail``, ``errors`` naming each invalid field). The transport is injectable (``transport=``), so a
test can talk to an app in-process. Webhook receivers verify requests with :func:`verify_webhook`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from .webhooks import WEBHOOK_EVENTS

TERMINAL = ("succeeded", "failed", "canceled")


# ---------------------------------------------------------------- response models


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Stage(_Model):
    id: str
    name: str
    item: str
    status: str
    attempts: int = 0
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    error: str | None = None


class Job(_Model):
    id: str
    kind: Literal["campaign", "story"]
    status: str
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    stages: list[Stage] = Field(default_factory=list)
    external_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None = None


class Artifact(_Model):
    id: str
    kind: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    url: str


class Upload(_Model):
    id: str
    width: int
    height: int
    sha256: str


class Event(_Model):
    id: int
    type: str
    job_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class BrandKit(_Model):
    id: str
    name: str
    palette: list[str]
    font_family: str | None = None
    font_artifact_id: str | None = None
    logo: str | None = None
    tone: str | None = None
    banned_words: list[str] = Field(default_factory=list)


class Webhook(_Model):
    id: str
    url: str
    events: list[str]
    enabled: bool
    description: str | None = None
    secret: str | None = Field(default=None, description="Returned when the endpoint is created or rotated.")


class WebhookDelivery(_Model):
    id: str
    event_id: int
    event_type: str
    message_id: str
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None


class ApiKeyInfo(_Model):
    """One of the tenant's API keys. ``key`` (``atl_...``) is only in :meth:`AtelierClient.create_key`'s answer."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = Field(default=None, description="The key itself: returned once, when it is created.")

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ApiError(Exception):
    """An RFC 9457 problem answered by the API."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.title = str(problem.get("title") or "error")
        self.detail = str(problem.get("detail") or "")
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        super().__init__(f"{status} {self.title}: {self.detail}")


# ---------------------------------------------------------------- the client


class AtelierClient:
    """Synchronous client; every method maps to one API call (``wait`` follows the event stream)."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> AtelierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"title": resp.reason_phrase, "detail": resp.text[:500]}
            raise ApiError(resp.status_code, problem if isinstance(problem, dict) else {"detail": str(problem)})
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # jobs
    def submit(self, spec: BaseModel | Mapping[str, Any], *, kind: str | None = None,
               idempotency_key: str | None = None, external_id: str | None = None,
               metadata: Mapping[str, str] | None = None) -> Job:
        """Submit a campaign or story. ``kind`` comes from a spec model's ``JOB_KIND`` (the server's
        ``atelier_contracts.specs.CampaignSpec`` / ``StorySpec``); a plain mapping needs it. ``external_id`` and
        ``metadata`` (string labels) are echoed in the job and its webhooks."""
        if isinstance(spec, BaseModel):
            kind = kind or getattr(spec, "JOB_KIND", None)
            body_spec: Any = spec.model_dump(mode="json", exclude_none=True)
        else:
            body_spec = dict(spec)
        if kind not in ("campaign", "story"):
            raise ValueError("kind must be 'campaign' or 'story' when the spec is a plain mapping")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body: dict[str, Any] = {"kind": kind, "spec": body_spec}
        if external_id is not None:
            body["external_id"] = external_id
        if metadata:
            body["metadata"] = dict(metadata)
        return Job.model_validate(self._call("POST", "/v1/jobs", json=body, headers=headers))

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 20,
             cursor: str | None = None, external_id: str | None = None) -> JobPage:
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit, "cursor": cursor,
                                    "external_id": external_id}.items() if v is not None}
        return JobPage.model_validate(self._call("GET", "/v1/jobs", params=params))

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def artifacts(self, job_id: str, *, kind: str | None = None) -> list[Artifact]:
        params = {"kind": kind} if kind else {}
        return [Artifact.model_validate(a) for a in self._call("GET", f"/v1/jobs/{job_id}/artifacts", params=params)["items"]]

    def content(self, artifact_id: str) -> bytes:
        resp = self.http.get(f"/v1/artifacts/{artifact_id}/content")
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, resp.json())
        return resp.content

    def upload(self, file: str | Path | BinaryIO, *, filename: str | None = None) -> Upload:
        """Upload a product image or logo (PNG, JPEG, WebP); use the id in a spec."""
        if isinstance(file, str | Path):
            path = Path(file)
            with path.open("rb") as fh:
                return self.upload(fh, filename=filename or path.name)
        data = {"file": (filename or "upload.png", file.read())}
        return Upload.model_validate(self._call("POST", "/v1/uploads", files=data))

    def events(self, job_id: str, *, after: int | None = None, timeout: float | None = None) -> Iterator[Event]:
        """The job's events from the start (or after ``after``), live, until the terminal one."""
        headers = {"Last-Event-ID": str(after)} if after is not None else {}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                              timeout=httpx.Timeout(timeout, connect=10.0)) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, resp.json())
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield Event.model_validate(json.loads(line[6:]))

    def wait(self, job_id: str, *, on_event: Callable[[Event], None] | None = None, timeout: float | None = None,
             poll_s: float = 1.0) -> Job:
        """Follow the job until it ends (events; falls back to polling if the stream breaks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: int | None = None
        while True:
            try:
                for ev in self.events(job_id, after=last, timeout=timeout):
                    last = ev.id
                    if on_event is not None:
                        on_event(ev)
            except (httpx.TransportError, httpx.StreamError):
                pass
            job = self.job(job_id)
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout}s")
            time.sleep(poll_s)

    def download_bundle(self, job_id: str, dest: str | Path) -> Path:
        """Stream the job's bundle (zip: assets, manifest.json, manifest.csv) to ``dest`` (file or folder)."""
        dest = Path(dest)
        if dest.is_dir() or str(dest).endswith("/"):
            dest.mkdir(parents=True, exist_ok=True)
            dest = dest / f"{job_id}.zip"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", f"/v1/jobs/{job_id}/bundle") as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, resp.json())
            with tmp.open("wb") as fh:
                for chunk in resp.iter_bytes():
                    fh.write(chunk)
        tmp.replace(dest)
        return dest

    # API keys
    def create_key(self, name: str) -> ApiKeyInfo:
        """Issue a new key of this tenant; ``.key`` holds it, shown this once: store it now."""
        return ApiKeyInfo.model_validate(self._call("POST", "/v1/keys", json={"name": name}))

    def keys(self) -> list[ApiKeyInfo]:
        """The tenant's keys, revoked ones included (no secrets)."""
        return [ApiKeyInfo.model_validate(k) for k in self._call("GET", "/v1/keys")["items"]]

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (this client's own too): refused from the next request on; its dashboard sessions end."""
        return ApiKeyInfo.model_validate(self._call("POST", f"/v1/keys/{key_id}/revoke"))

    # brand kits
    def create_brand(self, **fields: Any) -> BrandKit:
        return BrandKit.model_validate(self._call("POST", "/v1/brands", json=fields))

    def brands(self) -> list[BrandKit]:
        return [BrandKit.model_validate(b) for b in self._call("GET", "/v1/brands")["items"]]

    def upload_brand_font(self, brand_id: str, path: str | Path) -> BrandKit:
        p = Path(path)
        return BrandKit.model_validate(self._call("POST", f"/v1/brands/{brand_id}/font",
                                                  files={"file": (p.name, p.read_bytes())}))

    # webhooks
    def create_webhook(self, url: str, *, events: list[str] | None = None, description: str | None = None) -> Webhook:
        body: dict[str, Any] = {"url": url, "events": events or list(WEBHOOK_EVENTS)}
        if description:
            body["description"] = description
        return Webhook.model_validate(self._call("POST", "/v1/webhooks", json=body))

    def webhooks(self) -> list[Webhook]:
        return [Webhook.model_validate(w) for w in self._call("GET", "/v1/webhooks")["items"]]

    def deliveries(self, webhook_id: str) -> list[WebhookDelivery]:
        return [WebhookDelivery.model_validate(d)
                for d in self._call("GET", f"/v1/webhooks/{webhook_id}/deliveries")["items"]]

    def test_webhook(self, webhook_id: str) -> WebhookDelivery:
        """Queue a signed ``webhook.test`` event to the endpoint; its delivery shows how it went."""
        return WebhookDelivery.model_validate(self._call("POST", f"/v1/webhooks/{webhook_id}/test"))

    def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        return WebhookDelivery.model_validate(
            self._call("POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"))

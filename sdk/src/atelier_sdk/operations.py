"""Every operation of the API's ``/v1``, written once for both clients.

An operation is a method of :class:`Operations` decorated with :func:`endpoint` (the HTTP method and path
template): it builds a :class:`Call` (path values, query, body, headers, how to parse the answer). Reading it on
an :class:`AtelierClient` gives a method that sends the call and answers the result; on an
:class:`AsyncAtelierClient`, one that answers an awaitable. :data:`OPERATIONS` maps each OpenAPI operation id
to the method that calls it; a test checks it against the live schema, methods and paths included.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from .errors import AtelierError
from .models import (
    ApiKeyInfo,
    Artifact,
    BrandKit,
    Capabilities,
    DeliveryPage,
    Items,
    Job,
    JobPage,
    LayoutDesign,
    PlanPreview,
    Upload,
    Webhook,
    WebhookDelivery,
)
from .retry import IDEMPOTENT_METHODS
from .sse import EVENTS_PATH, EventStream

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")

FileInput = str | Path | bytes | IO[bytes]
"""A file to send: a path, its bytes, or an open binary file."""


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""The default of an update's fields: left out of the PATCH (``None`` clears a field that may be empty)."""

# OpenAPI operation id → the client method that calls it (every /v1 operation; a test holds it to the schema)
OPERATIONS: dict[str, str] = {
    "submit_job": "submit",
    "list_jobs": "jobs",
    "get_job": "job",
    "cancel_job": "cancel",
    "retry_job": "retry",
    "list_artifacts": "artifacts",
    "stream_events": "events",
    "artifact_content": "content",
    "asset_content": "asset_content",
    "download_bundle": "download_bundle",
    "upload": "upload",
    "list_keys": "keys",
    "create_key": "create_key",
    "revoke_key": "revoke_key",
    "delete_key": "delete_key",
    "capabilities": "capabilities",
    "list_webhooks": "webhooks",
    "create_webhook": "create_webhook",
    "get_webhook": "webhook",
    "update_webhook": "update_webhook",
    "delete_webhook": "delete_webhook",
    "rotate_secret": "rotate_webhook_secret",
    "list_deliveries": "deliveries",
    "get_delivery": "delivery",
    "redeliver": "redeliver",
    "send_test": "test_webhook",
    "list_brands": "brands",
    "create_brand": "create_brand",
    "get_brand": "brand",
    "update_brand": "update_brand",
    "delete_brand": "delete_brand",
    "upload_font": "upload_brand_font",
    "verify": "verify",
    "preview_plans": "preview_plans",
    "design_layout": "design_layout",
}


# ---------------------------------------------------------------- what a request is


@dataclass(frozen=True)
class FileSink:
    """Where a streamed body goes: ``<dest>.part`` while it arrives, renamed to ``dest`` once complete."""

    dest: Path

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    def open(self) -> IO[bytes]:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        return self.part.open("wb")  # a retry starts the file over

    def commit(self) -> Path:
        self.part.replace(self.dest)
        return self.dest

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request, as an operation builds it, and how its answer becomes the result."""

    parse: Callable[[httpx.Response], T]
    path: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    json: Any = None
    files: Mapping[str, tuple[str, bytes]] | None = None
    headers: Mapping[str, str] | None = None
    idempotent: bool = False  # retried after a connection error even though the method is not idempotent
    sink: FileSink | None = None  # stream the body to a file instead of reading it
    auth: bool = True  # False: no API key (signed asset URLs carry their own credential)
    timeout: httpx.Timeout | None = None  # None: the client's
    method: str = ""  # set from the endpoint
    url: str = ""


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    params = {k: v for k, v in (call.params or {}).items() if v is not None}
    request = http.build_request(call.method, call.url, params=params, json=call.json, files=call.files,
                                 headers=call.headers, timeout=call.timeout or httpx.USE_CLIENT_DEFAULT)
    if not call.auth:
        request.headers.pop("Authorization", None)
    return request


def finish(call: Call[T], response: httpx.Response) -> T:
    """The result of a read answer, or its problem raised."""
    if response.status_code >= 400:
        raise AtelierError.from_response(response)
    return call.parse(response)


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda r: cls.model_validate(r.json())


def _items(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda r: Items[cls].model_validate(r.json()).items  # type: ignore[valid-type]


def _content(r: httpx.Response) -> bytes:
    return r.content


def _nothing(_r: httpx.Response) -> None:
    return None


def _json_object(r: httpx.Response) -> dict[str, Any]:
    return dict(r.json())


def _file_part(file: FileInput, filename: str | None, default: str) -> tuple[str, bytes]:
    if isinstance(file, bytes):
        return filename or default, file
    if isinstance(file, str | Path):
        path = Path(file)
        return filename or path.name, path.read_bytes()
    name = getattr(file, "name", None)
    return filename or (Path(name).name if isinstance(name, str) else default), file.read()


def _job_request(spec: BaseModel | Mapping[str, Any], kind: str | None, external_id: str | None,
                 metadata: Mapping[str, str] | None) -> dict[str, Any]:
    if isinstance(spec, BaseModel):
        kind = kind or getattr(spec, "JOB_KIND", None)
        body_spec: Any = spec.model_dump(mode="json", exclude_none=True)
    else:
        body_spec = dict(spec)
    if kind not in ("campaign", "story"):
        raise ValueError("kind must be 'campaign' or 'story' when the spec is a plain mapping")
    body: dict[str, Any] = {"kind": kind, "spec": body_spec}
    if external_id is not None:
        body["external_id"] = external_id
    if metadata:
        body["metadata"] = dict(metadata)
    return body


def _given(**fields: Any) -> dict[str, Any]:
    """An update's body: the fields that were passed (``None`` included: it clears)."""
    return {k: v for k, v in fields.items() if v is not UNSET}


def _set(**fields: Any) -> dict[str, Any]:
    """A create's body: the fields that have a value (the server's defaults for the rest)."""
    return {k: v for k, v in fields.items() if v is not None}


# ---------------------------------------------------------------- endpoints: one definition, two clients


class SyncSender:
    """What :class:`AtelierClient` is: operations send at once and answer their result."""

    def _send(self, call: Call[T]) -> T:
        raise NotImplementedError


class AsyncSender:
    """What :class:`AsyncAtelierClient` is: operations answer an awaitable."""

    async def _send(self, call: Call[T]) -> T:
        raise NotImplementedError


class Endpoint(Generic[P, T]):
    """An operation: ``METHOD /path/{template}`` and the function that builds its :class:`Call`."""

    def __init__(self, method: str, path: str, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.method, self.path, self.build = method, path, build
        self.route = (method, path)
        self.__name__ = build.__name__
        self.__doc__ = build.__doc__
        self.__signature__ = inspect.signature(build)
        answer = str(self.__signature__.return_annotation)  # "Call[Job]": the methods answer the Job
        self._answer = answer[len("Call["):-1] if answer.startswith("Call[") else inspect.Signature.empty

    def __repr__(self) -> str:
        return f"<endpoint {self.__name__}: {self.method} {self.path}>"

    def __call__(self, client: Any, *args: Any, **kwargs: Any) -> Any:
        """``AtelierClient.job(client, job_id)``, as with any method read on the class."""
        return self.__get__(client)(*args, **kwargs)

    def prepare(self, call: Call[T]) -> Call[T]:
        url = self.path.format(**{k: quote(str(v), safe="") for k, v in call.path.items()})
        return replace(call, method=self.method, url=url,
                       idempotent=call.idempotent or self.method in IDEMPOTENT_METHODS)

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Endpoint[P, T]: ...

    @overload
    def __get__(self, obj: SyncSender, owner: type[Any] | None = None) -> Callable[P, T]: ...

    @overload
    def __get__(self, obj: AsyncSender, owner: type[Any] | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: Any, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self

        def operation(*args: Any, **kwargs: Any) -> Any:
            return obj._send(self.prepare(self.build(obj, *args, **kwargs)))

        operation.__name__ = operation.__qualname__ = self.__name__
        operation.__doc__ = self.__doc__
        answer = f"Awaitable[{self._answer}]" if isinstance(obj, AsyncSender) else self._answer
        operation.__signature__ = self.__signature__.replace(  # type: ignore[attr-defined]
            parameters=list(self.__signature__.parameters.values())[1:], return_annotation=answer)
        operation.route = self.route  # type: ignore[attr-defined]
        return operation


def endpoint(method: str, path: str) -> Callable[[Callable[Concatenate[Any, P], Call[T]]], Endpoint[P, T]]:
    """Make an :class:`Operations` method an operation of ``method path``."""
    return functools.partial(Endpoint, method, path)


def route(method: str, path: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Tag a method that each client writes itself (the event stream) with the operation it calls."""

    def tag(fn: Callable[P, T]) -> Callable[P, T]:
        fn.route = (method, path)  # type: ignore[attr-defined]
        return fn

    return tag


EVENTS_ROUTE = ("GET", EVENTS_PATH)


def events_call(job_id: str, stream: EventStream, timeout: httpx.Timeout | None = None) -> Call[None]:
    """One connection of a job's event stream, resuming where ``stream`` is (both clients read it themselves)."""
    return Call(_nothing, method="GET", url=EVENTS_PATH.format(job_id=quote(job_id, safe="")),
                headers=stream.headers(), idempotent=True, timeout=timeout)


class Operations:
    """The API's operations (see :data:`OPERATIONS`). Not used directly: see the two clients."""

    # ------------------------------------------------------------ jobs

    @endpoint("POST", "/v1/jobs")
    def submit(self, spec: BaseModel | Mapping[str, Any], *, kind: str | None = None,
               idempotency_key: str | None = None, external_id: str | None = None,
               metadata: Mapping[str, str] | None = None) -> Call[Job]:
        """Submit a campaign or story. ``kind`` comes from a spec model's ``JOB_KIND`` (the server's
        ``atelier_contracts.specs.CampaignSpec`` / ``StorySpec``); a plain mapping needs it. ``external_id`` and
        ``metadata`` (string labels) are echoed in the job and its webhooks. With an ``idempotency_key`` the
        same key and spec give the same job, so the request is also retried after a connection error."""
        return Call(_model(Job), json=_job_request(spec, kind, external_id, metadata),
                    headers={"Idempotency-Key": idempotency_key} if idempotency_key else None,
                    idempotent=idempotency_key is not None)

    @endpoint("GET", "/v1/jobs")
    def jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 20,
             cursor: str | None = None, external_id: str | None = None) -> Call[JobPage]:
        """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""
        return Call(_model(JobPage), params={"status": status, "kind": kind, "limit": limit, "cursor": cursor,
                                             "external_id": external_id})

    @endpoint("GET", "/v1/jobs/{job_id}")
    def job(self, job_id: str) -> Call[Job]:
        """Read a job, its stages and failed items."""
        return Call(_model(Job), path={"job_id": job_id})

    @endpoint("POST", "/v1/jobs/{job_id}/cancel")
    def cancel(self, job_id: str) -> Call[Job]:
        """Cancel a job: no further stage starts; running GPU work stops at its next step."""
        return Call(_model(Job), path={"job_id": job_id})

    @endpoint("POST", "/v1/jobs/{job_id}/retry")
    def retry(self, job_id: str) -> Call[Job]:
        """Retry a failed job from its failed stage, or only the failed items of a partial one."""
        return Call(_model(Job), path={"job_id": job_id})

    @endpoint("GET", "/v1/jobs/{job_id}/artifacts")
    def artifacts(self, job_id: str, *, kind: str | None = None) -> Call[list[Artifact]]:
        """The job's artifacts (each with an expiring ``download_url`` that needs no API key)."""
        return Call(_items(Artifact), path={"job_id": job_id}, params={"kind": kind})

    @endpoint("GET", "/v1/artifacts/{artifact_id}/content")
    def content(self, artifact_id: str) -> Call[bytes]:
        """An artifact's bytes."""
        return Call(_content, path={"artifact_id": artifact_id})

    @endpoint("GET", "/v1/assets/{artifact_id}")
    def asset_content(self, artifact_id: str, *, expires: int, signature: str) -> Call[bytes]:
        """An artifact's bytes through its signed URL's ``expires`` and ``signature`` (sent without the API key)."""
        return Call(_content, path={"artifact_id": artifact_id},
                    params={"expires": expires, "signature": signature}, auth=False)

    @endpoint("GET", "/v1/jobs/{job_id}/bundle")
    def download_bundle(self, job_id: str, dest: str | Path) -> Call[Path]:
        """Stream the job's bundle (zip: assets, manifest.json, manifest.csv) to ``dest`` (a file, or a folder
        that gets ``<job_id>.zip``); answers the file's path."""
        target = Path(dest)
        if target.is_dir() or str(dest).endswith("/"):
            target = target / f"{job_id}.zip"
        sink = FileSink(target)
        return Call(lambda _r: sink.commit(), path={"job_id": job_id}, sink=sink)

    @endpoint("POST", "/v1/uploads")
    def upload(self, file: FileInput, *, filename: str | None = None) -> Call[Upload]:
        """Upload a product image or logo (PNG, JPEG, WebP); use the id in a spec."""
        return Call(_model(Upload), files={"file": _file_part(file, filename, "upload.png")})

    @endpoint("POST", "/v1/plans:preview")
    def preview_plans(self, spec: BaseModel | Mapping[str, Any], *, kind: str | None = None,
                      external_id: str | None = None, metadata: Mapping[str, str] | None = None) -> Call[PlanPreview]:
        """What the planner would plan for this spec (prompts, layouts, story), without creating a job."""
        return Call(_model(PlanPreview), json=_job_request(spec, kind, external_id, metadata))

    @endpoint("POST", "/v1/layouts:design")
    def design_layout(self, prompt: str, *, width: int = 1024, height: int = 1024,
                      points: Sequence[Mapping[str, Any]] | None = None, boxes: Sequence[Mapping[str, Any]] | None = None,
                      seed: int | None = None) -> Call[LayoutDesign]:
        """The layout designer: captioned boxes for ``prompt`` at ``width`` x ``height``, validated and repaired.
        ``points``: ``{"x", "y", "caption"?}`` centres for the prompt's entities; ``boxes``: ``{"bbox", "caption",
        "role"}`` boxes to keep. The answer's boxes can become a campaign's ``spec.layout``."""
        body: dict[str, Any] = {"prompt": prompt, "width": width, "height": height}
        if points:
            body["points"] = [dict(p) for p in points]
        if boxes:
            body["boxes"] = [dict(b) for b in boxes]
        if seed is not None:
            body["seed"] = seed
        return Call(_model(LayoutDesign), json=body)

    @endpoint("POST", "/v1/verify")
    def verify(self, file: FileInput, *, filename: str | None = None) -> Call[dict[str, Any]]:
        """Is this image ours: the watermark decision, its C2PA manifest, the job it came from (yours only)."""
        return Call(_json_object, files={"file": _file_part(file, filename, "image.png")})

    @endpoint("GET", "/v1/capabilities")
    def capabilities(self) -> Call[Capabilities]:
        """What this deployment plans and renders: story languages, cultures, placements, size limits."""
        return Call(_model(Capabilities))

    # ------------------------------------------------------------ API keys

    @endpoint("POST", "/v1/keys")
    def create_key(self, name: str, *, role: Literal["admin", "member"] = "member") -> Call[ApiKeyInfo]:
        """Issue a new key of this tenant (this client's key must be an admin key); ``.key`` holds it, shown this
        once: store it now. ``role="admin"`` makes a key that may manage keys too."""
        return Call(_model(ApiKeyInfo), json={"name": name, "role": role})

    @endpoint("GET", "/v1/keys")
    def keys(self) -> Call[list[ApiKeyInfo]]:
        """The tenant's keys, revoked ones included (no secrets); needs an admin key."""
        return Call(_items(ApiKeyInfo))

    @endpoint("POST", "/v1/keys/{key_id}/revoke")
    def revoke_key(self, key_id: str) -> Call[ApiKeyInfo]:
        """Revoke a key: refused from the next request on; its dashboard sessions end. Another key needs an admin
        key; any key may revoke itself; the tenant's last active admin key is a 409."""
        return Call(_model(ApiKeyInfo), path={"key_id": key_id})

    @endpoint("DELETE", "/v1/keys/{key_id}")
    def delete_key(self, key_id: str) -> Call[ApiKeyInfo]:
        """Revoke a key (the DELETE spelling of :meth:`revoke_key`)."""
        return Call(_model(ApiKeyInfo), path={"key_id": key_id})

    # ------------------------------------------------------------ brand kits

    @endpoint("POST", "/v1/brands")
    def create_brand(self, name: str, palette: Sequence[str], *, font_family: str | None = None,
                     logo: str | None = None, tone: str | None = None,
                     banned_words: Sequence[str] | None = None) -> Call[BrandKit]:
        """A brand kit: palette (``#RRGGBB``), font family, logo upload id, tone, banned words."""
        return Call(_model(BrandKit), json=_set(
            name=name, palette=list(palette), font_family=font_family, logo=logo, tone=tone,
            banned_words=None if banned_words is None else list(banned_words)))

    @endpoint("GET", "/v1/brands")
    def brands(self) -> Call[list[BrandKit]]:
        return Call(_items(BrandKit))

    @endpoint("GET", "/v1/brands/{brand_id}")
    def brand(self, brand_id: str) -> Call[BrandKit]:
        return Call(_model(BrandKit), path={"brand_id": brand_id})

    @endpoint("PATCH", "/v1/brands/{brand_id}")
    def update_brand(self, brand_id: str, *, name: str = UNSET, palette: Sequence[str] = UNSET,
                     font_family: str | None = UNSET, logo: str | None = UNSET, tone: str | None = UNSET,
                     banned_words: Sequence[str] = UNSET) -> Call[BrandKit]:
        """Change the fields passed (``None`` clears font family, logo or tone)."""
        return Call(_model(BrandKit), path={"brand_id": brand_id}, json=_given(
            name=name, palette=palette if palette is UNSET else list(palette), font_family=font_family, logo=logo,
            tone=tone, banned_words=banned_words if banned_words is UNSET else list(banned_words)))

    @endpoint("DELETE", "/v1/brands/{brand_id}")
    def delete_brand(self, brand_id: str) -> Call[None]:
        """Delete the kit; jobs that used it keep their copy."""
        return Call(_nothing, path={"brand_id": brand_id})

    @endpoint("POST", "/v1/brands/{brand_id}/font")
    def upload_brand_font(self, brand_id: str, file: FileInput, *, filename: str | None = None) -> Call[BrandKit]:
        """Give the kit a font (.ttf or .otf); its family becomes the kit's ``font_family``."""
        return Call(_model(BrandKit), path={"brand_id": brand_id}, files={"file": _file_part(file, filename, "font.ttf")})

    # ------------------------------------------------------------ webhooks

    @endpoint("POST", "/v1/webhooks")
    def create_webhook(self, url: str, *, events: Sequence[str] | None = None, description: str | None = None,
                       enabled: bool | None = None, secret: str | None = None,
                       format: str | None = None) -> Call[Webhook]:
        """Register an endpoint (every event type unless ``events`` says); ``.secret`` (``whsec_...``) is in this
        answer only. ``format``: ``standard`` (Standard Webhooks JSON) or ``slack``."""
        return Call(_model(Webhook), json=_set(url=url, events=None if events is None else list(events),
                                               description=description, enabled=enabled, secret=secret,
                                               format=format))

    @endpoint("GET", "/v1/webhooks")
    def webhooks(self) -> Call[list[Webhook]]:
        return Call(_items(Webhook))

    @endpoint("GET", "/v1/webhooks/{webhook_id}")
    def webhook(self, webhook_id: str) -> Call[Webhook]:
        return Call(_model(Webhook), path={"webhook_id": webhook_id})

    @endpoint("PATCH", "/v1/webhooks/{webhook_id}")
    def update_webhook(self, webhook_id: str, *, url: str = UNSET, events: Sequence[str] = UNSET,
                       description: str | None = UNSET, enabled: bool = UNSET, format: str = UNSET) -> Call[Webhook]:
        """Change the fields passed (``description=None`` clears it)."""
        return Call(_model(Webhook), path={"webhook_id": webhook_id}, json=_given(
            url=url, events=events if events is UNSET else list(events), description=description, enabled=enabled,
            format=format))

    @endpoint("DELETE", "/v1/webhooks/{webhook_id}")
    def delete_webhook(self, webhook_id: str) -> Call[None]:
        """Delete an endpoint and its delivery log."""
        return Call(_nothing, path={"webhook_id": webhook_id})

    @endpoint("POST", "/v1/webhooks/{webhook_id}/rotate-secret")
    def rotate_webhook_secret(self, webhook_id: str, *, grace_s: int | None = None) -> Call[Webhook]:
        """A new signing secret (in ``.secret``); the old one keeps signing for ``grace_s`` seconds (server
        default 24 h; 0 retires it now)."""
        return Call(_model(Webhook), path={"webhook_id": webhook_id}, params={"grace_s": grace_s})

    @endpoint("GET", "/v1/webhooks/{webhook_id}/deliveries")
    def deliveries(self, webhook_id: str, *, status: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> Call[DeliveryPage]:
        """A page of the endpoint's delivery log, newest first."""
        return Call(_model(DeliveryPage), path={"webhook_id": webhook_id},
                    params={"status": status, "limit": limit, "cursor": cursor})

    @endpoint("GET", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}")
    def delivery(self, webhook_id: str, delivery_id: str) -> Call[WebhookDelivery]:
        """One delivery with its attempts."""
        return Call(_model(WebhookDelivery), path={"webhook_id": webhook_id, "delivery_id": delivery_id})

    @endpoint("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")
    def redeliver(self, webhook_id: str, delivery_id: str) -> Call[WebhookDelivery]:
        """Send a delivery again (same ``webhook-id``)."""
        return Call(_model(WebhookDelivery), path={"webhook_id": webhook_id, "delivery_id": delivery_id})

    @endpoint("POST", "/v1/webhooks/{webhook_id}/test")
    def test_webhook(self, webhook_id: str) -> Call[WebhookDelivery]:
        """Queue a signed ``webhook.test`` event to the endpoint; its delivery shows how it went."""
        return Call(_model(WebhookDelivery), path={"webhook_id": webhook_id})

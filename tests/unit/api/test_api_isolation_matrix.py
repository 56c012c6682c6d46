"""Tenant isolation matrix, generated from the app's route table.

For every route whose path takes a parameter (the JSON API and the dashboard alike), the object is
created as tenant A, then tenant B calls the route with A's id. B must get 404 — the same answer, byte
for byte, as for an id that does not exist — and nothing may change: database rows, stored objects,
messages sent to the broker, cancel flags. A then calls the same route and must not get 404, so every
row of the matrix tests a real object.

Routes added later are covered on their own: a path parameter with no factory in ``FACTORIES`` fails
the test that names the route. Add a factory there (create the object as the given tenant, return the
path parameters it fills) and, for a JSON body with required fields, a valid body in ``BODIES``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from api_testkit import TenantCtx, add_artifact, add_stages, campaign_spec, emit_events, png_bytes
from atelier_api import create_app
from atelier_control.auth import create_key, create_tenant
from atelier_control.db import session_scope
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, select, table, text
from sqlalchemy.orm import Session, sessionmaker

DASHBOARD = "/dashboard"
# path-parameter routes that hold no tenant data, and why
EXEMPT = {"/dashboard/static/{path}": "packaged CSS/JS files, the same for everyone",
          "/v1/assets/{artifact_id}": "a signed URL, not a tenant, grants access (test_asset_urls.py: a wrong "
                                      "signature is the same 403 for real and unknown ids)"}
# routes where the owner, too, may get 404 for the object the factory made, and why
OWNER_MAY_404: dict[tuple[str, str], str] = {}
if importlib.util.find_spec("atelier_api.bundles") is None:  # the dashboard links to bundles before they exist
    OWNER_MAY_404[("GET", "/dashboard/jobs/{job_id}/bundle")] = "this build has no bundles (atelier_api.bundles)"
# columns that may change on any authenticated request (none today)
VOLATILE_COLUMNS: set[tuple[str, str]] = set()
_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")


# ---------------------------------------------------------------- the route table


@dataclass(frozen=True)
class RouteCase:
    method: str
    path: str
    params: tuple[str, ...]
    has_body: bool
    mount: bool = False
    multipart: bool = False
    files: tuple[str, ...] = ()
    form_fields: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _route_contexts(app: Any) -> Iterator[Any]:
    try:  # FastAPI >= 0.16x keeps included routers lazily; this walks the effective routes
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI: the flat list is the table
        yield from app.routes
        return
    yield from iter_route_contexts(app.routes)


def _multipart_fields(app: Any, method: str, path: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(binary fields, other required fields) of a multipart body, from the app's own OpenAPI document."""
    operation = app.openapi().get("paths", {}).get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" not in content:
        return None
    schema = content["multipart/form-data"]["schema"]
    if "$ref" in schema:
        schema = app.openapi()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    props = schema.get("properties", {})

    def binary(p: dict[str, Any]) -> bool:
        options = [p, *p.get("anyOf", [])]
        return any(o.get("format") == "binary" or "contentMediaType" in o for o in options)

    files = tuple(n for n, p in props.items() if binary(p))
    others = tuple(n for n in schema.get("required", []) if n not in files)
    return files, others


def route_table(app: Any) -> list[RouteCase]:
    cases = []
    for route in _route_contexts(app):
        path = route.path
        if path is None:
            continue
        methods = sorted((route.methods or set()) - {"HEAD", "OPTIONS"})
        is_mount = not methods and hasattr(route, "app")
        if is_mount:
            path = path.rstrip("/") + "/{path}"
            methods = ["GET"]
        params = tuple(_PARAM.findall(path))
        body = getattr(route, "body_field", None) is not None
        for method in methods:
            form = _multipart_fields(app, method, path) if body else None
            cases.append(RouteCase(method, path, params, body, is_mount, form is not None, *(form or ((), ()))))
    return cases


def _table_app() -> Any:
    import tempfile

    return create_app(Settings(home=Path(tempfile.mkdtemp(prefix="atelier-routes-"))))


ROUTES = route_table(_table_app())
PARAM_ROUTES = [c for c in ROUTES if c.params]
PLAIN_GETS = [c for c in ROUTES if not c.params and c.method == "GET"]


# ---------------------------------------------------------------- the world each case runs in


@dataclass
class World:
    client_a: TestClient
    client_b: TestClient
    a: TenantCtx
    b: TenantCtx
    factory: sessionmaker[Session]
    engine: Engine
    store: LocalStore
    celery: Any
    runtime: MemoryRuntime
    made: dict[str, str] = field(default_factory=dict)
    csrf: dict[str, str] = field(default_factory=dict)


def make_job(w: World, owner: TenantCtx) -> dict[str, str]:
    """A campaign job with stage rows, a finished event log, a rendered artifact and a failed stage."""
    r = w.client_a.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec()}, headers=owner.headers)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    add_stages(w.factory, job_id, [("plan.ad_prompts", "", 0, "succeeded"), ("gpu.background", "1080x1080-0", 2,
                                                                            "failed")])
    add_artifact(w.factory, w.store, tenant_id=owner.id, job_id=job_id, kind="render", name="ad-1080x1080",
                 data=png_bytes((8, 8)), content_type="image/png")
    emit_events(w.factory, owner.id, job_id, ["job.started", "job.succeeded"])
    return {"job_id": job_id}


def make_artifact(w: World, owner: TenantCtx) -> dict[str, str]:
    """An uploaded image: an artifact row and a stored object."""
    r = w.client_a.post("/v1/uploads", files={"file": ("p.png", png_bytes((12, 9)), "image/png")},
                        headers=owner.headers)
    assert r.status_code == 201, r.text
    return {"artifact_id": r.json()["id"]}


def make_webhook(w: World, owner: TenantCtx) -> dict[str, str]:
    """A webhook endpoint, written straight to the database: the SSRF guard resolves names."""
    from atelier_control import models

    hook = models.Webhook(tenant_id=owner.id, url="https://hooks.example.com/atelier", events=["job.succeeded"],
                          secret="whsec_" + uuid.uuid4().hex, enabled=True)
    with session_scope(w.factory) as s:
        s.add(hook)
        s.flush()
        return {"webhook_id": hook.id}


def make_delivery(w: World, owner: TenantCtx) -> dict[str, str]:
    """A delivery of an event to a webhook of the owner's."""
    from atelier_control import models

    ids = make_webhook(w, owner)
    job = make_job(w, owner)["job_id"]
    with session_scope(w.factory) as s:
        event = s.scalar(select(models.Event).where(models.Event.job_id == job).order_by(models.Event.id.desc()))
        assert event is not None
        delivery = models.WebhookDelivery(tenant_id=owner.id, webhook_id=ids["webhook_id"], event_id=event.id,
                                          event_type=event.type, message_id=f"msg_{uuid.uuid4().hex}",
                                          payload={"type": event.type, "data": {"job_id": job}},
                                          status="succeeded", attempts=1)
        s.add(delivery)
        s.flush()
        return {**ids, "delivery_id": delivery.id}


def make_brand(w: World, owner: TenantCtx) -> dict[str, str]:
    """A brand kit ."""
    from atelier_control import models

    brand = models.BrandKit(tenant_id=owner.id, name=f"brand-{uuid.uuid4().hex[:6]}", palette=["#112233"])
    with session_scope(w.factory) as s:
        s.add(brand)
        s.flush()
        return {"brand_id": brand.id}


def make_key(w: World, owner: TenantCtx) -> dict[str, str]:
    """A second API key of the owner's (its client keeps using the first)."""
    with session_scope(w.factory) as s:
        row, _key = create_key(s, owner.id, f"key-{uuid.uuid4().hex[:6]}")
        return {"key_id": row.id}


# path parameter -> how to create, as a given tenant, the object it names (returns every parameter it fills)
FACTORIES: dict[str, Callable[[World, TenantCtx], dict[str, str]]] = {
    "job_id": make_job,
    "artifact_id": make_artifact,
    "webhook_id": make_webhook,
    "delivery_id": make_delivery,
    "brand_id": make_brand,
    "key_id": make_key,
}
# (method, path) -> a valid JSON body, for routes whose body has required fields
BODIES: dict[tuple[str, str], dict[str, Any]] = {}


# ---------------------------------------------------------------- snapshots: "nothing changed"


def db_snapshot(engine: Engine) -> dict[str, str]:
    """Every table's rows, digested (tables found in the database, not only in the models)."""
    out = {}
    with engine.connect() as conn:
        for name in sorted(inspect(conn).get_table_names()):
            columns = [c["name"] for c in inspect(conn).get_columns(name)
                       if (name, c["name"]) not in VOLATILE_COLUMNS]
            rows = conn.execute(select(*[text(f'"{c}"') for c in columns]).select_from(table(name))).all()
            digest = hashlib.sha256(json.dumps(sorted(repr(tuple(r)) for r in rows)).encode()).hexdigest()
            out[name] = f"{len(rows)} rows {digest[:16]}"
    return out


def store_snapshot(store: LocalStore) -> dict[str, str]:
    return {key: hashlib.sha256(store.get(key)).hexdigest() for key in sorted(store.list(""))}


def world_snapshot(w: World) -> dict[str, Any]:
    return {
        "database": db_snapshot(w.engine),
        "storage": store_snapshot(w.store),
        "broker": [(s.name, s.args) for s in w.celery.sent],
        "canceled": sorted(j for j in w.made.values() if w.runtime.is_canceled(j)),
    }


# ---------------------------------------------------------------- calling a route as someone


def dashboard_sign_in(client: TestClient, tenant: TenantCtx) -> str:
    """Sign in through the real form; returns the session's CSRF token."""
    page = client.get(f"{DASHBOARD}/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "the sign-in form lost its csrf_token field"
    r = client.post(f"{DASHBOARD}/login", data={"api_key": tenant.key, "csrf_token": token.group(1),
                                                "next": f"{DASHBOARD}/jobs"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get(f"{DASHBOARD}/jobs")
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert page.status_code == 200 and meta, "signed-in pages must carry the csrf-token meta tag"
    return meta.group(1)


def call(w: World, who: str, case: RouteCase, values: dict[str, str]) -> Any:
    client, tenant = (w.client_a, w.a) if who == "a" else (w.client_b, w.b)
    url = case.path
    for name, value in values.items():
        url = url.replace("{" + name + "}", value)
    kwargs: dict[str, Any] = {"follow_redirects": False}
    if case.path.startswith(DASHBOARD + "/"):
        if who not in w.csrf:  # signed in once per tenant, on first use (a session cookie in its client)
            w.csrf[who] = dashboard_sign_in(client, tenant)
        if case.method != "GET":
            kwargs["headers"] = {"X-CSRF-Token": w.csrf[who]}
            kwargs["data"] = {"csrf_token": w.csrf[who]}
    else:
        kwargs["headers"] = dict(tenant.headers)
        if case.has_body and case.multipart:
            # a file in every binary field, a word in every other required one: enough to reach the handler
            kwargs["files"] = dict.fromkeys(case.files, ("x.bin", b"\x00" * 16, "application/octet-stream"))
            kwargs["data"] = dict.fromkeys(case.form_fields, "x")
        elif case.has_body:
            kwargs["json"] = BODIES.get((case.method, case.path), {})
    return client.request(case.method, url, **kwargs)


@pytest.fixture
def world(app: Any, engine: Engine, factory: sessionmaker[Session], store: LocalStore, celery: Any,
          runtime: MemoryRuntime) -> Iterator[World]:
    with session_scope(factory) as s:
        tenant_a, key_a = create_tenant(s, "tenant-a")
        tenant_b, key_b = create_tenant(s, "tenant-b")
        ids = (tenant_a.id, tenant_b.id)
    a = TenantCtx(ids[0], key_a, {"Authorization": f"Bearer {key_a}"})
    b = TenantCtx(ids[1], key_b, {"Authorization": f"Bearer {key_b}"})
    with TestClient(app) as client_a, TestClient(app) as client_b:
        yield World(client_a, client_b, a, b, factory, engine, store, celery, runtime)


def fill(w: World, case: RouteCase, owner: TenantCtx) -> dict[str, str]:
    values: dict[str, str] = {}
    for param in case.params:
        if param in values:
            continue
        make = FACTORIES.get(param)
        assert make is not None, (
            f"{case.id} takes {{{param}}} but tests/unit/api/test_api_isolation_matrix.py has no factory for it: "
            f"add FACTORIES[{param!r}] (create the object as a tenant, return its id) so tenant isolation is "
            f"checked on this route"
        )
        values.update(make(w, owner))
    return values


def _forged(value: str) -> str:
    """An id of the same shape that names nothing."""
    prefix, _, rest = value.rpartition("_")
    return f"{prefix}_{uuid.uuid4().hex[:len(rest)]}" if prefix else uuid.uuid4().hex[:len(value)]


# ---------------------------------------------------------------- the matrix


def test_the_route_table_is_what_the_matrix_walks() -> None:
    paths = {c.path for c in PARAM_ROUTES}
    # the spine's routes must be found (so a change in FastAPI's route table cannot empty the matrix)
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/artifacts", "/v1/artifacts/{artifact_id}/content"} <= paths
    assert len(PARAM_ROUTES) >= 6
    for case in PARAM_ROUTES:
        if case.path in EXEMPT:
            continue
        missing = [p for p in case.params if p not in FACTORIES]
        assert not missing, f"{case.id}: no factory for {missing} in FACTORIES"


@pytest.mark.parametrize("case", PARAM_ROUTES, ids=lambda c: c.id)
def test_other_tenants_objects_are_404_and_untouched(world: World, case: RouteCase) -> None:
    if case.path in EXEMPT:
        pytest.skip(EXEMPT[case.path])
    values = fill(world, case, world.a)
    world.made = {k: v for k, v in values.items() if k == "job_id"}
    if case.path.startswith(DASHBOARD + "/") and "b" not in world.csrf:  # signing in records a session row
        world.csrf["b"] = dashboard_sign_in(world.client_b, world.b)
    before = world_snapshot(world)

    r = call(world, "b", case, values)
    assert r.status_code == 404, f"{case.id}: tenant B got {r.status_code} on tenant A's object: {r.text[:300]}"
    assert world_snapshot(world) == before, f"{case.id}: tenant B's call changed something"
    for value in values.values():
        assert value not in r.headers.get("location", "")

    # the answer must not tell "exists, not yours" from "does not exist"
    forged = {k: _forged(v) for k, v in values.items()}
    nothing = call(world, "b", case, forged)
    assert nothing.status_code == 404
    assert r.headers.get("content-type") == nothing.headers.get("content-type")
    masked = r.text
    for k, v in values.items():
        masked = masked.replace(v, forged[k])
    assert masked == nothing.text, f"{case.id}: the 404 for A's object differs from the 404 for no object"
    assert world_snapshot(world) == before

    # the owner reaches the object through the same route, so this row tested a real object
    owner = call(world, "a", case, values)
    if (case.method, case.path) not in OWNER_MAY_404:
        assert owner.status_code != 404, f"{case.id}: the owner got 404 too; the factory made the wrong object " \
                                         f"({owner.text[:200]})"
    assert owner.status_code < 500, owner.text


@pytest.mark.parametrize("case", PLAIN_GETS, ids=lambda c: c.id)
def test_collections_never_show_another_tenants_ids(world: World, case: RouteCase) -> None:
    made = [v for make in (make_job, make_artifact) for v in make(world, world.a).values()]
    r = call(world, "b", case, {})
    assert r.status_code < 500
    body = r.text
    leaked = [v for v in made if v in body]
    assert not leaked, f"{case.id} shows tenant A's {leaked} to tenant B"

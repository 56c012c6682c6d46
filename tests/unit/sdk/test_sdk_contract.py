"""The SDK is held to the live OpenAPI document: operation ids, one method per /v1 operation (method, path and
parameters), one model per response component with every property, and a dependency list without the server."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from atelier_sdk import OPERATIONS, SCHEMA_MODELS, AsyncAtelierClient, AtelierClient
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from .conftest import run_async

SDK_PYPROJECT = Path(__file__).parents[3] / "sdk" / "pyproject.toml"

# Every operation id of the API, pinned: a rename (or a new route) is an API change and shows up here.
OPERATION_IDS = {
    "healthz", "readyz", "metrics",
    "submit_job", "list_jobs", "get_job", "cancel_job", "retry_job", "list_artifacts", "stream_events",
    "artifact_content", "asset_content", "upload", "download_bundle", "capabilities", "verify", "preview_plans",
    "design_layout",
    "list_keys", "create_key", "revoke_key", "delete_key",
    "list_webhooks", "create_webhook", "get_webhook", "update_webhook", "delete_webhook", "rotate_secret",
    "list_deliveries", "get_delivery", "redeliver", "send_test",
    "list_brands", "create_brand", "get_brand", "update_brand", "delete_brand", "upload_font",
}

# parameters an SDK method does not take, and why
NOT_TAKEN = {
    ("stream_events", "after"): "Last-Event-ID (last_event_id) says the same and wins over it",
    ("artifact_content", "If-None-Match"): "conditional and ranged reads are for caches and players, not the SDK",
    ("artifact_content", "Range"): "as above",
    ("artifact_content", "If-Range"): "as above",
    ("asset_content", "If-None-Match"): "as above",
    ("asset_content", "Range"): "as above",
    ("asset_content", "If-Range"): "as above",
}


@pytest.fixture
def schema(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def v1_operations(schema: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operation id → (METHOD, path, operation) for every /v1 operation."""
    return {op["operationId"]: (method.upper(), path, op)
            for path, item in schema["paths"].items() if path.startswith("/v1/")
            for method, op in item.items()}


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


# ---------------------------------------------------------------- operation ids


def test_operation_ids_are_the_route_function_names(app: Any, schema: dict[str, Any]) -> None:
    ids = [op["operationId"] for item in schema["paths"].values() for op in item.values()]
    duplicates = [name for name, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"operation ids must be unique: rename one of the route functions {duplicates}"
    assert set(ids) == OPERATION_IDS, (
        f"operation ids changed (an API change): new {set(ids) - OPERATION_IDS}, gone {OPERATION_IDS - set(ids)}")
    functions = {ctx.original_route.endpoint.__name__ for ctx in iter_route_contexts(app.routes)
                 if isinstance(ctx.original_route, APIRoute)}
    assert set(ids) <= functions, f"operation ids that are not a route function's name: {set(ids) - functions}"


# ---------------------------------------------------------------- one SDK method per operation


def test_every_v1_operation_has_an_sdk_method_on_both_clients(schema: dict[str, Any]) -> None:
    ops = v1_operations(schema)
    assert set(OPERATIONS) == set(ops), (
        f"operations without an SDK method: {set(ops) - set(OPERATIONS)}; mapped but gone: {set(OPERATIONS) - set(ops)}")
    assert len(set(OPERATIONS.values())) == len(OPERATIONS), "one method per operation"
    sync, asynchronous = AtelierClient("http://x", api_key="k"), AsyncAtelierClient("http://x", api_key="k")
    for op_id, (method, path, _) in ops.items():
        for client in (sync, asynchronous):
            bound = getattr(client, OPERATIONS[op_id])
            assert getattr(bound, "route", None) == (method, path), (op_id, type(client).__name__)
    assert inspect.isasyncgenfunction(asynchronous.events) and inspect.isgeneratorfunction(sync.events)
    sync.close()


def test_sdk_methods_take_every_parameter_of_their_operation(schema: dict[str, Any]) -> None:
    client = AtelierClient("http://x", api_key="k")
    missing = []
    for op_id, (_method, _path, op) in v1_operations(schema).items():
        params = set(inspect.signature(getattr(client, OPERATIONS[op_id])).parameters)
        wanted = [(p["name"], _snake(p["name"])) for p in op.get("parameters", [])]
        body = op.get("requestBody", {}).get("content", {})
        for content_type, media in body.items():
            if content_type == "application/json":
                wanted += [(name, name) for name in _resolve(schema, media["schema"]).get("properties", {})]
        for name, python_name in wanted:
            if python_name not in params and (op_id, name) not in NOT_TAKEN:
                missing.append(f"{op_id}: {name}")
    client.close()
    assert not missing, f"SDK methods lack these parameters of their operations: {missing}"


def test_async_operations_answer_awaitables_with_the_same_call() -> None:
    sync, asynchronous = AtelierClient("http://x", api_key="k"), AsyncAtelierClient("http://x", api_key="k")
    sent: list[Any] = []
    sync._send = sent.append  # type: ignore[method-assign]
    sync.update_webhook("wh_1", description=None, enabled=False)

    async def record(call: Any) -> str:
        sent.append(call)
        return "answer"

    asynchronous._send = record  # type: ignore[method-assign]
    pending = asynchronous.update_webhook("wh_1", description=None, enabled=False)
    assert inspect.isawaitable(pending)
    assert run_async(pending) == "answer"
    a, b = sent
    assert (a.method, a.url, a.json) == (b.method, b.url, b.json) == (
        "PATCH", "/v1/webhooks/wh_1", {"description": None, "enabled": False})  # None clears; unset is left out
    sync.close()


# ---------------------------------------------------------------- models


def _reachable(schema: dict[str, Any], roots: list[Any]) -> set[str]:
    found: set[str] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    todo.append(schema["components"]["schemas"][name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def test_every_response_component_has_an_sdk_model(schema: dict[str, Any]) -> None:
    roots = [response for _m, _p, op in v1_operations(schema).values()
             for code, response in op.get("responses", {}).items() if code.startswith("2")]
    answered = _reachable(schema, roots)
    assert answered, "the /v1 answers reference components"
    assert not answered - set(SCHEMA_MODELS), f"API answers without an SDK model: {answered - set(SCHEMA_MODELS)}"


def test_sdk_models_have_every_property_of_their_component(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    lagging: dict[str, list[str]] = {}
    for name, model in SCHEMA_MODELS.items():
        assert name in components, f"SDK model for {name}, which the API no longer has"
        component = components[name]
        fields = {f.alias or n for n, f in model.model_fields.items()}
        absent = sorted(set(component.get("properties", {})) - fields)
        if absent:
            lagging[f"{name} ({model.__name__})"] = absent
        # the SDK never insists on a field the API may leave out
        required_here = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
        assert required_here <= set(component.get("required", [])), (name, required_here - set(component["required"]))
    assert not lagging, f"the SDK's models lag the API: {lagging}"


# ---------------------------------------------------------------- installing the SDK brings no server


SERVER_PACKAGES = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg-binary", "celery",
                   "kombu", "redis", "torch", "diffusers", "transformers", "minio", "boto3"}


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_sdk_depends_on_httpx_and_pydantic_only() -> None:
    project = tomllib.loads(SDK_PYPROJECT.read_text())["project"]
    deps = {_requirement_name(d) for d in project["dependencies"]}
    deps |= {_requirement_name(d) for extra in project.get("optional-dependencies", {}).values() for d in extra}
    assert not {d for d in deps if d.startswith("atelier")}, "no atelier-* package: they are the server"
    assert not deps & SERVER_PACKAGES, deps & SERVER_PACKAGES
    assert deps == {"httpx", "pydantic"}


def test_importing_the_sdk_loads_no_server_module() -> None:
    code = ("import sys, atelier_sdk, atelier_sdk.client, atelier_sdk.operations\n"
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert "httpx" in loaded and "pydantic" in loaded
    assert not {m.replace("-", "_") for m in SERVER_PACKAGES} & loaded
    assert {m for m in loaded if m.startswith("atelier")} == {"atelier_sdk"}

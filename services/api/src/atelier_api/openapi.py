"""The OpenAPI document: problem+json for every error, and the job request as a union discriminated by `kind`."""

from __future__ import annotations

from typing import Any

from atelier_contracts.specs import SPEC_MODELS
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .problems import PROBLEM_JSON
from .schemas import FieldError, Problem

REF = "#/components/schemas/{model}"


def _add_schema(components: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = _add_schema(components, Problem)
    _add_schema(components, FieldError)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if "requestBody" in operation:  # a body that is not parseable JSON / multipart at all is a 400
                operation.setdefault("responses", {}).setdefault(
                    "400", {"description": "Malformed body: not parseable as its content type"})
            for code, response in operation.get("responses", {}).items():
                if code[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_JSON: {"schema": problem}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    # JobRequest.spec is a free dict in the contract (validated per kind, after a brand kit filled it in): the
    # document says what each kind takes, as a union discriminated by `kind` that code generators turn into types
    job_request = components.pop("JobRequest", None)
    if job_request is not None:
        union = _job_request_union(components, job_request)
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                if body.get("schema") == {"$ref": REF.format(model="JobRequest")}:
                    body["schema"] = union
    return schema


def _job_request_union(components: dict[str, Any], job_request: dict[str, Any]) -> dict[str, Any]:
    """``CampaignJobRequest | StoryJobRequest``, one per kind (``kind`` a constant, ``spec`` that kind's spec, the
    other JobRequest fields as they are), with an OpenAPI discriminator on ``kind``."""
    shared = {k: v for k, v in job_request.get("properties", {}).items() if k not in ("kind", "spec")}
    mapping: dict[str, str] = {}
    for kind, model in SPEC_MODELS.items():
        name = f"{model.__name__.removesuffix('Spec')}JobRequest"
        spec = _add_schema(components, model)
        components[name] = {
            "type": "object", "title": name, "additionalProperties": False, "required": ["kind", "spec"],
            "description": f"A {kind} job: `spec` is a {model.__name__}.",
            "properties": {"kind": {"type": "string", "const": kind, "enum": [kind]}, "spec": spec, **shared},
        }
        mapping[kind] = REF.format(model=name)
    campaign = components.get("CampaignSpec", {})
    if "brand" in campaign.get("required", []):  # a brand kit (brand_id) fills it in at submission
        campaign["required"] = [r for r in campaign["required"] if r != "brand"]
        campaign["properties"]["brand"]["description"] = "Required unless `brand_id` names a brand kit, whose " \
                                                         "fields fill it (the spec's own fields win)."
    return {"oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

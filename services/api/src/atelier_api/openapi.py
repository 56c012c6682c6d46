"""The OpenAPI document: problem+json for every error, and the job spec schemas spelled out."""

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
    # JobRequest.spec is a free dict in the contract (validated per kind); document what each kind takes
    job_request = components.get("JobRequest", {}).get("properties", {})
    if "spec" in job_request:
        refs = [_add_schema(components, model) for model in SPEC_MODELS.values()]
        job_request["spec"] = {
            "oneOf": refs,
            "description": "CampaignSpec when kind is `campaign`, StorySpec when kind is `story`.",
        }
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

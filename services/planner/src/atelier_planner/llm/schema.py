"""JSON schemas for LLM answers: small builders, the size limits, and a validator for the subset we emit.

One schema serves twice: it constrains decoding (``response_format`` / vLLM structured outputs /
xgrammar) and it validates the answer afterwards, with messages that name the path that is wrong
(``scenes[2].cast[0].character: 'Bob' is not one of ['Ammu', 'Devaki']``) — those messages are what the
repair pass sends back to the model. Schemas are written inline (no ``$ref``) with
``additionalProperties: false`` everywhere, so every backend reads them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]
# boxes travel as four integers in per-mille of the canvas: models handle integers better than decimals
BOX_SCALE = 1000


@dataclass(frozen=True)
class Limits:
    """Upper bounds on strings and lists in every schema (they also bound the tokens a model may spend)."""

    short: int = 160  # names, captions, poses
    long: int = 600  # scene descriptions, narration, notes
    story: int = 2400  # a whole story
    list_items: int = 8  # generic lists (names, objects, entities)

    @classmethod
    def tiny(cls) -> Limits:
        """Small bounds for tests with a tiny random model: the grammar closes every string quickly."""
        return cls(short=12, long=24, story=160, list_items=2)


def string(max_length: int, *, min_length: int = 1) -> Schema:
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


def integer(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def boolean() -> Schema:
    return {"type": "boolean"}


def enum(values: Sequence[str]) -> Schema:
    return {"type": "string", "enum": list(dict.fromkeys(values))}


def array(items: Schema, min_items: int = 0, max_items: int | None = None) -> Schema:
    s: Schema = {"type": "array", "items": items, "minItems": min_items}
    if max_items is not None:
        s["maxItems"] = max_items
    return s


def obj(properties: dict[str, Schema], required: Sequence[str] | None = None) -> Schema:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else list(required), "additionalProperties": False}


def box() -> Schema:
    """``[x1, y1, x2, y2]`` in per-mille of the canvas width/height, top-left origin."""
    return array(integer(0, BOX_SCALE), 4, 4)


def validate(instance: Any, schema: Schema, path: str = "") -> list[str]:
    """Errors of ``instance`` against ``schema`` (the subset the builders above emit); empty when valid."""
    where = path or "answer"
    if "anyOf" in schema:
        options = [validate(instance, s, path) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else min(options, key=len)
    kind = schema.get("type")
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{where}: {instance!r} is not one of {schema['enum']}"]
    if kind == "object":
        if not isinstance(instance, dict):
            return [f"{where}: expected an object, got {type(instance).__name__}"]
        errors = [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in instance]
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            errors += [f"{where}: unexpected key {k!r}" for k in instance if k not in props]
        for k, sub in props.items():
            if k in instance:
                errors += validate(instance[k], sub, f"{path}.{k}" if path else k)
        return errors
    if kind == "array":
        if not isinstance(instance, list):
            return [f"{where}: expected an array, got {type(instance).__name__}"]
        errors = []
        if len(instance) < schema.get("minItems", 0):
            errors.append(f"{where}: needs at least {schema['minItems']} items, has {len(instance)}")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            errors.append(f"{where}: allows at most {schema['maxItems']} items, has {len(instance)}")
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], f"{path}[{i}]")
        return errors
    if kind == "string":
        if not isinstance(instance, str):
            return [f"{where}: expected a string, got {type(instance).__name__}"]
        if len(instance) < schema.get("minLength", 0):
            return [f"{where}: must not be empty"]
        if len(instance) > schema.get("maxLength", len(instance)):
            return [f"{where}: longer than {schema['maxLength']} characters"]
        return []
    if kind in ("integer", "number"):
        ok = isinstance(instance, int) if kind == "integer" else isinstance(instance, int | float)
        if not ok or isinstance(instance, bool):
            return [f"{where}: expected {'an integer' if kind == 'integer' else 'a number'}, got {instance!r}"]
        if instance < schema.get("minimum", instance) or instance > schema.get("maximum", instance):
            return [f"{where}: {instance} is outside {schema.get('minimum')}..{schema.get('maximum')}"]
        return []
    if kind == "boolean":
        return [] if isinstance(instance, bool) else [f"{where}: expected true or false, got {instance!r}"]
    if kind == "null":
        return [] if instance is None else [f"{where}: expected null"]
    return []


def per_mille(b: Sequence[int | float]) -> tuple[float, float, float, float]:
    """A per-mille box as a normalised 0..1 box (the corners are ordered and clamped by the layout repair)."""
    x1, y1, x2, y2 = (float(v) / BOX_SCALE for v in b)
    return (x1, y1, x2, y2)


def to_per_mille(b: Sequence[float]) -> list[int]:
    return [round(float(v) * BOX_SCALE) for v in b]

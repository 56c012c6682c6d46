"""The new-job form: form fields → a ``JobRequest`` (the JSON API's body), and spec errors → form fields.

Validation is the JSON API's own (``JobRequest`` / ``CampaignSpec`` / ``StorySpec`` via
``jobs.parse_spec``); this module only translates names both ways.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from atelier_contracts.specs import JobRequest
from starlette.datastructures import FormData, UploadFile

from ..schemas import FieldError

COMMON_SIZES = (
    ("1080x1080", "square post"),
    ("1200x628", "link ad"),
    ("1080x1920", "story / reel"),
    ("1080x1350", "portrait post"),
    ("300x250", "medium rectangle"),
    ("728x90", "leaderboard"),
)
DEFAULT_SIZES = ("1080x1080",)

# spec path prefix → form field (first match wins)
FIELD_MAP = (
    ("spec.brand.name", "brand_name"), ("spec.brand.palette", "brand_palette"), ("spec.brand", "brand_name"),
    ("spec.product.name", "product_name"), ("spec.product.description", "product_description"),
    ("spec.product.image", "product_image"), ("spec.product", "product_name"),
    ("spec.taglines", "taglines"), ("spec.cta", "cta"), ("spec.sizes", "sizes"), ("spec.variants", "variants"),
    ("spec.locale", "locale"), ("spec.model", "model"), ("spec.seed", "seed"),
    ("spec.premise", "premise"), ("spec.culture", "culture"), ("spec.language", "language"),
    ("spec.pages", "pages"), ("spec.audience", "audience"), ("spec.style", "style"),
    ("file", "product_image"), ("kind", "kind"),
)
TEXT_FIELDS = ("kind", "brand_name", "brand_palette", "product_name", "product_description", "taglines", "cta",
               "sizes_custom", "variants", "locale", "model", "seed", "premise", "culture", "language", "pages",
               "audience", "style", "idempotency_key")


@dataclass
class JobForm:
    """What the user typed (to re-fill the form) and the errors per field."""

    values: dict[str, str] = field(default_factory=dict)
    sizes: list[str] = field(default_factory=lambda: list(DEFAULT_SIZES))
    errors: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.values.get("kind") or "campaign"

    def value(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def add_errors(self, errors: Iterable[FieldError]) -> None:
        for e in errors:
            name = form_field(e.field)
            if name is None:
                self.general.append(f"{e.field}: {e.message}" if e.field else e.message)
            else:
                self.errors.setdefault(name, []).append(e.message)

    @property
    def has_errors(self) -> bool:
        return bool(self.errors or self.general)


def form_field(spec_path: str) -> str | None:
    for prefix, name in FIELD_MAP:
        if spec_path == prefix or spec_path.startswith(prefix + "."):
            return name
    return None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _list(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"[,\s]+", text) if p.strip()]


def read_form(form: FormData) -> JobForm:
    values = {name: str(form.get(name) or "") for name in TEXT_FIELDS if isinstance(form.get(name) or "", str)}
    chosen = [str(v) for v in form.getlist("sizes") if isinstance(v, str) and v]
    sizes = list(dict.fromkeys(chosen + _list(values.get("sizes_custom", ""))))
    return JobForm(values=values, sizes=sizes)


def uploaded_file(form: FormData, name: str = "product_image") -> UploadFile | None:
    value = form.get(name)
    if isinstance(value, UploadFile) and value.filename:
        return value
    return None


def build_request(job_form: JobForm, *, product_image: str | None = None) -> JobRequest:
    """The JSON API's request body for what the form says; empty optional fields are left out."""
    v = job_form.values
    kind = v.get("kind") or "campaign"
    spec: dict[str, Any]
    if kind == "story":
        spec = {"premise": v.get("premise", ""), "culture": v.get("culture", "")}
        for name in ("language", "pages", "audience", "style"):
            if v.get(name, "").strip():
                spec[name] = v[name].strip()
    else:
        brand: dict[str, Any] = {"name": v.get("brand_name", "")}
        if v.get("brand_palette", "").strip():
            brand["palette"] = _list(v["brand_palette"])
        product: dict[str, Any] = {"name": v.get("product_name", ""), "description": v.get("product_description", "")}
        if product_image:
            product["image"] = product_image
        spec = {"brand": brand, "product": product, "taglines": _lines(v.get("taglines", "")),
                "sizes": job_form.sizes}
        for name in ("cta", "variants", "locale"):
            if v.get(name, "").strip():
                spec[name] = v[name].strip()
    for name in ("model", "seed"):
        if v.get(name, "").strip():
            spec[name] = v[name].strip()
    return JobRequest.model_validate({"kind": kind if kind in ("campaign", "story") else "campaign", "spec": spec})

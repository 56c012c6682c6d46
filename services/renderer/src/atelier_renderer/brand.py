"""The brand kit's font: fetched from storage once per process and registered under the brand's font family."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from atelier_contracts.errors import NotFound, StageError
from atelier_contracts.keys import font_key
from atelier_runtime.stage_runner import StageContext

from . import fonts

MAX_FONT_BYTES = 30 * 1024 * 1024


def brand_font_family(ctx: StageContext, brand: dict[str, Any]) -> str | None:
    """The font family to draw the brand's text in: the kit's uploaded font (registered here), else ``brand.font``."""
    font_id = brand.get("font_artifact")
    if not font_id:
        return brand.get("font")
    family = str(brand.get("font") or f"brand-{font_id}")
    try:
        data = ctx.get(font_key(ctx.task.tenant_id, str(font_id)))
    except NotFound as exc:
        raise StageError(f"brand font {font_id} not found", retryable=False) from exc
    if len(data) > MAX_FONT_BYTES:
        raise StageError(f"brand font {font_id} is larger than {MAX_FONT_BYTES} bytes", retryable=False)
    cache = Path(tempfile.gettempdir()) / "atelier-fonts"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{hashlib.sha256(data).hexdigest()}.font"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    try:
        fonts.font_from_bytes(data, 12)
    except OSError as exc:
        raise StageError(f"brand font {font_id} is not a readable TrueType/OpenType font: {exc}", retryable=False) from exc
    fonts.register_font_file(family, path)
    return family

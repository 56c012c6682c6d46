"""``deliver``: the job's manifest — every watermarked asset with its checksum, size and watermark state, and the
items that failed with why (a campaign delivers the sizes that succeeded) — and, for a story, the storybook PDF
and HTML built from the delivered pages."""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

from atelier_contracts.catalogue import S_DELIVER
from atelier_contracts.errors import NotFound, StageError
from atelier_contracts.stage_io import DeliverInputs, DeliverOutput
from atelier_runtime.stage_runner import StageContext, stage_task
from PIL import Image

from ..documents import storybook


def _natural(item: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item)]


@stage_task(S_DELIVER)
def deliver(ctx: StageContext) -> DeliverOutput:
    marks = ctx.inputs(DeliverInputs).watermark
    entries = []
    images: dict[str, bytes] = {}
    for item in sorted(marks, key=_natural):
        out = marks[item]
        try:
            data = ctx.get(out.asset_key)
        except NotFound as exc:
            raise StageError(f"deliver: asset {out.asset_key} of {item} not found", retryable=False) from exc
        images[item] = data
        width, height = out.width, out.height
        if width is None or height is None:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        entries.append({"item": item, "key": out.asset_key, "sha256": hashlib.sha256(data).hexdigest(),
                        "width": width, "height": height, "watermark": out.watermark})
    if not entries:
        raise StageError("deliver: no watermarked assets upstream", retryable=False)
    documents = storybook(ctx, entries, images) if ctx.task.kind == "story" else []
    failed = [f.model_dump() for f in sorted(ctx.task.failures, key=lambda f: _natural(f.item))]
    manifest = {"job_id": ctx.task.job_id, "kind": ctx.task.kind, "count": len(entries), "assets": entries,
                "documents": documents, "failed": failed}
    rec = ctx.put(name="manifest", data=json.dumps(manifest, sort_keys=True, indent=2).encode("utf-8"), ext="json",
                  content_type="application/json", kind="manifest", meta={"count": len(entries), "failed": len(failed)})
    return DeliverOutput(manifest_key=rec.key, assets=[e["key"] for e in entries], count=len(entries),
                         documents=[d["key"] for d in documents], failed=failed)

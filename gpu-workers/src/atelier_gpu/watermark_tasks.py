"""The ``gpu.watermark`` stage: invisible watermark on every delivered image, read back before it is stored."""

from __future__ import annotations

import io
from typing import Any

from atelier_shared.errors import StageError
from atelier_shared.stage_runner import StageContext, stage_task
from atelier_shared.tasks import S_RENDER_AD, S_STORYBOOK, S_WATERMARK
from PIL import Image

from . import watermark

RENDER_STAGES = (S_RENDER_AD, S_STORYBOOK)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@stage_task(S_WATERMARK)
def watermark_asset(ctx: StageContext) -> dict[str, Any]:
    """Embed the job's invisible watermark in a rendered image and prove it reads back."""
    renders = [v for k, v in ctx.task.upstream.items() if k in RENDER_STAGES]
    if len(renders) != 1:
        raise StageError(f"gpu.watermark: expected exactly one upstream of {', '.join(RENDER_STAGES)}, "
                         f"got {sorted(ctx.task.upstream)}", retryable=False, field="upstream")
    render = renders[0]
    if not isinstance(render, dict) or not render.get("render_key"):
        raise StageError("gpu.watermark: upstream output has no render_key", retryable=False, field="upstream")
    try:
        source = Image.open(io.BytesIO(ctx.get(render["render_key"])))
        source.load()
    except OSError as exc:
        raise StageError(f"gpu.watermark: {render['render_key']} is not a readable image: {exc}",
                         retryable=False) from exc
    payload = watermark.payload_for(ctx.task.tenant_id, ctx.task.job_id)
    try:
        marked = watermark.embed(source, payload)
    except watermark.WatermarkError as exc:
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    data = _png(marked)
    # read back the exact bytes that will be stored
    result = watermark.detect(Image.open(io.BytesIO(data)))
    record = {
        "method": watermark.METHOD,
        "payload_hex": payload.hex(),
        "readback_ok": result.matches(payload),
        "bit_accuracy": round(result.bit_accuracy(payload), 4),
    }
    if not record["readback_ok"]:
        raise StageError(f"gpu.watermark: the watermark did not read back (bit accuracy {record['bit_accuracy']})",
                         retryable=True)
    rec = ctx.put(name=ctx.task.item or "asset", data=data, ext="png", content_type="image/png", kind="asset",
                  width=marked.width, height=marked.height, meta={"watermark": record})
    return {"asset_key": rec.key, "width": marked.width, "height": marked.height, "watermark": record}

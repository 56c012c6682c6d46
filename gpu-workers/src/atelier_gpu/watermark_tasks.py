"""The ``gpu.watermark`` stage: invisible watermark, then a signed C2PA manifest, on every delivered image.

1. Embed the job's 48-bit payload (``payload_for(tenant, job)``) with the configured backend.
2. Read it back from the exact PNG bytes (a mark that does not read back fails the stage, retryably).
3. Sign a C2PA manifest: ``c2pa.created`` (trainedAlgorithmicMedia), the product photo as an ingredient of an
   ad, and the Atelier assertion (job, plan id, model, seed, watermark payload and the size it was embedded
   at, which ``atelier verify`` resizes back to).
4. Verify the signed bytes and store them under the stage's deterministic key, with the watermark and
   manifest state in the artifact's meta.
"""

from __future__ import annotations

import io
from typing import Any

from atelier_shared import provenance
from atelier_shared.errors import NotFound, StageError
from atelier_shared.stage_runner import StageContext, WorkerResources, stage_task
from atelier_shared.tasks import (
    S_AD_LAYOUT,
    S_BACKGROUND,
    S_RENDER_AD,
    S_SCENE,
    S_SCENES,
    S_STORYBOOK,
    S_WATERMARK,
)
from PIL import Image

from . import watermark

RENDER_STAGES = (S_RENDER_AD, S_STORYBOOK)
_BACKEND_KEY = "atelier_gpu.watermark.backend"
_CREDENTIALS_KEY = "atelier_gpu.watermark.c2pa"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _cached(res: WorkerResources, key: str, build: Any) -> Any:
    value = res.extras.get(key)
    if value is None:
        with res.lock:
            value = res.extras.get(key)
            if value is None:
                value = build()
                res.extras[key] = value
    return value


def _item_output(ctx: StageContext, stage: str) -> dict[str, Any]:
    """This item's output of a per-item upstream stage ({} when the graph does not pass it)."""
    up = ctx.task.upstream.get(stage)
    if not isinstance(up, dict):
        return {}
    if isinstance(up.get(ctx.task.item), dict):
        return up[ctx.task.item]  # type: ignore[no-any-return]
    return up


def generation_record(ctx: StageContext) -> dict[str, Any]:
    """What the Atelier assertion says about how this asset was made (from the upstream outputs)."""
    plan_out = ctx.task.upstream.get(S_AD_LAYOUT) or ctx.task.upstream.get(S_SCENES) or {}
    plan = plan_out.get("plan") if isinstance(plan_out, dict) else None
    image_out = _item_output(ctx, S_BACKGROUND) or _item_output(ctx, S_SCENE)
    record: dict[str, Any] = {
        "job_id": ctx.task.job_id, "tenant_ref": watermark.tenant_ref(ctx.task.tenant_id).hex(), "kind": ctx.task.kind,
        "item": ctx.task.item, "plan_id": plan.get("plan_id") if isinstance(plan, dict) else None,
        "planner": (plan or {}).get("planner") if isinstance(plan, dict) else None,
        "model": image_out.get("model"), "seed": image_out.get("seed"),
    }
    if isinstance(image_out.get("identity"), dict):
        record["identity"] = {k: image_out["identity"].get(k) for k in ("mode", "reason") if k in image_out["identity"]}
    return record


def _ingredients(ctx: StageContext) -> list[provenance.Ingredient]:
    """An ad's product photo (the upload named in the spec), bound into the manifest as a component."""
    product_id = (ctx.task.spec.get("product") or {}).get("image") if ctx.task.kind == "campaign" else None
    if not product_id:
        return []
    key = f"tenants/{ctx.task.tenant_id}/uploads/{product_id}.png"
    try:
        data = ctx.get(key)
    except NotFound as exc:
        raise StageError(f"gpu.watermark: product image {key} not found", retryable=False) from exc
    name = (ctx.task.spec.get("product") or {}).get("name") or "product"
    return [provenance.Ingredient(title=f"{name} (product photo {product_id})", data=data)]


@stage_task(S_WATERMARK)
def watermark_asset(ctx: StageContext) -> dict[str, Any]:
    """Embed the job's invisible watermark, prove it reads back, sign a C2PA manifest, store the asset."""
    renders = [v for k, v in ctx.task.upstream.items() if k in RENDER_STAGES]
    if len(renders) != 1:
        raise StageError(f"gpu.watermark: expected exactly one upstream of {', '.join(RENDER_STAGES)}, "
                         f"got {sorted(ctx.task.upstream)}", retryable=False, field="upstream")
    render = renders[0]
    if isinstance(render, dict) and ctx.task.item in render and isinstance(render[ctx.task.item], dict):
        render = render[ctx.task.item]
    if not isinstance(render, dict) or not render.get("render_key"):
        raise StageError("gpu.watermark: upstream output has no render_key", retryable=False, field="upstream")
    try:
        source = Image.open(io.BytesIO(ctx.get(render["render_key"])))
        source.load()
    except OSError as exc:
        raise StageError(f"gpu.watermark: {render['render_key']} is not a readable image: {exc}",
                         retryable=False) from exc
    try:
        backend = _cached(ctx.res, _BACKEND_KEY, lambda: watermark.backend_from_settings(ctx.settings))
        payload = watermark.payload_for(ctx.task.tenant_id, ctx.task.job_id)
        marked = backend.embed(source, payload)
    except watermark.WatermarkError as exc:
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    ctx.check_canceled()
    png = _png(marked)
    # read back the exact pixels that will be stored: blind (Reed-Solomon) and against the job's payload
    decoded = Image.open(io.BytesIO(png))
    blind = backend.detect(decoded, fpr=ctx.settings.watermark_fpr)
    known = backend.detect(decoded, expected=payload, fpr=ctx.settings.watermark_fpr)
    record = {
        "method": backend.method, "payload_hex": payload.hex(), "width": marked.width, "height": marked.height,
        "readback_ok": blind.payload == payload and known.detected, "bit_accuracy": round(known.bit_accuracy, 4),
        "threshold_bits": known.threshold_bits, "fpr": ctx.settings.watermark_fpr,
    }
    if not record["readback_ok"]:
        raise StageError(f"gpu.watermark: the watermark did not read back (bit accuracy {record['bit_accuracy']})",
                         retryable=True)
    try:
        credentials = _cached(ctx.res, _CREDENTIALS_KEY, lambda: provenance.load_credentials(ctx.settings))
        generation = {**generation_record(ctx), "watermark": {k: record[k] for k in ("method", "payload_hex",
                                                                                     "width", "height")}}
        name = ctx.task.item or "asset"
        signed = provenance.sign_asset(png, "image/png", credentials=credentials, title=f"{name}.png",
                                       generation=generation, ingredients=_ingredients(ctx))
    except provenance.ProvenanceError as exc:
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    check = provenance.read_manifest(signed, "image/png", anchors=credentials.anchors_pem)
    if not check.valid:
        raise StageError(f"gpu.watermark: the signed manifest does not verify: {check.failures}", retryable=True)
    c2pa_record = {"state": check.state, "signer": check.signer.get("common_name"), "credentials": credentials.source,
                   "assertion": provenance.ATELIER_ASSERTION, "ingredients": check.ingredients,
                   "signed_at": check.generation.get("signed_at")}
    rec = ctx.put(name=name, data=signed, ext="png", content_type="image/png", kind="asset",
                  width=marked.width, height=marked.height, meta={"watermark": record, "c2pa": c2pa_record,
                                                                  "generation": generation})
    return {"asset_key": rec.key, "width": marked.width, "height": marked.height, "watermark": record,
            "c2pa": c2pa_record}


# the gate.identity stage (queue gpu.identity) registers with the other non-diffusion GPU stages
from . import identity_tasks  # noqa: E402,F401

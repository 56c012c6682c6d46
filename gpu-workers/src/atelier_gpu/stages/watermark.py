"""``gpu.watermark``: the invisible watermark, then a signed C2PA manifest, on every delivered image.

1. Embed the job's 48-bit payload (``payload_for(tenant, job)``) with the configured backend.
2. Read it back from the exact PNG bytes. An asset that cannot carry the mark (too small, too flat: it does not
   read back) is delivered unmarked with a warning (``job.warning``) and ``watermark.carried: false`` — the job
   goes on, and step 3 still signs it.
3. Sign a C2PA manifest: ``c2pa.created`` (trainedAlgorithmicMedia), the product photo as an ingredient of an
   ad, and the Atelier assertion (job, plan id, model, seed, watermark payload and the size it was embedded
   at, which ``atelier verify`` resizes back to).
4. Verify the signed bytes and store them under the stage's deterministic key, with the watermark and
   manifest state in the artifact's meta.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

from atelier_contracts.catalogue import S_RENDER_AD, S_STORYBOOK, S_WATERMARK
from atelier_contracts.errors import NotFound, StageError
from atelier_contracts.keys import upload_key
from atelier_contracts.stage_io import ImageRecord, WatermarkInputs, WatermarkOutput
from atelier_provenance import manifests
from atelier_runtime.images import png_bytes
from atelier_runtime.stage_runner import StageContext, WorkerResources, stage_task
from PIL import Image

from .. import watermark

T = TypeVar("T")
BACKEND_KEY = "atelier_gpu.watermark.backend"
CREDENTIALS_KEY = "atelier_gpu.watermark.c2pa"


def cached(res: WorkerResources, key: str, build: Callable[[], T]) -> T:
    """A per-process value built once (under the resources' lock)."""
    value = res.extras.get(key)
    if value is None:
        with res.lock:
            value = res.extras.get(key)
            if value is None:
                value = build()
                res.extras[key] = value
    return value  # type: ignore[no-any-return]


def generation_record(ctx: StageContext, up: WatermarkInputs) -> dict[str, Any]:
    """What the Atelier assertion says about how this asset was made (from the upstream outputs)."""
    plan_out = up.ad_layout or up.scenes
    plan = plan_out.plan if plan_out is not None else None
    image = up.scene if up.scene is not None else (up.background if isinstance(up.background, ImageRecord) else None)
    record: dict[str, Any] = {
        "job_id": ctx.task.job_id, "tenant_ref": watermark.tenant_ref(ctx.task.tenant_id).hex(), "kind": ctx.task.kind,
        "item": ctx.task.item, "plan_id": plan.plan_id if plan is not None else None,
        "planner": plan.planner if plan is not None else None,
        "model": image.model if image is not None else None, "seed": image.seed if image is not None else None,
    }
    if image is not None and image.identity is not None:
        record["identity"] = {k: image.identity.get(k) for k in ("mode", "reason") if k in image.identity}
    return record


def _ingredients(ctx: StageContext) -> list[manifests.Ingredient]:
    """An ad's product photo (the upload named in the spec), bound into the manifest as a component."""
    product_id = (ctx.task.spec.get("product") or {}).get("image") if ctx.task.kind == "campaign" else None
    if not product_id:
        return []
    key = upload_key(ctx.task.tenant_id, product_id)
    try:
        data = ctx.get(key)
    except NotFound as exc:
        raise StageError(f"gpu.watermark: product image {key} not found", retryable=False) from exc
    name = (ctx.task.spec.get("product") or {}).get("name") or "product"
    return [manifests.Ingredient(title=f"{name} (product photo {product_id})", data=data)]


@stage_task(S_WATERMARK)
def watermark_asset(ctx: StageContext) -> WatermarkOutput:
    """Embed the job's invisible watermark, prove it reads back, sign a C2PA manifest, store the asset."""
    up = ctx.inputs(WatermarkInputs)
    renders = [r for r in (up.render_ad, up.render_page) if r is not None]
    if len(renders) != 1:
        raise StageError(f"gpu.watermark: expected exactly one upstream of {S_RENDER_AD}, {S_STORYBOOK}, "
                         f"got {sorted(ctx.task.upstream)}", retryable=False, field="upstream")
    render_key = renders[0].render_key
    source = ctx.get_image(render_key, "render")
    record, marked, warnings = _mark(ctx, source)
    ctx.check_canceled()
    png = png_bytes(marked)
    try:
        credentials = cached(ctx.res, CREDENTIALS_KEY, lambda: manifests.load_credentials(ctx.settings))
        generation = {**generation_record(ctx, up), "watermark": {k: record[k] for k in (
            "method", "payload_hex", "width", "height", "carried") if k in record}}
        name = ctx.task.item or "asset"
        signed = manifests.sign_asset(png, "image/png", credentials=credentials, title=f"{name}.png",
                                      generation=generation, ingredients=_ingredients(ctx))
    except manifests.ProvenanceError as exc:
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    check = manifests.read_manifest(signed, "image/png", anchors=credentials.anchors_pem)
    if not check.valid:
        raise StageError(f"gpu.watermark: the signed manifest does not verify: {check.failures}", retryable=True)
    c2pa_record = {"state": check.state, "signer": check.signer.get("common_name"), "credentials": credentials.source,
                   "assertion": manifests.ATELIER_ASSERTION, "ingredients": check.ingredients,
                   "signed_at": check.generation.get("signed_at")}
    rec = ctx.put(name=name, data=signed, ext="png", content_type="image/png", kind="asset",
                  width=marked.width, height=marked.height, meta={"watermark": record, "c2pa": c2pa_record,
                                                                  "generation": generation})
    return WatermarkOutput(asset_key=rec.key, width=marked.width, height=marked.height, watermark=record,
                           c2pa=c2pa_record, warnings=warnings)


def _mark(ctx: StageContext, source: Image.Image) -> tuple[dict[str, Any], Image.Image, list[str]]:
    """Embed the job's mark and read it back from the exact PNG bytes that will be stored.

    An asset that cannot carry the mark (too few blocks: a tiny placement; or a mark that does not read back: an
    image too flat for it) is delivered unmarked, never failed: its record says ``carried: false`` and why, the
    warning becomes a ``job.warning``, and the C2PA manifest (which says the same) is signed all the same.
    """
    try:
        backend = cached(ctx.res, BACKEND_KEY, lambda: watermark.backend_from_settings(ctx.settings))
    except watermark.WatermarkError as exc:  # the configured backend cannot be built: no asset would be marked
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    payload = watermark.payload_for(ctx.task.tenant_id, ctx.task.job_id)
    base = {"method": backend.method, "payload_hex": payload.hex(), "width": source.width, "height": source.height,
            "fpr": ctx.settings.watermark_fpr}
    try:
        marked = backend.embed(source, payload)
    except watermark.WatermarkError as exc:
        return _unmarked(base, source, str(exc))
    # read back the exact pixels that will be stored: blind (Reed-Solomon) and against the job's payload
    decoded = Image.open(io.BytesIO(png_bytes(marked)))
    blind = backend.detect(decoded, fpr=ctx.settings.watermark_fpr)
    known = backend.detect(decoded, expected=payload, fpr=ctx.settings.watermark_fpr)
    record = {**base, "carried": True, "readback_ok": blind.payload == payload and known.detected,
              "bit_accuracy": round(known.bit_accuracy, 4), "threshold_bits": known.threshold_bits}
    if not record["readback_ok"]:  # deterministic for these pixels: a retry would embed the same
        return _unmarked(base, source, f"the mark did not read back (bit accuracy {record['bit_accuracy']})")
    return record, marked, []


def _unmarked(base: dict[str, Any], source: Image.Image, reason: str) -> tuple[dict[str, Any], Image.Image, list[str]]:
    record = {**base, "carried": False, "readback_ok": False, "reason": reason}
    warning = (f"the {source.width}x{source.height} asset carries no invisible watermark ({reason}); its C2PA "
               "manifest is signed and says so")
    return record, source.convert("RGB"), [warning]

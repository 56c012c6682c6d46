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
from dataclasses import dataclass
from typing import Any, TypeVar

from atelier_contracts import items
from atelier_contracts.catalogue import S_RENDER_AD, S_STORYBOOK, S_WATERMARK
from atelier_contracts.errors import NotFound, StageError
from atelier_contracts.keys import upload_key
from atelier_contracts.specs import asset_format
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
    """Embed the job's invisible watermark, encode the file as the spec asks (``formats``: png, jpeg or webp at the
    highest quality that fits the byte cap), prove the mark reads back from those bytes, sign a C2PA manifest,
    store the asset."""
    up = ctx.inputs(WatermarkInputs)
    renders = [r for r in (up.render_ad, up.render_page) if r is not None]
    if len(renders) != 1:
        raise StageError(f"gpu.watermark: expected exactly one upstream of {S_RENDER_AD}, {S_STORYBOOK}, "
                         f"got {sorted(ctx.task.upstream)}", retryable=False, field="upstream")
    render_key = renders[0].render_key
    source = ctx.get_image(render_key, "render")
    enc = _encoding(ctx)
    try:
        credentials = cached(ctx.res, CREDENTIALS_KEY, lambda: manifests.load_credentials(ctx.settings))
    except manifests.ProvenanceError as exc:
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    name = ctx.task.item or "asset"
    marked, base = _embed(ctx, source)
    tried: list[tuple[int | None, int]] = []
    for quality in (None,) if enc.format == "png" else LOSSY_QUALITIES:  # the highest quality that fits the cap
        ctx.check_canceled()
        record, data, warnings = _readback(ctx, base, source, marked, enc, quality)
        try:
            generation = {**generation_record(ctx, up), "watermark": {k: record[k] for k in (
                "method", "payload_hex", "width", "height", "carried") if k in record}}
            signed = manifests.sign_asset(data, enc.content_type, credentials=credentials, title=f"{name}.{enc.ext}",
                                          generation=generation, ingredients=_ingredients(ctx))
        except manifests.ProvenanceError as exc:
            raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
        tried.append((quality, len(signed)))
        if enc.max_bytes is None or len(signed) <= enc.max_bytes:
            break
    else:
        lossy = (f"{tried[-1][1]} bytes at quality {LOSSY_QUALITIES[-1]}, the lowest tried" if enc.format != "png"
                 else f"{tried[-1][1]} bytes; deliver it as jpeg or webp")
        raise StageError(f"gpu.watermark: the {source.width}x{source.height} {enc.format} asset does not fit its cap of "
                         f"{enc.max_bytes} bytes ({lossy}; C2PA manifest included)", retryable=False,
                         field="spec.formats")
    record["file"] = {"format": enc.format, "quality": tried[-1][0], "bytes": len(signed), "max_bytes": enc.max_bytes,
                      "tries": len(tried)}
    check = manifests.read_manifest(signed, enc.content_type, anchors=credentials.anchors_pem)
    if not check.valid:
        raise StageError(f"gpu.watermark: the signed manifest does not verify: {check.failures}", retryable=True)
    c2pa_record = {"state": check.state, "signer": check.signer.get("common_name"), "credentials": credentials.source,
                   "assertion": manifests.ATELIER_ASSERTION, "ingredients": check.ingredients,
                   "signed_at": check.generation.get("signed_at")}
    rec = ctx.put(name=name, data=signed, ext=enc.ext, content_type=enc.content_type, kind="asset",
                  width=source.width, height=source.height, meta={"watermark": record, "c2pa": c2pa_record,
                                                                  "generation": generation})
    return WatermarkOutput(asset_key=rec.key, width=source.width, height=source.height, watermark=record,
                           c2pa=c2pa_record, warnings=warnings)


@dataclass(frozen=True)
class Encoding:
    format: str
    max_bytes: int | None

    @property
    def ext(self) -> str:
        return {"png": "png", "jpeg": "jpg", "webp": "webp"}[self.format]

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


# lossy qualities tried, best first, until the signed file fits its cap (the mark reads back at 40: bench/)
LOSSY_QUALITIES = (92, 86, 80, 72, 64, 56, 48, 40)


def _encoding(ctx: StageContext) -> Encoding:
    """The delivered file of this item: a campaign size's ``spec.formats`` entry (else PNG); a story page is PNG."""
    if ctx.task.kind != "campaign":
        return Encoding("png", None)
    try:
        size, _ = items.parse_size_variant(ctx.task.item)
        fmt, cap = asset_format(ctx.task.spec, size)
    except ValueError as exc:  # checked at submit; a stored spec that no longer reads is not this stage's to fix
        raise StageError(f"gpu.watermark: {exc}", retryable=False, field="spec.formats") from exc
    return Encoding(fmt, cap)


def encode(image: Image.Image, fmt: str, quality: int | None) -> bytes:
    if fmt == "png":
        return png_bytes(image)
    buf = io.BytesIO()
    options: dict[str, Any] = {"quality": quality or 90}
    if fmt == "jpeg":
        options.update(optimize=True, subsampling="4:2:0")
    else:
        options.update(method=4)
    image.convert("RGB").save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def _embed(ctx: StageContext, source: Image.Image) -> tuple[Image.Image | str, dict[str, Any]]:
    """The marked pixels (or why the asset cannot carry the mark: too few blocks for a tiny placement)."""
    try:
        backend = cached(ctx.res, BACKEND_KEY, lambda: watermark.backend_from_settings(ctx.settings))
    except watermark.WatermarkError as exc:  # the configured backend cannot be built: no asset would be marked
        raise StageError(f"gpu.watermark: {exc}", retryable=False) from exc
    payload = watermark.payload_for(ctx.task.tenant_id, ctx.task.job_id)
    base = {"method": backend.method, "payload_hex": payload.hex(), "width": source.width, "height": source.height,
            "fpr": ctx.settings.watermark_fpr}
    try:
        return backend.embed(source, payload), base
    except watermark.WatermarkError as exc:
        return str(exc), base


def _readback(ctx: StageContext, base: dict[str, Any], source: Image.Image, marked: Image.Image | str, enc: Encoding,
              quality: int | None) -> tuple[dict[str, Any], bytes, list[str]]:
    """Encode the marked pixels as delivered and read the mark back from exactly those bytes.

    An asset that cannot carry the mark (too few blocks; or a mark that does not read back from the delivered
    bytes: an image too flat, a quality too low) is delivered unmarked, never failed: its record says
    ``carried: false`` and why, the warning becomes a ``job.warning``, and the C2PA manifest (which says the
    same) is signed all the same.
    """
    if isinstance(marked, str):
        return _unmarked(base, source, marked, enc, quality)
    backend = cached(ctx.res, BACKEND_KEY, lambda: watermark.backend_from_settings(ctx.settings))
    payload = bytes.fromhex(base["payload_hex"])
    data = encode(marked, enc.format, quality)
    decoded = Image.open(io.BytesIO(data))
    blind = backend.detect(decoded, fpr=ctx.settings.watermark_fpr)
    known = backend.detect(decoded, expected=payload, fpr=ctx.settings.watermark_fpr)
    record = {**base, "carried": True, "readback_ok": blind.payload == payload and known.detected,
              "bit_accuracy": round(known.bit_accuracy, 4), "threshold_bits": known.threshold_bits}
    if not record["readback_ok"]:  # deterministic for these bytes: a retry would embed the same
        return _unmarked(base, source, f"the mark did not read back from the {enc.format} file (bit accuracy "
                                       f"{record['bit_accuracy']})", enc, quality)
    return record, data, []


def _unmarked(base: dict[str, Any], source: Image.Image, reason: str, enc: Encoding,
              quality: int | None) -> tuple[dict[str, Any], bytes, list[str]]:
    record = {**base, "carried": False, "readback_ok": False, "reason": reason}
    warning = (f"the {source.width}x{source.height} asset carries no invisible watermark ({reason}); its C2PA "
               "manifest is signed and says so")
    return record, encode(source.convert("RGB"), enc.format, quality), [warning]

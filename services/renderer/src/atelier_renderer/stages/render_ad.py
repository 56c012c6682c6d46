"""``render.ad`` (PAID stage 4): the ad of one size and variant — product cut-out, logo, taglines and CTA drawn
as graphics over the background (never by the diffusion model) — then checked: OCR of every text box, contrast,
canvas and safe-zone containment, kept as gate scores in the render's meta.

The brand kit's uploaded font (``brand.font_artifact``) is fetched for this job, under this job's tenant, and
handed to the compositor as a file for this call only (no family name is registered for it anywhere), and
``brand.font`` keeps naming an installed family only. The meta records which upload was drawn (``brand_font``: artifact id and SHA-256)."""

from __future__ import annotations

from typing import Any

from atelier_contracts import items, placements
from atelier_contracts.catalogue import S_RENDER_AD
from atelier_contracts.errors import StageError
from atelier_contracts.keys import upload_key
from atelier_contracts.stage_io import RenderAdInputs, RenderAdOutput, Skipped
from atelier_runtime.images import png_bytes
from atelier_runtime.stage_runner import StageContext, stage_task

from ..brand import fetch_brand_font
from ..checks import check_ad
from ..compose import compose_ad_with_report

MAX_PIXELS = 40_000_000


def min_text_px(size: str) -> int:
    """The placement's minimum text height (10 px display, 28 px social feeds); 6 for a size the specs refuse."""
    try:
        return placements.placement(size).min_text_px
    except ValueError:
        return 6


@stage_task(S_RENDER_AD)
def render_ad(ctx: StageContext) -> RenderAdOutput:
    up = ctx.inputs(RenderAdInputs)
    size, variant_no = ctx.parsed_item(items.parse_size_variant)
    plan = up.ad_layout.plan
    found = plan.variant_for(size, variant_no)  # an odd variant may be the mirrored composition
    if found is None:
        raise StageError(f"AdPlan has no variant for size {size}", retryable=False)
    variant = found[1]
    spec = ctx.task.spec
    backdrop = str(spec.get("backdrop") or "generated")
    background = None
    if backdrop != "studio":  # a studio backdrop is drawn here; the GPU background is not needed
        if up.background is None or isinstance(up.background, Skipped):
            raise StageError(f"{S_RENDER_AD} {ctx.task.item}: upstream gpu.background has no 'background_key'",
                             retryable=False)
        background = ctx.get_image(up.background.background_key, "background", max_pixels=MAX_PIXELS)
    product_id = (spec.get("product") or {}).get("image")
    product = ctx.get_image(upload_key(ctx.task.tenant_id, product_id), "product image",
                            max_pixels=MAX_PIXELS) if product_id else None
    brand = dict(spec.get("brand") or {})
    logo = ctx.get_image(upload_key(ctx.task.tenant_id, brand["logo"]), "logo",
                         max_pixels=MAX_PIXELS) if brand.get("logo") else None
    brand_font = fetch_brand_font(ctx, brand)  # this job's upload, or None: never a process-wide family name
    ctx.check_canceled()
    img, report = compose_ad_with_report(background=background, product=product, variant=variant,
                                         taglines=plan.taglines, brand=brand, logo=logo, backdrop=backdrop,
                                         font_file=brand_font.path if brand_font else None,
                                         min_text_px=min_text_px(size))
    ctx.progress(1, 2)
    gates = [g.as_dict() for g in check_ad(img, report, ocr_enabled=ctx.settings.render_ocr,
                                            max_cer=ctx.settings.render_ocr_max_cer)]
    texts = [{"level": t.level, "text": t.text, "lines": t.lines, "font": t.font, "size": t.size, "color": t.color,
              "contrast": round(t.contrast, 2), "underlay": t.underlay, "truncated": t.truncated, "box": list(t.box),
              "block": list(t.block)} for t in report.texts]
    meta: dict[str, Any] = {
        "size": size, "variant": variant_no, "backdrop": report.backdrop,
        "taglines": [t.text for t in plan.taglines if t.level != "cta"],
        "cta": next((t.text for t in plan.taglines if t.level == "cta"), None), "gates": gates, "texts": texts,
        "safe_zone": list(report.safe_zone)}
    if brand_font is not None:
        meta["brand_font"] = {"artifact": brand_font.artifact_id, "sha256": brand_font.sha256}
    rec = ctx.put(name=ctx.task.item, data=png_bytes(img), ext="png", content_type="image/png", kind="render",
                  width=img.width, height=img.height, meta=meta)
    failed = [g["name"] for g in gates if g["passed"] is False]
    return RenderAdOutput(render_key=rec.key, width=img.width, height=img.height, size=size, variant=variant_no,
                          gates_passed=not failed, gates_failed=failed)

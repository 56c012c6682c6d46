"""Inpaint around the product (PAID stage 3): the background is generated around the product mask.

1. ``check_inputs`` says exactly what is wrong.
2. ``product_cutout`` gives the product's pixels and mask: its own alpha when it has one, else the
   plain backdrop of a product photo keyed out from the border (a busy border keeps the whole image).
3. ``place_product`` fits the cut-out into the product box, keeping its aspect ratio, bottom-aligned
   (the renderer places it the same way, so the two agree).
4. ``run_batch`` runs the family's inpainting pipeline over the warm pipeline's components
   (``StableDiffusionXLInpaintPipeline`` / ``FluxInpaintPipeline`` via ``from_pipe``, strength 1.0):
   everything outside the product is generated from noise, while inside the mask the latents follow
   the product's own, so the scene is generated *around* it (light, shadow, contact). Optional layout
   regions (background objects) act through the same regional attention as the layout recipe.
5. **Paste-back.** A VAE round trip is not lossless, so after decoding, the product's original pixels
   are composited back through its mask. The product's opaque pixels therefore come out exactly
   unchanged (tested byte for byte); its semi-transparent edge is alpha-blended onto the new background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .common import check_common, check_prompt, fail
from .layout import grounding_steps
from .regional import box_masks, generate_with_regions

RECIPE = "inpaint"
FAMILIES = ("sdxl", "flux")
PLAIN_BORDER_SPREAD = 18.0  # 90th percentile colour distance of border pixels to their median: "plain backdrop"
MIN_FOREGROUND = 0.02


@dataclass
class Placement:
    """The product as placed on the canvas: its pixels (RGBA) and top-left corner."""

    image: Image.Image
    left: int
    top: int

    @property
    def rect(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.left + self.image.width, self.top + self.image.height


def product_cutout(product: Image.Image) -> Image.Image:
    """RGBA product cropped to its pixels: its alpha if it has one, else a plain border backdrop keyed out."""
    import cv2  # heavy (OpenCV): loaded on first use

    if product.mode in ("RGBA", "LA", "PA") or (product.mode == "P" and "transparency" in product.info):
        rgba = product.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            bbox = rgba.getchannel("A").getbbox()
            return rgba.crop(bbox) if bbox else rgba
    rgb = product.convert("RGB")
    arr = np.asarray(rgb)
    t = max(1, min(rgb.width, rgb.height) // 50)
    border = np.concatenate([arr[:t].reshape(-1, 3), arr[-t:].reshape(-1, 3), arr[:, :t].reshape(-1, 3),
                             arr[:, -t:].reshape(-1, 3)]).astype(np.float32)
    bg = np.median(border, axis=0)
    spread = float(np.percentile(np.linalg.norm(border - bg, axis=1), 90))
    if spread > PLAIN_BORDER_SPREAD:
        return rgb.convert("RGBA")  # not a plain backdrop: the whole image is the product
    tol = max(24.0, 1.5 * spread + 8.0)
    candidate = (np.linalg.norm(arr.astype(np.float32) - bg, axis=2) <= tol).astype(np.uint8)
    # background = candidate pixels connected to the border (flood fill from a 1-pixel frame)
    framed = np.pad(candidate, 1, constant_values=1)
    flood = np.zeros((framed.shape[0] + 2, framed.shape[1] + 2), np.uint8)
    cv2.floodFill(framed, flood, (0, 0), 2, loDiff=0, upDiff=0, flags=4)
    background = framed[1:-1, 1:-1] == 2
    if background.mean() > 1.0 - MIN_FOREGROUND:
        return rgb.convert("RGBA")  # one flat colour: that is the product
    alpha = Image.fromarray(np.where(background, 0, 255).astype(np.uint8))
    alpha = alpha.filter(ImageFilter.MinFilter(3))
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    bbox = alpha.getbbox()
    return out.crop(bbox) if bbox else out


def place_product(cutout: Image.Image, box: Sequence[float], width: int, height: int) -> Placement:
    """Fit ``cutout`` into the normalised ``box`` on a ``width`` x ``height`` canvas: aspect kept, bottom-aligned."""
    x1, y1, x2, y2 = round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height)
    bw, bh = max(1, x2 - x1), max(1, y2 - y1)
    scale = min(bw / cutout.width, bh / cutout.height)
    w, h = max(1, round(cutout.width * scale)), max(1, round(cutout.height * scale))
    img = cutout.resize((w, h), Image.Resampling.LANCZOS) if (w, h) != cutout.size else cutout
    return Placement(img, x1 + (bw - w) // 2, y2 - h)


def canvas_and_mask(placement: Placement, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """The init image (product on neutral grey) and the inpainting mask (white = generate, black = keep)."""
    canvas = Image.new("RGBA", (width, height), (127, 127, 127, 255))
    canvas.alpha_composite(placement.image, (placement.left, placement.top))
    keep = Image.new("L", (width, height), 0)
    keep.paste(placement.image.getchannel("A"), (placement.left, placement.top))
    mask = keep.point(lambda a: 0 if a >= 128 else 255)
    return canvas.convert("RGB"), mask


def paste_back(image: Image.Image, placement: Placement) -> Image.Image:
    """Composite the product's original pixels over the generated image through its alpha."""
    out = image.convert("RGBA")
    out.alpha_composite(placement.image, (placement.left, placement.top))
    return out.convert("RGB")


def check_inputs(pipe: Any, *, family: Any, prompt: Any, product: Any, product_box: Any, width: Any, height: Any,
                 steps: Any, guidance: Any, seeds: Any, negative_prompt: Any = None, on_step: Any = None) -> None:
    """Raise ``StageError(retryable=False)`` naming the first bad argument."""
    check_common(RECIPE, pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=seeds, on_step=on_step, families=FAMILIES)
    check_prompt(RECIPE, "prompt", prompt)
    check_prompt(RECIPE, "negative_prompt", negative_prompt, optional=True)
    if not isinstance(product, Image.Image):
        raise fail(RECIPE, "product", f"must be a PIL image of the product, got {type(product).__name__}")
    if product.width < 8 or product.height < 8:
        raise fail(RECIPE, "product", f"is {product.width}x{product.height}; it must be at least 8x8 pixels")
    if not isinstance(product_box, list | tuple) or len(product_box) != 4:
        raise fail(RECIPE, "product_box", f"must be [x1, y1, x2, y2] in 0..1, got {product_box!r}")
    x1, y1, x2, y2 = product_box
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        raise fail(RECIPE, "product_box", f"{list(product_box)} must satisfy 0<=x1<x2<=1 and 0<=y1<y2<=1")
    if (x2 - x1) * width < 4 or (y2 - y1) * height < 4:
        raise fail(RECIPE, "product_box", f"is under 4 pixels wide or high at {width}x{height}")


def inpaint_pipeline(pipe: Any, family: str) -> Any:
    """The family's inpainting pipeline over ``pipe``'s own components (shared, not copied)."""
    if family == "sdxl":
        from diffusers import StableDiffusionXLInpaintPipeline  # heavy (diffusers): loaded on first use

        out = StableDiffusionXLInpaintPipeline.from_pipe(pipe)
    else:
        from diffusers import FluxInpaintPipeline  # heavy (diffusers): loaded on first use

        out = FluxInpaintPipeline.from_pipe(pipe)
    out.set_progress_bar_config(disable=True)
    return out


def run_batch(pipe: Any, *, family: str, prompt: str, product: Image.Image, product_box: Sequence[float], width: int,
              height: int, steps: int, guidance: float, seeds: list[int], negative_prompt: str | None = None,
              regions: Sequence[tuple[str, Any]] = (), base_ratio: float = 0.3, grounding_fraction: float = 0.3,
              on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
              eta: float | None = None) -> tuple[list[Any], Placement]:
    """Generate one background per seed around the product; return the images and where the product is.

    Args:
        pipe: a loaded SDXL (``family="sdxl"``) or FLUX (``"flux"``) pipeline.
        prompt, negative_prompt: the background caption / what to avoid (FLUX ignores the negative).
        product: the product image (RGBA with its alpha, or a photo on a plain backdrop).
        product_box: where it goes, normalised ``[x1, y1, x2, y2]`` (the AdPlan variant's product box).
        regions: optional ``(caption, latent mask)`` pairs for background objects (layout boxes),
            grounded for the first ``grounding_fraction`` of the steps, blended by ``base_ratio``.
        width, height, steps, guidance, seeds, on_step, timesteps, eta: as in text-to-image.

    Returns:
        (``len(seeds)`` RGB images of ``width`` x ``height`` with the product's opaque pixels unchanged,
        the product's ``Placement`` on that canvas).
    """
    import torch  # heavy (torch): loaded on first use


    check_inputs(pipe, family=family, prompt=prompt, product=product, product_box=product_box, width=width,
                 height=height, steps=steps, guidance=guidance, seeds=seeds, negative_prompt=negative_prompt,
                 on_step=on_step)
    placement = place_product(product_cutout(product), product_box, width, height)
    init, mask = canvas_and_mask(placement, width, height)
    ipipe = inpaint_pipeline(pipe, family)
    extra: dict[str, Any] = {"image": init, "mask_image": mask, "strength": 1.0}
    prompts = [caption for caption, _ in regions]
    masks = torch.stack([m for _, m in regions]) if regions else torch.zeros(0, height // 8, width // 8)
    total = len(timesteps) if timesteps else steps
    images = generate_with_regions(
        pipe, family=family, base_prompt=prompt, negative_prompt=negative_prompt, prompts=prompts, masks=masks,
        base_ratio=base_ratio, width=width, height=height, steps=steps, guidance=guidance, seeds=seeds,
        on_step=on_step, active_steps=grounding_steps(grounding_fraction, total) if prompts else 0,
        timesteps=timesteps, eta=eta, call_pipe=ipipe, extra=extra)
    return [paste_back(im.resize((width, height)) if im.size != (width, height) else im, placement)
            for im in images], placement


def run(pipe: Any, *, seed: int, **kwargs: Any) -> tuple[Any, Placement]:
    """One background: ``run_batch`` with ``seeds=[seed]``."""
    images, placement = run_batch(pipe, seeds=[seed], **kwargs)
    return images[0], placement


# ---------------------------------------------------------------- in-place repair (a gate's failed regions)

REPAIR_MARGIN = 0.03  # each failed box grows by this share of the canvas side, so its edges blend in
REPAIR_BASE_RATIO = 0.3


def repair_mask(boxes: Sequence[Sequence[float]], width: int, height: int, *,
                protect: Sequence[float] | None = None, margin: float = REPAIR_MARGIN) -> Image.Image:
    """The inpainting mask of a repair (white = redraw): every failed box grown by ``margin``, minus ``protect``
    (the product's box when its pixels are a photo, never repainted)."""
    mask = Image.new("L", (width, height), 0)
    mx, my = margin * width, margin * height
    for x1, y1, x2, y2 in boxes:
        mask.paste(255, (max(0, round(x1 * width - mx)), max(0, round(y1 * height - my)),
                         min(width, round(x2 * width + mx)), min(height, round(y2 * height + my))))
    if protect is not None:
        x1, y1, x2, y2 = protect
        mask.paste(0, (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)))
    return mask


def repair_batch(pipe: Any, *, family: str, image: Image.Image, regions: Sequence[Any], prompt: str, width: int,
                 height: int, steps: int, guidance: float, seeds: list[int], negative_prompt: str | None = None,
                 protect: Sequence[float] | None = None, base_ratio: float = REPAIR_BASE_RATIO,
                 on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
                 eta: float | None = None) -> tuple[list[Image.Image], float]:
    """Redraw only the failed regions of ``image`` (a gate's repair): one inpainting call over the warm
    pipeline's components, the mask the regions' boxes (``repair_mask``), each region's prompt acting inside its
    box at every step (regional attention) and ``prompt`` elsewhere; outside the mask the pixels come back
    exactly as they were (composited through the mask after decoding).

    ``regions``: ``Box`` items (box + caption as prompt). Returns the images (one per seed) and the share of the
    canvas that was redrawn.
    """
    check_common(RECIPE, pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=seeds, on_step=on_step, families=FAMILIES)
    check_prompt(RECIPE, "prompt", prompt)
    if not isinstance(image, Image.Image):
        raise fail(RECIPE, "image", f"must be the PIL image to repair, got {type(image).__name__}")
    if not regions:
        raise fail(RECIPE, "regions", "a repair needs at least one region")
    init = image.convert("RGB")
    if init.size != (width, height):
        init = init.resize((width, height), Image.Resampling.LANCZOS)
    mask = repair_mask([r.bbox for r in regions], width, height, protect=protect)
    share = float(np.asarray(mask).mean() / 255.0)
    if share == 0.0:
        raise fail(RECIPE, "regions", "the regions to repair lie inside the protected product box")
    extra: dict[str, Any] = {"image": init, "mask_image": mask, "strength": 1.0}
    images = generate_with_regions(
        pipe, family=family, base_prompt=prompt, negative_prompt=negative_prompt, prompts=[r.caption for r in regions],
        masks=box_masks(list(regions), width, height), base_ratio=base_ratio, width=width, height=height, steps=steps,
        guidance=guidance, seeds=seeds, on_step=on_step, active_steps=None, timesteps=timesteps, eta=eta,
        call_pipe=inpaint_pipeline(pipe, family), extra=extra)
    out = []
    for im in images:
        im = im.convert("RGB") if im.size == (width, height) else im.convert("RGB").resize((width, height))
        out.append(Image.composite(im, init, mask))
    return out, share

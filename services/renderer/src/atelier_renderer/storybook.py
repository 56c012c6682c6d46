"""Storybook pages: the scene image on top, the narration wrapped below it, the page number in the footer."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from .compose import draw_text_block, fit_into, fit_text, hex_to_rgb

PAPER = "#FBF7EF"
INK = "#2B2118"
MUTED = "#7A6A58"


def render_page(*, scene_image: Image.Image, narration: str, page_number: int, title: str | None = None,
                size: tuple[int, int] = (1024, 1280)) -> Image.Image:
    """One RGB page of ``size``: optional title, the scene (aspect kept), the narration fitted below, a page number."""
    return render_page_with_layout(scene_image=scene_image, narration=narration, page_number=page_number, title=title,
                                   size=size)[0]


def render_page_with_layout(*, scene_image: Image.Image, narration: str, page_number: int, title: str | None = None,
                            size: tuple[int, int] = (1024, 1280)) -> tuple[Image.Image, dict[str, Any]]:
    """:func:`render_page` plus where the scene image landed (``image_rect``, page pixels) and the fonts used."""
    W, H = size
    page = Image.new("RGB", (W, H), hex_to_rgb(PAPER))
    draw = ImageDraw.Draw(page)
    margin = max(8, round(W * 0.05))
    footer_h = max(12, round(H * 0.045))
    y = margin
    if title:
        t_box = (margin, y, W - margin, y + max(12, round(H * 0.055)))
        fit = fit_text(title, t_box[2] - t_box[0], t_box[3] - t_box[1], bold=True, min_size=8)
        block = draw_text_block(draw, fit, t_box, INK, align="center")
        y = block[3] + margin // 2
    text_min_h = round(H * 0.2)  # the narration always keeps at least a fifth of the page
    max_img_h = max(16, H - y - text_min_h - footer_h - margin)
    img, (ix, iy) = fit_into(scene_image.convert("RGB"), (margin, y, W - margin, y + max_img_h), valign="top")
    page.paste(img, (ix, iy))
    image_rect = [ix, iy, ix + img.width, iy + img.height]
    y = iy + img.height + margin // 2
    text_box = (margin, y, W - margin, H - footer_h - margin // 2)
    if narration.strip() and text_box[3] > text_box[1]:
        max_size = max(10, round(W / 26))
        fit = fit_text(narration, text_box[2] - text_box[0], text_box[3] - text_box[1], min_size=8, max_size=max_size,
                       line_spacing=1.35)
        draw_text_block(draw, fit, text_box, INK, align="left", valign="top")
    f_box = (margin, H - footer_h - margin // 4, W - margin, H - margin // 4)
    fit = fit_text(str(page_number), f_box[2] - f_box[0], f_box[3] - f_box[1], min_size=6, max_size=max(6, round(W / 45)))
    draw_text_block(draw, fit, f_box, MUTED, align="center")
    return page, {"image_rect": image_rect, "size": [W, H]}

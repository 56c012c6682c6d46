from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from atelier_contracts.colors import contrast_ratio
from atelier_contracts.plans import AdVariant, Box, LayoutPlan, PlannerInfo, Tagline, Target, TextStyle
from atelier_renderer.compose import (
    AdReport,
    compose_ad,
    compose_ad_with_report,
    cover,
    cutout,
    fit_text,
    min_contrast,
    text_width,
    wrap_text,
)
from atelier_renderer.fonts import load_font
from PIL import Image

PLANNER = PlannerInfo(backend="rules", model="rules-v1", prompt_version="rules-1")
RED = (200, 30, 30)
BRAND: dict[str, Any] = {"name": "B", "palette": ["#1F2937", "#F9FAFB"]}
LONG = ("Wake up to smooth, bold, slow-steeped cold brew coffee every single morning of the week, "
        "with extraordinarily long words like incomprehensibilities in it")


def variant(w: int, h: int, *, color: str = "#1F2937", underlay: str | None = None, cta: bool = True,
            headline_box: tuple[float, float, float, float] | None = None) -> AdVariant:
    landscape = w / h >= 1.3
    portrait = w / h < 0.85
    if portrait:
        prod, head, cta_box = (0.14, 0.33, 0.86, 0.78), (0.08, 0.08, 0.92, 0.22), (0.25, 0.83, 0.75, 0.90)
    elif landscape:
        prod, head, cta_box = (0.62, 0.08, 0.94, 0.80), (0.05, 0.14, 0.55, 0.44), (0.05, 0.70, 0.32, 0.86)
    else:
        prod, head, cta_box = (0.06, 0.14, 0.52, 0.84), (0.56, 0.14, 0.95, 0.42), (0.60, 0.67, 0.92, 0.77)
    boxes = [Box(bbox=(0, 0, 1, 1), caption="bg", role="background", z=0),
             Box(bbox=prod, caption="product", role="product", z=2),
             Box(bbox=headline_box or head, caption="headline: x", role="tagline", z=4)]
    styles = [TextStyle(box_role="tagline", color=color, underlay_color=underlay, align="left")]
    if cta:
        boxes.append(Box(bbox=cta_box, caption="cta: Shop now", role="cta", z=4))
        styles.append(TextStyle(box_role="cta", color="#F9FAFB", underlay_color="#1F2937"))
    layout = LayoutPlan(plan_id="p", seed=1, width=w, height=h, planner=PLANNER, global_caption="g", boxes=boxes)
    return AdVariant(target=Target(w=w, h=h, name=f"{w}x{h}"), layout=layout, text_styles=styles)


def product_on_white() -> Image.Image:
    img = Image.new("RGB", (300, 500), (255, 255, 255))
    img.paste(RED, (40, 40, 260, 460))
    return img


def product_rgba() -> Image.Image:
    img = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    img.paste((*RED, 255), (50, 20, 150, 180))
    return img


TAGS = [Tagline(text="Fresh every morning", level="headline"), Tagline(text="Shop now", level="cta")]


@pytest.mark.parametrize("size", [(1080, 1080), (1200, 628), (1080, 1920)])
@pytest.mark.parametrize("product", [product_on_white, product_rgba])
def test_output_size_and_product_pixels(size: tuple[int, int], product: Any) -> None:
    bg = Image.new("RGB", (640, 480), (230, 230, 235))
    v = variant(*size)
    img, rep = compose_ad_with_report(background=bg, product=product(), variant=v, taglines=TAGS, brand=BRAND)
    assert img.size == size and img.mode == "RGB"
    x1, y1, x2, y2 = v.layout.boxes[1].to_pixels(*size)
    assert rep.product_rect is not None
    px1, py1, px2, py2 = rep.product_rect
    assert x1 <= px1 and y1 <= py1 and px2 <= x2 and py2 <= y2  # fitted inside its box
    assert (px2 - px1) / (py2 - py1) == pytest.approx(_aspect(product()), rel=0.03)  # aspect kept
    assert img.getpixel(((px1 + px2) // 2, (py1 + py2) // 2)) == RED
    # the upload's plain white (or transparent) surround was removed: no white pixel anywhere in the box
    box_px = np.asarray(img.crop((x1, y1, x2, y2)))
    assert not (box_px == 255).all(axis=2).any()


def _aspect(img: Image.Image) -> float:
    c = cutout(img)
    return c.width / c.height


def test_cutout_keys_border_colour_but_keeps_enclosed_pixels() -> None:
    img = Image.new("RGB", (120, 120), (250, 250, 250))
    img.paste((20, 60, 160), (20, 20, 100, 100))
    img.paste((250, 250, 250), (50, 50, 70, 70))  # a white label inside the product stays opaque
    c = cutout(img)
    assert abs(c.width - 80) <= 2 and abs(c.height - 80) <= 2
    a = np.asarray(c.getchannel("A"))
    assert a[c.height // 2, c.width // 2] == 255 and a[8, 8] == 255  # enclosed white label and blue body opaque
    flat = cutout(Image.new("RGB", (50, 50), (250, 250, 250)))
    assert flat.size == (50, 50) and np.asarray(flat.getchannel("A")).min() == 255  # a flat image is kept whole
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    assert np.asarray(cutout(photo).getchannel("A")).min() == 255  # busy border: nothing keyed


def test_cutout_uses_alpha_channel() -> None:
    c = cutout(product_rgba())
    assert c.size == (100, 160) and c.getpixel((50, 80)) == (*RED, 255)


def test_cover_is_exact_and_centered() -> None:
    src = Image.new("RGB", (400, 100), (0, 0, 0))
    src.paste((255, 0, 0), (150, 0, 250, 100))
    out = cover(src, 300, 300)
    assert out.size == (300, 300)
    assert out.getpixel((150, 150)) == (255, 0, 0)


def test_fit_text_is_largest_that_fits() -> None:
    fit = fit_text("Fresh every morning", 400, 120, bold=True)
    assert fit.width <= 400 and fit.height <= 120 and not fit.truncated
    # one size up no longer fits
    font = load_font(fit.size + 1, bold=True)
    lines = wrap_text("Fresh every morning", font, 400)
    asc, desc = font.getmetrics()
    h = round((asc + desc) * 1.15) * (len(lines) - 1) + asc + desc
    assert h > 120 or max(text_width(x, font) for x in lines) > 400


@pytest.mark.parametrize("box", [(300, 80), (120, 300), (60, 20), (900, 40)])
def test_long_text_never_overflows(box: tuple[int, int]) -> None:
    fit = fit_text(LONG, *box)
    assert fit.width <= box[0] and fit.height <= box[1]
    assert all(text_width(line, fit.font) <= box[0] for line in fit.lines)


def test_long_tagline_fits_its_box_in_the_ad() -> None:
    tags = [Tagline(text=LONG, level="headline"), Tagline(text="Shop now", level="cta")]
    for size in [(1080, 1080), (1200, 628), (1080, 1920), (728, 90)]:
        _, rep = compose_ad_with_report(background=Image.new("RGB", (64, 64), (240, 240, 240)), product=product_rgba(),
                                        variant=variant(*size), taglines=tags, brand=BRAND)
        for t in rep.texts:
            bx1, by1, bx2, by2 = t.box
            x1, y1, x2, y2 = t.block
            assert bx1 <= x1 and by1 <= y1 and x2 <= bx2 and y2 <= by2, (size, t.level, t.box, t.block)
        head = next(t for t in rep.texts if t.level == "headline")
        assert " ".join(head.lines).replace("…", "") in LONG or head.truncated


def test_text_pixels_stay_inside_the_box() -> None:
    bg = Image.new("RGB", (100, 100), (255, 255, 255))
    v = variant(1080, 1080, color="#000000", cta=False)
    img = compose_ad(background=bg, product=None, variant=v, taglines=[Tagline(text=LONG, level="headline")], brand=BRAND)
    arr = np.asarray(img)
    x1, y1, x2, y2 = v.layout.boxes[2].to_pixels(1080, 1080)
    dark = arr.sum(axis=2) < 300
    inside = dark[y1:y2, x1:x2].sum()
    assert inside > 500 and dark.sum() == inside  # ink only inside the headline box


def test_contrast_ratio_known_values() -> None:
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#FFFFFF") == pytest.approx(4.48, abs=0.01)
    assert contrast_ratio("#123456", "#123456") == pytest.approx(1.0)


def test_text_colour_switches_when_contrast_fails() -> None:
    dark_bg = Image.new("RGB", (64, 64), (31, 41, 55))  # the planned text colour itself
    _, rep = compose_ad_with_report(background=dark_bg, product=None, variant=variant(1080, 1080, cta=False),
                                    taglines=TAGS, brand=BRAND)
    head = rep.texts[0]
    assert head.switched and not head.underlay and head.color == "#F9FAFB"
    assert head.contrast >= 4.5


def test_underlay_drawn_on_busy_background() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.random((64, 64)) > 0.5).astype(np.uint8) * 255
    busy = Image.fromarray(np.stack([noise] * 3, axis=2)).resize((1080, 1080), Image.Resampling.NEAREST)
    img, rep = compose_ad_with_report(background=busy, product=None, variant=variant(1080, 1080, cta=False),
                                      taglines=TAGS, brand=BRAND)
    head = rep.texts[0]
    assert head.underlay and head.contrast >= 4.5
    # behind the text block the pixels are now the underlay colour, not noise
    x1, y1, x2, y2 = head.block
    assert min_contrast(head.color, img.crop((x1, y1, x2, y2)).resize((1, 1), Image.Resampling.BOX)) >= 4.5


def test_cta_is_a_button_with_readable_text() -> None:
    bg = Image.new("RGB", (64, 64), (240, 240, 240))
    v = variant(1080, 1080)
    img, rep = compose_ad_with_report(background=bg, product=None, variant=v, taglines=TAGS, brand=BRAND)
    cta = next(t for t in rep.texts if t.level == "cta")
    assert cta.text == "Shop now" and cta.contrast >= 4.5
    x1, y1, x2, y2 = cta.box
    assert img.getpixel(((x1 + x2) // 2, y1 + 2)) == (31, 41, 55)  # button fill at its top middle
    assert img.getpixel((x1 + 1, y1 + 1)) == (240, 240, 240)  # rounded corner shows the background


def test_logo_is_pasted() -> None:
    v = variant(1080, 1080, cta=False)
    v.layout.boxes.append(Box(bbox=(0.06, 0.03, 0.24, 0.11), caption="logo: B", role="logo", z=4))
    logo = Image.new("RGBA", (100, 50), (0, 200, 0, 255))
    img = compose_ad(background=Image.new("RGB", (8, 8), (255, 255, 255)), product=None, variant=v, taglines=TAGS,
                     brand=BRAND, logo=logo)
    x1, y1, x2, y2 = v.layout.boxes[-1].to_pixels(1080, 1080)
    assert img.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == (0, 200, 0)


def test_sub_line_never_larger_than_headline() -> None:
    v = variant(1080, 1080, cta=False)
    v.layout.boxes.append(Box(bbox=(0.56, 0.44, 0.95, 0.60), caption="sub: Two", role="tagline", z=4))
    v.text_styles.append(TextStyle(box_role="tagline", color="#1F2937", align="left"))
    tags = [Tagline(text=LONG, level="headline"), Tagline(text="Two", level="sub")]
    _, rep = compose_ad_with_report(background=Image.new("RGB", (8, 8), (250, 250, 250)), product=None, variant=v,
                                    taglines=tags, brand=BRAND)
    sizes = {t.level: t.size for t in rep.texts}
    assert sizes["sub"] <= sizes["headline"]
    assert isinstance(rep, AdReport)


def test_text_is_never_set_below_the_placements_minimum() -> None:
    """A long tagline keeps the lines that fit at the minimum height and ends with "…" (reported), instead of
    shrinking to a size the placement cannot show legibly."""
    tags = [Tagline(text=LONG, level="headline"), Tagline(text="Shop now", level="cta")]
    for size, minimum in [((1080, 1080), 28), ((300, 250), 10), ((728, 90), 10)]:
        _, rep = compose_ad_with_report(background=Image.new("RGB", (64, 64), (240, 240, 240)), product=product_rgba(),
                                        variant=variant(*size), taglines=tags, brand=BRAND, min_text_px=minimum)
        assert all(t.size >= minimum for t in rep.texts), (size, [(t.level, t.size) for t in rep.texts])
    _, small = compose_ad_with_report(background=Image.new("RGB", (64, 64), (240, 240, 240)), product=product_rgba(),
                                      variant=variant(300, 250), taglines=tags, brand=BRAND, min_text_px=10)
    _, tiny = compose_ad_with_report(background=Image.new("RGB", (64, 64), (240, 240, 240)), product=product_rgba(),
                                     variant=variant(300, 250), taglines=tags, brand=BRAND)
    head, tiny_head = (next(t for t in r.texts if t.level == "headline") for r in (small, tiny))
    assert head.truncated and tiny_head.size < 10  # before: the whole tagline squeezed under 10 px

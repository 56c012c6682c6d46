from __future__ import annotations

import numpy as np
import pytest
from atelier_renderer.storybook import render_page
from PIL import Image


@pytest.mark.parametrize("size", [(1024, 1280), (600, 800)])
def test_page_size_image_on_top_text_below(size: tuple[int, int]) -> None:
    scene = Image.new("RGB", (1024, 768), (10, 120, 200))
    page = render_page(scene_image=scene, narration="Once upon a time " * 20, page_number=3, title="A Title", size=size)
    assert page.size == size and page.mode == "RGB"
    arr = np.asarray(page).astype(int)
    blue = (np.abs(arr - np.array([10, 120, 200])).sum(axis=2) < 10)
    rows = np.where(blue.any(axis=1))[0]
    assert rows.size and rows.max() < size[1] * 0.8  # the scene sits in the upper part
    dark = arr.sum(axis=2) < 200
    below = dark[rows.max() + 1:]
    assert below.sum() > 200  # narration ink below the image


def test_page_number_in_footer() -> None:
    scene = Image.new("RGB", (64, 48), (255, 255, 255))
    a = np.asarray(render_page(scene_image=scene, narration="x", page_number=1))
    b = np.asarray(render_page(scene_image=scene, narration="x", page_number=8))
    diff = np.argwhere((a != b).any(axis=2))
    assert diff.size and diff[:, 0].min() > 1280 * 0.9  # only the footer differs


def test_devanagari_text_gets_a_devanagari_font(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from atelier_renderer import fonts

    fake = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
            Path("/usr/share/fonts/truetype/noto/NotoSansDevanagari-Regular.ttf"),
            Path("/usr/share/fonts/truetype/noto/NotoSansDevanagari-Bold.ttf"))
    monkeypatch.setattr(fonts, "_installed", lambda: fake)
    assert fonts.font_path("अम्मू ने सीखा").name == "NotoSansDevanagari-Regular.ttf"
    assert fonts.font_path("अम्मू", bold=True).name == "NotoSansDevanagari-Bold.ttf"
    assert fonts.font_path("Ammu").name == "DejaVuSans.ttf"

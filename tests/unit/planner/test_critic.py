"""The critic: per-region verdicts from a VLM, and an explicit 'absent' without one."""

from __future__ import annotations

import io
from pathlib import Path

from atelier_contracts.plans import Box, LayoutPlan, Region, RegionalPlan
from atelier_planner.common import RULES_PLANNER
from atelier_planner.critic import critic_from_settings, critique
from atelier_runtime.settings import Settings
from llm_double import ChatDouble, data_of, images_of
from PIL import Image


def two_colour_image() -> bytes:
    img = Image.new("RGB", (400, 200), (200, 30, 30))
    img.paste((30, 60, 200), (200, 0, 400, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def layout() -> LayoutPlan:
    return LayoutPlan(plan_id="p", seed=1, width=400, height=200, planner=RULES_PLANNER, global_caption="two things",
                      boxes=[Box(bbox=(0, 0, 1, 1), caption="a table", role="background"),
                             Box(bbox=(0.05, 0.1, 0.45, 0.9), caption="a red apple", role="entity"),
                             Box(bbox=(0.55, 0.1, 0.95, 0.9), caption="a red car", role="entity"),
                             Box(bbox=(0.6, 0.1, 0.9, 0.3), caption="headline: Buy", role="tagline")])


def vlm_settings(double: ChatDouble, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, llm_base_url=double.base_url, llm_model="double-llm", vlm_model="double-vlm",
                    llm_timeout_s=2, llm_max_retries=0)


def test_no_vlm_means_absent_never_a_pass(tmp_path: Path) -> None:
    vlm = critic_from_settings(Settings(home=tmp_path))
    assert vlm is None
    report = critique(two_colour_image(), layout(), vlm=vlm)
    assert report.status == "absent" and report.passed is None and report.verdicts == []
    assert "ATELIER_VLM_MODEL" in report.reason and report.to_dict()["failed_regions"] == []


def test_per_region_verdicts(llm_double: ChatDouble, tmp_path: Path) -> None:
    vlm = critic_from_settings(vlm_settings(llm_double, tmp_path))
    report = critique(two_colour_image(), layout(), vlm=vlm, roles=("entity",))
    assert report.status == "ok" and report.passed is False
    apple, car = report.verdicts
    assert (apple.index, apple.present, apple.matches, apple.confidence) == (1, True, True, 90)
    assert (car.index, car.present, car.matches) == (2, False, False) and "blue" in car.reason
    assert report.failed_regions == [2]
    assert report.model == "openai:double-vlm" and report.prompt_version == "critic.region/v1"
    reqs = llm_double.chat_requests("critic_region")
    assert len(reqs) == 2 and all(r["model"] == "double-vlm" for r in reqs)
    assert data_of(reqs[0])["region_caption"] == "a red apple"
    crop = images_of(reqs[0])[0]  # only the region (with a little margin), not the whole image
    assert crop.width < 200 and crop.getpixel((crop.width // 2, crop.height // 2)) == (200, 30, 30)


def test_a_matching_image_passes_and_text_boxes_are_skipped(llm_double: ChatDouble, tmp_path: Path) -> None:
    plan = layout()
    plan.boxes[0].caption = "a wall painted red and blue"
    plan.boxes[2].caption = "a blue car"
    report = critique(two_colour_image(), plan, vlm=critic_from_settings(vlm_settings(llm_double, tmp_path)))
    assert report.status == "ok" and report.passed is True
    assert [v.role for v in report.verdicts] == ["background", "entity", "entity"]  # no tagline


def test_regional_plans_are_checked_cell_by_cell(llm_double: ChatDouble, tmp_path: Path) -> None:
    plan = RegionalPlan(plan_id="r", seed=1, width=400, height=200, planner=RULES_PLANNER, base_prompt="x",
                        split_ratio="1,1", regions=[Region(row=0, col=0, prompt="a red ball"),
                                                    Region(row=0, col=1, prompt="a red kite")])
    report = critique(two_colour_image(), plan, vlm=critic_from_settings(vlm_settings(llm_double, tmp_path)))
    assert [v.matches for v in report.verdicts] == [True, False] and report.failed_regions == [1]


def test_a_failing_vlm_is_an_error_not_a_pass(llm_double: ChatDouble, tmp_path: Path) -> None:
    llm_double.script = ["http400"]
    report = critique(two_colour_image(), layout(), vlm=critic_from_settings(vlm_settings(llm_double, tmp_path)),
                      roles=("entity",))
    assert report.status == "error" and report.passed is None
    assert report.verdicts[0].error and "HTTP 400" in report.verdicts[0].error

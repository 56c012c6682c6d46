"""The contracts every stage reads and writes through: item ids, storage keys, typed stage inputs and outputs."""

from __future__ import annotations

from typing import Any

import pytest
from atelier_contracts import items, keys
from atelier_contracts.catalogue import CATALOGUE, S_BACKGROUND, stage
from atelier_contracts.colors import contrast_ratio, hex_to_rgb, luminance_contrast, relative_luminance
from atelier_contracts.errors import StageError
from atelier_contracts.stage_io import (
    BackgroundInputs,
    BackgroundOutput,
    CriticInputs,
    DeliverInputs,
    RenderAdInputs,
    RenderAdOutput,
    Skipped,
    read_inputs,
    read_output,
)

PLAN: dict[str, Any] = {
    "plan_id": "ad-1", "seed": 7, "width": 1080, "height": 1080,
    "planner": {"backend": "rules", "model": "rules-v1", "prompt_version": "rules-1"},
    "product": {"name": "P"}, "taglines": [{"text": "Hi", "level": "headline"}],
    "prompts": {"foreground": "a bottle", "background": "a kitchen"}, "variants": [],
}


def test_item_ids_round_trip_and_say_what_they_should_look_like() -> None:
    assert items.parse_size_variant(items.size_variant("728x90", 3)) == ("728x90", 3)
    assert items.parse_scene(items.scene(11)) == 11
    assert items.attempt_name("s2", 0) == "s2" and items.attempt_name("s2", 2) == "s2.r2"
    for bad in ("728x90", "728x90-v", "x-v0", "728x90-v1-v2"):
        with pytest.raises(ValueError, match="<size>-v<variant>"):
            items.parse_size_variant(bad)
    with pytest.raises(ValueError, match="s<scene index>"):
        items.parse_scene("scene2")


def test_storage_keys_have_one_formatter_and_the_job_keys_a_parser() -> None:
    prefix = keys.job_prefix("t1", "j1")
    key = keys.stage_key(prefix, "render.ad", "1080x1080-v0", "png")
    assert key == "tenants/t1/jobs/j1/render.ad/1080x1080-v0.png"
    parsed = keys.parse_stage_key(key)
    assert (parsed.tenant_id, parsed.job_id, parsed.stage, parsed.name, parsed.ext) == (
        "t1", "j1", "render.ad", "1080x1080-v0", "png")
    assert keys.stage_key(prefix, "deliver", "a/../b", "json").endswith("/deliver/a_.._b.json")  # no escape
    assert keys.in_job(key, "t1", "j1") and not keys.in_job(key, "t1", "j") and not keys.in_job(prefix, "t1", "j1")
    assert keys.upload_key("t1", "art_1") == "tenants/t1/uploads/art_1.png"
    assert keys.font_key("t1", "f1") == "tenants/t1/fonts/f1.font"
    for bad in (keys.upload_key("t1", "a"), "tenants/t1/jobs/j1/x", "other/t/jobs/j/s/n.png"):
        with pytest.raises(ValueError, match="not a job artifact key"):
            keys.parse_stage_key(bad)


def test_one_colour_module_for_planner_and_renderer() -> None:
    assert contrast_ratio("#000000", "#FFFFFF") == pytest.approx(21.0)
    assert luminance_contrast(relative_luminance(hex_to_rgb("#777777")), 1.0) == pytest.approx(4.48, abs=0.01)
    with pytest.raises(ValueError, match="#RRGGBB"):
        hex_to_rgb("#FFF")


def test_inputs_parse_by_stage_name_and_unwrap_a_per_item_dependency() -> None:
    up = read_inputs(RenderAdInputs, {"plan.ad_layout": {"plan": PLAN},
                                      "gpu.background": {"1080x1080-v0": {"background_key": "k", "recipe": "inpaint"}}},
                     stage="render.ad", item="1080x1080-v0")
    assert isinstance(up.background, BackgroundOutput) and up.background.background_key == "k"
    assert up.ad_layout.plan.plan_id == "ad-1" and up.critic is None
    skipped = read_inputs(RenderAdInputs, {"plan.ad_layout": {"plan": PLAN}, "gpu.background": {"skipped": "studio"}},
                          stage="render.ad", item="1080x1080-v0")
    assert isinstance(skipped.background, Skipped) and skipped.background.skipped == "studio"
    deliver = read_inputs(DeliverInputs, {"gpu.watermark": {"s0": {"asset_key": "a"}}}, stage="deliver")
    assert deliver.watermark["s0"].asset_key == "a"


def test_a_missing_or_invalid_upstream_output_is_a_non_retryable_error_naming_it() -> None:
    with pytest.raises(StageError, match=r"plan\.ad_layout\.plan is missing") as err:
        read_inputs(BackgroundInputs, {}, stage=S_BACKGROUND, item="1080x1080-v0")
    assert err.value.retryable is False and err.value.field == "upstream.plan.ad_layout.plan"
    with pytest.raises(StageError, match="not a valid AdPlan"):
        read_inputs(BackgroundInputs, {"plan.ad_layout": {"plan": {"plan_id": "x"}}}, stage=S_BACKGROUND)
    with pytest.raises(StageError, match="gpu.background has no background_key"):
        read_inputs(CriticInputs, {"plan.ad_layout": {"plan": PLAN}, "gpu.background": {"seed": 1}},
                    stage="gate.critic", item="1080x1080-v0")


def test_outputs_record_what_the_stage_set_and_refuse_what_breaks_their_model() -> None:
    out = BackgroundOutput(background_key="k", width=64, recipe="layout")
    assert out.to_json() == {"background_key": "k", "width": 64, "recipe": "layout"}  # no null for what was not set
    extra = read_output(BackgroundOutput, {"background_key": "k", "regions": [1, 2]}, stage=S_BACKGROUND)
    assert extra.to_json() == {"background_key": "k", "regions": [1, 2]}  # what a recipe adds is kept
    assert Skipped(skipped="why").to_json() == {"skipped": "why"}
    with pytest.raises(StageError, match="not a valid RenderAdOutput") as err:
        read_output(RenderAdOutput, {"width": 3}, stage="render.ad")
    assert err.value.retryable is False


def test_every_declared_stage_names_models_that_parse_an_empty_upstream_or_say_what_is_missing() -> None:
    for decl in CATALOGUE:
        assert stage(decl.name) is decl
        try:
            read_inputs(decl.inputs, {}, stage=decl.name)
        except StageError as exc:
            assert decl.name in str(exc) and exc.retryable is False
    with pytest.raises(KeyError, match="unknown stage"):
        stage("gpu.nope")

"""RPG on an LLM: recaption a complex prompt into key entities and a grid of regional prompts.

RPG's planner writes its chain of thought and then ``Final split ratio: ...`` / ``Regional Prompt: ...``.
Here the model fills a schema in the same order — key entities first, then the rows (each a height and
its cells, each cell a width and a prompt) — and the code writes the split ratio in RPG's grammar from
that grid, so the number of regional prompts always equals the number of cells.
"""

from __future__ import annotations

from typing import Any

from atelier_contracts.plans import PlannerInfo, Region, RegionalPlan

from ..common import clean_text
from ..rpg import DEFAULT_BASE_RATIO, MAX_REGIONS, grid_split_ratio, ratio_grid
from .engines import Engine
from .runner import Problem, Result, Task, run_task
from .schema import Limits, array, boolean, integer, obj, string

SHARED_CLASS_BASE_RATIO = 0.5  # RPG's README: a base prompt helps when the entities share a class


def recaption_schema(limits: Limits) -> dict[str, Any]:
    cell = obj({"width": integer(1, 10), "prompt": string(limits.long)})
    row = obj({"height": integer(1, 10), "cells": array(cell, 1, 4)})
    return obj({"key_entities": array(string(limits.short), 1, min(6, max(1, limits.list_items * 3))),
                "rows": array(row, 1, 4), "entities_share_class": boolean()})


def recaption_task(caption: str, *, limits: Limits, plan_id: str, seed: int, width: int, height: int,
                   negative_prompt: str, planner: PlannerInfo) -> Task[RegionalPlan]:
    base = clean_text(caption)

    def build(answer: dict[str, Any]) -> RegionalPlan:
        rows = answer["rows"]
        split = grid_split_ratio([(r["height"], [c["width"] for c in r["cells"]]) for r in rows])
        regions = [Region(row=i, col=j, prompt=c["prompt"]) for i, r in enumerate(rows) for j, c in enumerate(r["cells"])]
        ratio = SHARED_CLASS_BASE_RATIO if answer["entities_share_class"] else DEFAULT_BASE_RATIO
        return RegionalPlan(plan_id=plan_id, seed=seed, width=width, height=height, negative_prompt=negative_prompt,
                            planner=planner, base_prompt=base, base_ratio=ratio, split_ratio=split, regions=regions)

    def check(plan: RegionalPlan) -> list[Problem]:
        if len(plan.regions) > MAX_REGIONS:
            return [Problem(f"the grid has {len(plan.regions)} cells; use at most {MAX_REGIONS} (merge small entities)")]
        return []

    def last_resort(plan: RegionalPlan) -> tuple[RegionalPlan, list[str]]:
        # keep whole rows, top first, while they fit; a first row that alone is too wide keeps its first cells

        grid = ratio_grid(plan.split_ratio)
        kept: list[tuple[Any, list[Any]]] = []
        regions: list[Region] = []
        for r, (h, widths) in enumerate(grid):
            cells = [x for x in plan.regions if x.row == r]
            if len(regions) + len(cells) > MAX_REGIONS:
                if not kept:
                    kept.append((h, widths[:MAX_REGIONS]))
                    regions = [x.model_copy(update={"row": 0}) for x in cells[:MAX_REGIONS]]
                break
            kept.append((h, widths))
            regions += [x.model_copy(update={"row": len(kept) - 1}) for x in cells]
        split = grid_split_ratio(kept)  # type: ignore[arg-type]
        fixed = plan.model_copy(update={"split_ratio": split, "regions": regions})
        return RegionalPlan.model_validate(fixed.model_dump()), [f"grid cut to {len(regions)} cells"]

    return Task(prompt_id="rpg.recaption", data={"caption": base, "max_regions": MAX_REGIONS},
                schema=recaption_schema(limits), build=build, check=check, last_resort=last_resort)


def recaption(engine: Engine, caption: str, *, limits: Limits, plan_id: str, seed: int, width: int, height: int,
              negative_prompt: str = "", planner: PlannerInfo) -> Result[RegionalPlan]:
    """An RPG RegionalPlan for ``caption`` from the LLM (raises an LLMError when it cannot make one)."""
    if not clean_text(caption):
        raise ValueError("cannot recaption an empty prompt")
    return run_task(engine, recaption_task(caption, limits=limits, plan_id=plan_id, seed=seed, width=width,
                                           height=height, negative_prompt=negative_prompt, planner=planner))

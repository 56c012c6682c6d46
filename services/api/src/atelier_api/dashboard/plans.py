"""A job's plans, read from the outputs the planning stages stored on their stage rows, ready to draw.

Campaigns: the RPG regional plan of the background (``plan.ad_prompts``) as its split grid, and one
layout per target size (``plan.ad_layout``). Stories: each scene's cast boxes (``plan.scenes``, laid
out by ``plan.scene_layout`` when it has run). Everything is drawn in 0..1 canvas coordinates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from atelier_contracts.catalogue import S_AD_LAYOUT, S_AD_PROMPTS, S_SCENE_LAYOUT, S_SCENES
from atelier_contracts.layouts import CampaignLayout
from atelier_contracts.plans import AdPlan, Box, LayoutPlan, RegionalPlan, StoryPlan, split_ratio_to_boxes
from atelier_control.jobs import get_job
from atelier_control.models import Stage
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

PLAN_STAGES = (S_AD_PROMPTS, S_AD_LAYOUT, S_SCENES, S_SCENE_LAYOUT)


@dataclass(frozen=True)
class DrawnBox:
    """A box in canvas pixels with its label (what the dashboard writes on it)."""

    x: float
    y: float
    w: float
    h: float
    role: str
    label: str
    caption: str
    z: int = 0


@dataclass
class Canvas:
    title: str
    width: int
    height: int
    boxes: list[DrawnBox] = field(default_factory=list)
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def font(self) -> float:
        """Label size in canvas units: about a 32nd of the long side, so labels read alike at any aspect."""
        return max(8.0, max(self.width, self.height) / 32)


@dataclass
class ScenePlan:
    index: int
    narration: str
    backdrop: str
    canvas: Canvas


@dataclass
class JobPlans:
    kind: str
    prompts: dict[str, str] = field(default_factory=dict)
    negative_prompt: str = ""
    regional: Canvas | None = None
    layouts: list[Canvas] = field(default_factory=list)
    spec_layout: Canvas | None = None  # a campaign's own layout (spec.layout), as submitted
    story_title: str = ""
    culture_notes: list[str] = field(default_factory=list)
    characters: list[dict[str, str]] = field(default_factory=list)
    scenes: list[ScenePlan] = field(default_factory=list)
    planner: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.regional or self.layouts or self.scenes or self.spec_layout)


def _label(box: Box) -> str:
    caption = box.caption.strip()
    if caption.lower().startswith(box.role + ":"):
        caption = caption[len(box.role) + 1:].strip()
    return f"{box.role}: {caption[:48]}{'…' if len(caption) > 48 else ''}" if caption else box.role


def draw_box(box: Box, width: int, height: int, *, label: str | None = None) -> DrawnBox:
    x1, y1, x2, y2 = box.bbox
    return DrawnBox(x=x1 * width, y=y1 * height, w=(x2 - x1) * width, h=(y2 - y1) * height, role=box.role,
                    label=label or _label(box), caption=box.caption, z=box.z)


def layout_canvas(layout: LayoutPlan, *, title: str, width: int | None = None, height: int | None = None,
                  caption: bool = True) -> Canvas:
    w, h = width or layout.width, height or layout.height
    boxes = sorted((draw_box(b, w, h) for b in layout.boxes), key=lambda d: (d.z, -(d.w * d.h)))
    return Canvas(title=title, width=w, height=h, boxes=boxes, caption=layout.global_caption if caption else "",
                  notes=[f"grounding fraction {layout.grounding_fraction:.2f}"])


def regional_canvas(plan: RegionalPlan) -> Canvas:
    """The RPG split grid: one cell per region, labelled with its regional prompt."""
    prompts = {(r.row, r.col): r.prompt for r in plan.regions}
    boxes = []
    for row, col, (x1, y1, x2, y2) in split_ratio_to_boxes(plan.split_ratio):
        prompt = prompts.get((row, col), "")
        boxes.append(DrawnBox(x=x1 * plan.width, y=y1 * plan.height, w=(x2 - x1) * plan.width,
                              h=(y2 - y1) * plan.height, role="region", caption=prompt,
                              label=f"r{row}c{col}: {prompt[:56]}{'…' if len(prompt) > 56 else ''}"))
    return Canvas(title=f"split {plan.split_ratio}", width=plan.width, height=plan.height, boxes=boxes,
                  caption=plan.base_prompt, notes=[f"base ratio {plan.base_ratio:.2f}"])


def ad_plan_canvases(plan: AdPlan) -> list[Canvas]:
    out = []
    for v in plan.variants:
        # every size shares the plan's prompts (shown once above the layouts)
        c = layout_canvas(v.layout, title=v.target.name, width=v.target.w, height=v.target.h, caption=False)
        styles = ", ".join(f"{s.box_role} {s.color}" + (f" on {s.underlay_color}" if s.underlay_color else "")
                           for s in v.text_styles)
        if styles:
            c.notes.append(f"text: {styles}")
        out.append(c)
    return out


def story_scenes(plan: StoryPlan, layouts: list[LayoutPlan] | None = None) -> list[ScenePlan]:
    """Each scene with its cast boxes (labelled by character name, pose and expression)."""
    names = {c.id: c.name for c in plan.characters}
    by_index = dict(enumerate(layouts or []))
    out = []
    for n, scene in enumerate(sorted(plan.scenes, key=lambda s: s.index)):
        layout = by_index.get(n)
        w, h = (layout.width, layout.height) if layout else (plan.width, plan.height)
        boxes = [DrawnBox(x=0, y=0, w=w, h=h, role="background", label=f"backdrop: {scene.backdrop[:48]}",
                          caption=scene.backdrop, z=-1)]
        for member in scene.cast:
            who = names.get(member.character_id, member.character_id)
            boxes.append(draw_box(member.box, w, h, label=f"{who} · {member.pose}, {member.expression}"))
        canvas = Canvas(title=f"scene {scene.index + 1}", width=w, height=h, boxes=boxes, caption=scene.scene_prompt)
        out.append(ScenePlan(index=scene.index, narration=scene.narration, backdrop=scene.backdrop, canvas=canvas))
    return out


def stage_outputs(session: Session, *, tenant_id: str, job_id: str, stages: tuple[str, ...] = PLAN_STAGES
                  ) -> dict[str, dict[str, Any]]:
    """Outputs of the job's succeeded single-item stages named in ``stages`` (404 for others' jobs)."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = session.execute(select(Stage.name, Stage.output).where(
        Stage.job_id == job_id, Stage.name.in_(stages), Stage.item == "", Stage.status == "succeeded"))
    return {name: output for name, output in rows if isinstance(output, dict)}


def _parse(model: Any, data: Any, what: str, problems: list[str]) -> Any:
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.append(f"{what} does not read as a {model.__name__}: {exc.error_count()} error(s)")
        log.warning("%s is not a valid %s: %s", what, model.__name__, exc)
        return None


def job_plans(session: Session, *, tenant_id: str, job_id: str) -> JobPlans:
    """Everything the Plans page draws for one job."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    return plans_from_outputs(job.kind, stage_outputs(session, tenant_id=tenant_id, job_id=job_id), spec=job.spec)


SPEC_LAYOUT_SIDE = 1000  # spec.layout is drawn on a square: its boxes are fractions of whatever size they fit


def spec_layout_canvas(layout: Any) -> Canvas | None:
    """A campaign's ``spec.layout`` as submitted (``CampaignLayout``), or None when it does not read as one."""
    try:
        parsed = CampaignLayout.model_validate(layout)
    except ValidationError:
        return None
    side = SPEC_LAYOUT_SIDE
    boxes = [DrawnBox(x=b.bbox[0] * side, y=b.bbox[1] * side, w=(b.bbox[2] - b.bbox[0]) * side,
                      h=(b.bbox[3] - b.bbox[1]) * side, role=b.role, caption=b.caption,
                      label=f"{b.role}: {b.caption[:48]}" if b.caption else b.role) for b in parsed.boxes]
    return Canvas(title="spec.layout", width=side, height=side, boxes=boxes,
                  notes=["the campaign's own layout: every size starts from these boxes, fitted to its safe zone"])


def plans_from_outputs(kind: str, outputs: dict[str, Any], *, spec: dict[str, Any] | None = None) -> JobPlans:
    """Draw the planning stages' outputs (a job's stage rows, or a plan preview's ``stages``) by stage name;
    ``spec``: the job's spec (a campaign's own ``layout`` is drawn as submitted, and named on each size)."""
    out = JobPlans(kind=kind)
    outputs = {k: v for k, v in outputs.items() if isinstance(v, dict)}
    own = (spec or {}).get("layout") if kind == "campaign" else None
    if own is not None:
        out.spec_layout = spec_layout_canvas(own)
    if kind == "campaign":
        prompts_out = outputs.get(S_AD_PROMPTS) or {}
        out.prompts = {k: str(v) for k, v in (prompts_out.get("prompts") or {}).items()}
        out.negative_prompt = str(prompts_out.get("negative_prompt") or "")
        regional = _parse(RegionalPlan, prompts_out.get("regional"), f"{S_AD_PROMPTS}.regional", out.problems)
        if regional is not None:
            out.regional = regional_canvas(regional)
            out.planner = regional.planner.model_dump()
        ad = _parse(AdPlan, (outputs.get(S_AD_LAYOUT) or {}).get("plan"), f"{S_AD_LAYOUT}.plan", out.problems)
        if ad is not None:
            out.layouts = ad_plan_canvases(ad)
            out.planner = ad.planner.model_dump()
            if out.spec_layout is not None:
                for c in out.layouts:
                    c.notes.append("from spec.layout")
        out.waiting = [s for s in (S_AD_PROMPTS, S_AD_LAYOUT) if s not in outputs]
        return out
    story = _parse(StoryPlan, (outputs.get(S_SCENES) or {}).get("plan"), f"{S_SCENES}.plan", out.problems)
    layouts_raw = (outputs.get(S_SCENE_LAYOUT) or {}).get("layouts")
    layouts = None
    if isinstance(layouts_raw, list):
        parsed = [_parse(LayoutPlan, lp, f"{S_SCENE_LAYOUT}.layouts[{i}]", out.problems)
                  for i, lp in enumerate(layouts_raw)]
        layouts = [lp for lp in parsed if lp is not None] if all(p is not None for p in parsed) else None
    if story is not None:
        out.story_title = story.title
        out.culture_notes = list(story.culture_notes)
        out.characters = [{"id": c.id, "name": c.name, "description": c.description} for c in story.characters]
        out.scenes = story_scenes(story, layouts)
        out.planner = story.planner.model_dump()
    out.waiting = [s for s in (S_SCENES, S_SCENE_LAYOUT) if s not in outputs]
    return out

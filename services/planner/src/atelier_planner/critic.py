"""The critic: a VLM checks, region by region, whether a generated image matches its plan.

RPG's closed loop and LayoutSAM-Eval's region check, as one function the quality gates call::

    report = critique(image_bytes, layout_plan, vlm=vlm_engine_or_None)
    report.status   # "ok" | "absent" (no VLM configured) | "error" (the VLM failed on some region)
    report.passed   # True / False when status is "ok"; None otherwise — the critic never passes by default
    report.verdicts # one per checked region: present, matches, confidence 0..100, reason

Each region (a ``LayoutPlan`` box, or a ``RegionalPlan`` cell from its split ratio) is cropped with a
little context, scaled to fit ``max_side`` and sent to the VLM with its caption; the answer is a JSON
verdict under a schema. A region passes when the VLM says it is present and matches with confidence of
at least ``min_confidence``. Text, logo, CTA and underlay boxes are skipped by default: the renderer
draws them and checks them with OCR.

With no VLM configured, :func:`critique` returns ``status="absent"`` and ``passed=None`` — an explicit
"not judged", so a gate can decide what to do (regenerate, accept with a warning) instead of being told
a check passed that never ran. :func:`critic_from_settings` builds the VLM from ``ATELIER_VLM_*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from atelier_contracts.plans import LayoutPlan, RegionalPlan, split_ratio_to_boxes
from atelier_runtime.settings import Settings
from PIL import Image

from .backends.llm import vlm_engine
from .llm.engines import Engine
from .llm.errors import LLMError
from .llm.images import crop, data_url, open_image
from .llm.prompts import load_prompt
from .llm.runner import Task, run_task
from .llm.schema import Limits, boolean, integer, obj, string

CRITIC_ROLES = ("entity", "character", "product", "background", "region")
PROMPT_ID = "critic.region"


@dataclass
class RegionVerdict:
    index: int
    role: str
    caption: str
    bbox: tuple[float, float, float, float]
    present: bool | None = None
    matches: bool | None = None
    confidence: int | None = None
    reason: str = ""
    error: str | None = None

    def passed(self, min_confidence: int) -> bool:
        return bool(self.present and self.matches and (self.confidence or 0) >= min_confidence)


@dataclass
class CriticReport:
    status: Literal["ok", "absent", "error"]
    passed: bool | None
    model: str | None = None
    prompt_version: str | None = None
    reason: str = ""
    verdicts: list[RegionVerdict] = field(default_factory=list)
    min_confidence: int = 50

    @property
    def failed_regions(self) -> list[int]:
        """Indexes (box or cell order) of the judged regions that did not pass: to regenerate or re-plan.

        A region the VLM says matches with too little confidence fails too, as in ``passed``.
        """
        return [v.index for v in self.verdicts if v.error is None and not v.passed(self.min_confidence)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (bboxes as lists), as stored in a stage output and an artifact's meta."""
        out = {**asdict(self), "failed_regions": self.failed_regions}
        for v in out["verdicts"]:
            v["bbox"] = list(v["bbox"])
        return out


def critic_schema(limits: Limits) -> dict[str, Any]:
    return obj({"present": boolean(), "matches": boolean(), "confidence": integer(0, 100),
                "reason": string(limits.short)})


def regions_of(plan: LayoutPlan | RegionalPlan, roles: Sequence[str] = CRITIC_ROLES,
               ) -> list[tuple[int, str, str, tuple[float, float, float, float]]]:
    """(index, role, caption, bbox) of every region the critic checks, in plan order."""
    if isinstance(plan, RegionalPlan):
        prompts = {(r.row, r.col): r.prompt for r in plan.regions}
        return [(i, "region", prompts.get((row, col), ""), bbox)
                for i, (row, col, bbox) in enumerate(split_ratio_to_boxes(plan.split_ratio)) if "region" in roles]
    return [(i, b.role, b.caption, b.bbox) for i, b in enumerate(plan.boxes) if b.role in roles and b.caption]


def critique(image: bytes | Image.Image, plan: LayoutPlan | RegionalPlan, *, vlm: Engine | None,
             roles: Sequence[str] = CRITIC_ROLES, min_confidence: int = 50, max_side: int = 512,
             limits: Limits | None = None) -> CriticReport:
    """Per-region verdicts on ``image`` against ``plan`` (see the module docstring)."""
    if vlm is None:
        return CriticReport(status="absent", passed=None, min_confidence=min_confidence,
                            reason="no VLM is configured (set ATELIER_VLM_MODEL): the image was not judged")
    img = open_image(image).convert("RGB")
    limits = limits or Limits()
    global_caption = plan.base_prompt if isinstance(plan, RegionalPlan) else plan.global_caption
    verdicts: list[RegionVerdict] = []
    for index, role, caption, bbox in regions_of(plan, roles):
        v = RegionVerdict(index=index, role=role, caption=caption, bbox=bbox)
        try:
            url = data_url(crop(img, bbox), max_side=max_side)
            task: Task[dict[str, Any]] = Task(
                prompt_id=PROMPT_ID, schema=critic_schema(limits), build=lambda a: a, images=[url],
                data={"region_caption": caption, "role": role, "whole_image_caption": global_caption})
            answer = run_task(vlm, task).value
            v.present, v.matches = bool(answer["present"]), bool(answer["matches"])
            v.confidence, v.reason = int(answer["confidence"]), str(answer["reason"])
        except (LLMError, ValueError) as exc:
            v.error = f"{type(exc).__name__}: {exc}"[:500]
        verdicts.append(v)
    errors = [v for v in verdicts if v.error]
    model = f"{vlm.kind}:{vlm.model}"
    version = load_prompt(PROMPT_ID).version_label
    if errors:
        return CriticReport(status="error", passed=None, model=model, prompt_version=version, verdicts=verdicts,
                            min_confidence=min_confidence,
                            reason=f"the VLM could not judge {len(errors)} of {len(verdicts)} regions")
    passed = all(v.passed(min_confidence) for v in verdicts)
    return CriticReport(status="ok", passed=passed, model=model, prompt_version=version, verdicts=verdicts,
                        min_confidence=min_confidence,
                        reason="every region matches" if passed else "some regions do not match their captions")


def critic_from_settings(settings: Settings, **kwargs: Any) -> Engine | None:
    """The VLM the critic uses (``ATELIER_VLM_MODEL`` on ``ATELIER_VLM_BASE_URL``/``ATELIER_LLM_BASE_URL``), or None."""
    return vlm_engine(settings, **kwargs)

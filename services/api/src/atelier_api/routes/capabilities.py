"""``GET /v1/capabilities``: what this deployment's planner and renderer support — story languages, curated
cultures, ad placements and size limits — so a client can offer only what will be planned honestly."""

from __future__ import annotations

from atelier_contracts import languages, placements
from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..deps import SettingsDep, TenantDep
from ..problems import problem_responses

router = APIRouter(prefix="/v1", tags=["capabilities"], responses=problem_responses(401))


class PlacementView(BaseModel):
    name: str
    size: str = Field(description="`WIDTHxHEIGHT`: what the name is stored as.")
    family: str = Field(description="`iab` (display) or `social`.")
    safe_zone: str | None = Field(description="The planner's safe-zone rule for it.")
    min_text_px: int = Field(description="Text is not set lower than this.")
    max_bytes: int | None = Field(description="The platform's usual file-size cap, where it has one.")


class SizeLimits(BaseModel):
    min_side: int = placements.MIN_SIDE
    max_side: int = placements.MAX_SIDE
    min_area: int = placements.MIN_AREA
    max_aspect: float = placements.MAX_ASPECT


class StoryLanguages(BaseModel):
    written: list[str] = Field(description="Primary language subtags stories are written in without an LLM.")
    any_with_llm: bool = Field(description="True when an LLM planner is configured: it writes any language "
                                           "(falling back to the rules planner's languages only, with a warning).")
    rtl: list[str] = Field(description="Languages set right to left in the storybook.")


class Capabilities(BaseModel):
    planner_backend: str
    story_languages: StoryLanguages
    curated_cultures: list[str] = Field(description="Cultures with a curated lexicon; any other culture string is "
                                                    "planned from the generic lexicon.")
    placements: list[PlacementView]
    placement_aliases: dict[str, str]
    size_limits: SizeLimits


@router.get("/capabilities", response_model=Capabilities, summary="What this deployment plans and renders")
def capabilities(_principal: TenantDep, settings: SettingsDep) -> Capabilities:
    llm = settings.planner_backend != "rules"
    return Capabilities(
        planner_backend=settings.planner_backend,
        story_languages=StoryLanguages(written=list(languages.RULES_LANGUAGES), any_with_llm=llm,
                                       rtl=sorted(languages.RTL)),
        curated_cultures=list(languages.CURATED_CULTURES),
        placements=[PlacementView(name=p.name or p.size, size=p.size, family=p.family, safe_zone=p.channel,
                                  min_text_px=p.min_text_px, max_bytes=p.max_bytes)
                    for p in placements.PLACEMENTS.values()],
        placement_aliases=dict(placements.ALIASES), size_limits=SizeLimits(),
    )

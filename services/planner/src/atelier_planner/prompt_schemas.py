"""The answer schema of every prompt, as a function of the request data (and the size limits).

The schema a request is decoded under is always the one its data implies, and the few-shot examples shipped
with each prompt are checked against the schema of their own data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .critic import critic_schema
from .llm import designer, kahani, paid, rpg
from .llm.schema import Limits

SCHEMAS: dict[str, Callable[[dict[str, Any], Limits], dict[str, Any]]] = {
    "rpg.recaption": lambda _d, lim: rpg.recaption_schema(lim),
    "paid.ad_prompts": lambda _d, lim: paid.prompts_schema(lim),
    "paid.ad_layout": paid.layout_schema,
    "kahani.culture": lambda _d, lim: kahani.culture_schema(lim),
    "kahani.story": lambda _d, lim: kahani.story_schema(lim),
    "kahani.characters": lambda _d, lim: kahani.characters_schema(lim),
    "kahani.scenes": lambda d, lim: kahani.scenes_schema([c["name"] for c in d["characters"]], d["pages"], lim),
    "creatilayout.scene": lambda d, lim: designer.scene_schema([c["name"] for c in d["cast"]], lim),
    "creatilayout.design": lambda d, lim: designer.design_schema(lim, d["max_new_regions"]),
    "critic.region": lambda _d, lim: critic_schema(lim),
}


def schema_for(prompt_id: str, data: dict[str, Any], limits: Limits | None = None) -> dict[str, Any]:
    """The answer schema of ``prompt_id`` for a request carrying ``data``."""
    return SCHEMAS[prompt_id](data, limits or Limits())

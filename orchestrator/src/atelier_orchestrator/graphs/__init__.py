"""Stage graphs by job kind; one readable file per kind."""

from .base import Graph, StageDef
from .campaign import CAMPAIGN
from .story import STORY

GRAPHS: dict[str, Graph] = {"campaign": CAMPAIGN, "story": STORY}

__all__ = ["GRAPHS", "Graph", "StageDef"]

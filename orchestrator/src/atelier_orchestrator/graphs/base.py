"""The shape of a stage graph: stages, their dependencies and how they fan out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atelier_shared.settings import Settings
from atelier_shared.tasks import STAGE_QUEUES

# items(spec, outputs) -> the fan-out keys, or None while an upstream output it needs is missing
ItemsFn = Callable[[dict[str, Any], dict[str, dict[str, Any]]], list[str] | None]
# skip_when(spec, settings) -> a reason to skip the stage for this job, or None to run it. The settings are the
# orchestrator's: what a stage needs to be worth a queue round-trip (a configured VLM, say) is decided here
SkipFn = Callable[[dict[str, Any], Settings], str | None]


@dataclass(frozen=True)
class StageDef:
    """One stage. ``fan_out`` names an item space; two stages with the same item space chain per item."""

    name: str
    after: tuple[str, ...] = ()
    fan_out: str | None = None
    # skip_when(spec, settings) -> a reason to skip the stage for this job (it then succeeds at once with
    # {"skipped": reason} and no task is sent), or None to run it
    skip_when: SkipFn | None = None

    @property
    def queue(self) -> str:
        return STAGE_QUEUES[self.name]


@dataclass(frozen=True)
class Graph:
    kind: str
    stages: tuple[StageDef, ...]
    item_spaces: dict[str, ItemsFn] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for st in self.stages:
            missing = [d for d in st.after if d not in seen]
            if missing:
                raise ValueError(f"{self.kind}: stage {st.name} depends on {missing}, which must come earlier")
            if st.fan_out is not None and st.fan_out not in self.item_spaces:
                raise ValueError(f"{self.kind}: stage {st.name} fans out over unknown item space {st.fan_out}")
            seen.add(st.name)

    def stage(self, name: str) -> StageDef:
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(name)

    def position(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    def items(self, st: StageDef, spec: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> list[str] | None:
        if st.fan_out is None:
            return [""]
        return self.item_spaces[st.fan_out](spec, outputs)

    def per_item(self, st: StageDef, dep: StageDef) -> bool:
        return st.fan_out is not None and st.fan_out == dep.fan_out

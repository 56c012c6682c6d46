"""The shape of a stage graph: stages, their dependencies and how they fan out, checked against the catalogue.

A graph lists the stages of one job kind in an order where every dependency comes first. What a stage is —
its queue, handler, inputs, output and item space — is the stage catalogue's (``atelier_contracts.catalogue``);
the graph only wires it, and :class:`Graph` refuses a wiring the catalogue contradicts: a dependency the
stage does not read, a required input missing, an item space the stage does not fan out over, or an
upstream shape (one item's output, or ``{item: output}``) other than the inputs model expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_origin

from atelier_contracts.catalogue import StageDecl, stage
from atelier_runtime.settings import Settings

# items(spec, outputs) -> the fan-out keys, or None while an upstream output it needs is missing
ItemsFn = Callable[[dict[str, Any], dict[str, dict[str, Any]]], list[str] | None]
# skip_when(spec, settings) -> a reason to skip the stage for this job, or None to run it. The settings are the
# orchestrator's: what a stage needs to be worth a queue round-trip (a configured VLM, say) is decided here
SkipFn = Callable[[dict[str, Any], Settings], str | None]


@dataclass(frozen=True)
class StageDef:
    """One stage of a graph. ``fan_out`` names its item space here (default: the catalogue's, when it has one);
    two stages with the same item space chain per item."""

    name: str
    after: tuple[str, ...] = ()
    fan_out: str | None = None
    # skip_when(spec, settings) -> a reason to skip the stage for this job (it then succeeds at once with
    # {"skipped": reason} and no task is sent), or None to run it
    skip_when: SkipFn | None = None
    # a fan-in that runs on the items that succeeded: one item's failure upstream does not fail the job, it is
    # listed (StageTask.failures, the job's failures) and its siblings are delivered (campaign ``deliver``)
    partial: bool = False

    def __post_init__(self) -> None:
        spaces = self.decl.item_spaces
        if self.fan_out is None and spaces != ("none",):
            if len(spaces) != 1:
                raise ValueError(f"stage {self.name} fans out over one of {list(spaces)}: the graph must say which")
            object.__setattr__(self, "fan_out", spaces[0])

    @property
    def decl(self) -> StageDecl:
        return stage(self.name)

    @property
    def queue(self) -> str:
        return self.decl.queue


@dataclass(frozen=True)
class Graph:
    kind: str
    stages: tuple[StageDef, ...]
    item_spaces: dict[str, ItemsFn] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[str, StageDef] = {}
        for st in self.stages:
            missing = [d for d in st.after if d not in seen]
            if missing:
                raise ValueError(f"{self.kind}: stage {st.name} depends on {missing}, which must come earlier")
            if st.fan_out is not None and st.fan_out not in self.item_spaces:
                raise ValueError(f"{self.kind}: stage {st.name} fans out over unknown item space {st.fan_out}")
            if (st.fan_out or "none") not in st.decl.item_spaces:
                raise ValueError(f"{self.kind}: stage {st.name} fans out over {st.fan_out}; the catalogue says "
                                 f"{list(st.decl.item_spaces)}")
            self._check_inputs(st, seen)
            seen[st.name] = st

    def _check_inputs(self, st: StageDef, earlier: dict[str, StageDef]) -> None:
        """The dependencies are what the stage reads (its inputs model), in the shape it reads them."""
        fields = {(f.alias or n): f for n, f in st.decl.inputs.model_fields.items()}
        unread = [d for d in st.after if d not in fields]
        if unread:
            raise ValueError(f"{self.kind}: stage {st.name} depends on {unread}, which its inputs "
                             f"({st.decl.inputs.__name__}) do not read")
        required = [a for a, f in fields.items() if f.is_required() and a not in st.after]
        if required:
            raise ValueError(f"{self.kind}: stage {st.name} needs {required} ({st.decl.inputs.__name__}) upstream")
        for dep_name in st.after:
            dep = earlier[dep_name]
            by_item = dep.fan_out is not None and dep.fan_out != st.fan_out
            if by_item != (get_origin(fields[dep_name].annotation) is dict):
                shape = "{item: output}" if by_item else "one output"
                raise ValueError(f"{self.kind}: stage {st.name} gets {shape} of {dep_name}, but "
                                 f"{st.decl.inputs.__name__} reads it otherwise")

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

    def downstream(self, name: str) -> list[StageDef]:
        """Every stage that depends on ``name``, directly or through others (graph order)."""
        reached = {name}
        out = []
        for st in self.stages:
            if any(d in reached for d in st.after):
                reached.add(st.name)
                out.append(st)
        return out

    def contains_failure(self, name: str) -> bool:
        """Whether one item of ``name`` may fail without failing the job: the stage fans out, and everything
        downstream either runs per item of the same space (it is not run for the failed item) or is a partial
        fan-in (it gathers the items that succeeded)."""
        st = self.stage(name)
        if st.fan_out is None:
            return False
        below = self.downstream(name)
        return any(d.partial for d in below) and all(d.partial or d.fan_out == st.fan_out for d in below)

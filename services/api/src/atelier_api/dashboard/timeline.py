"""The job page's stage timeline: a Gantt of stage rows (queue wait + run) on one time axis, with step progress."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from atelier_control.models import Event, Stage
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..schemas import JobView, StageView

NICE_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
PROGRESS_SCAN = 2000  # newest stage.progress events read for a running job


@dataclass(frozen=True)
class Progress:
    step: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total if self.total > 0 else 0.0


@dataclass(frozen=True)
class Bar:
    """One stage row on the axis; left/width are percentages of the axis."""

    stage: StageView
    wait_left: float
    wait_width: float
    run_left: float
    run_width: float
    seconds: float | None
    running: bool
    progress: Progress | None

    @property
    def key(self) -> str:
        return f"{self.stage.name}|{self.stage.item}"


@dataclass
class Group:
    """All rows of one stage name (fanned-out stages have one per item)."""

    name: str
    bars: list[Bar] = field(default_factory=list)

    @property
    def status(self) -> str:
        states = {b.stage.status for b in self.bars}
        for s in ("failed", "running", "queued"):
            if s in states:
                return s
        if states == {"succeeded"}:
            return "succeeded"
        if "canceled" in states:
            return "canceled"
        return "running" if "succeeded" in states else "pending"  # some items done, the rest waiting on theirs

    @property
    def done(self) -> int:
        return sum(1 for b in self.bars if b.stage.status == "succeeded")

    @property
    def left(self) -> float:
        spans = [b.wait_left if b.wait_width else b.run_left for b in self.bars if b.wait_width or b.run_width]
        return min(spans) if spans else 0.0

    @property
    def width(self) -> float:
        ends = [b.run_left + b.run_width for b in self.bars if b.run_width]
        ends += [b.wait_left + b.wait_width for b in self.bars if b.wait_width]
        return max(0.0, max(ends) - self.left) if ends else 0.0

    @property
    def seconds(self) -> float | None:
        """Wall time from the first start to the last finish of the stage's rows."""
        starts = [b.stage.started_at for b in self.bars if b.stage.started_at]
        ends = [b.stage.finished_at for b in self.bars if b.stage.finished_at]
        if not starts or not ends or len(ends) < len(self.bars):
            return None
        return (max(ends) - min(starts)).total_seconds()

    @property
    def progress(self) -> Progress | None:
        running = [b.progress for b in self.bars if b.running and b.progress]
        return running[0] if len(running) == 1 else None


@dataclass
class Timeline:
    start: datetime
    end: datetime
    span_s: float
    groups: list[Group]
    ticks: list[tuple[float, str]]

    @property
    def bars(self) -> list[Bar]:
        return [b for g in self.groups for b in g.bars]


def latest_progress(session: Session, *, job_id: str, running: Iterable[tuple[str, str]]) -> dict[str, Progress]:
    """The last ``stage.progress`` step of each running stage row, keyed ``"stage|item"``."""
    wanted = {f"{name}|{item}" for name, item in running}
    if not wanted:
        return {}
    out: dict[str, Progress] = {}
    rows = session.scalars(select(Event.data).where(Event.job_id == job_id, Event.type == "stage.progress")
                           .order_by(Event.id.desc()).limit(PROGRESS_SCAN))
    for data in rows:
        key = f"{data.get('stage')}|{data.get('item', '')}"
        if key in wanted and key not in out:
            try:
                out[key] = Progress(step=int(data["step"]), total=int(data["total"]))
            except (KeyError, TypeError, ValueError):
                continue
            if len(out) == len(wanted):
                break
    return out


def build_timeline(job: JobView, *, now: datetime, progress: dict[str, Progress] | None = None) -> Timeline:
    """Place every stage row on an axis from the job's creation to its end (or now, while it runs)."""
    progress = progress or {}
    start = job.created_at
    end = job.finished_at or now
    for s in job.stages:
        for t in (s.finished_at, s.started_at, s.queued_at):
            if t is not None and t > end:
                end = t
    span = max((end - start).total_seconds(), 1.0)

    def pos(t: datetime | None) -> float:
        if t is None:
            return 0.0
        return min(100.0, max(0.0, 100.0 * (t - start).total_seconds() / span))

    groups: list[Group] = []
    by_name: dict[str, Group] = {}
    for s in job.stages:
        running = s.status == "running"
        run_from = s.started_at
        run_to = s.finished_at or (end if running and run_from else None)
        wait_to = s.started_at or (s.finished_at if s.status in ("canceled", "failed") else None) \
            or (end if s.status == "queued" else None)
        wait_left = pos(s.queued_at) if s.queued_at and wait_to else 0.0
        wait_width = max(0.0, pos(wait_to) - wait_left) if s.queued_at and wait_to else 0.0
        run_left = pos(run_from) if run_from else 0.0
        run_width = max(0.3, pos(run_to) - run_left) if run_from and run_to else 0.0
        seconds = s.seconds if s.seconds is not None else (
            (now - run_from).total_seconds() if running and run_from else None)
        bar = Bar(stage=s, wait_left=wait_left, wait_width=wait_width, run_left=run_left, run_width=run_width,
                  seconds=seconds, running=running, progress=progress.get(f"{s.name}|{s.item}"))
        group = by_name.get(s.name)
        if group is None:
            group = by_name[s.name] = Group(s.name)
            groups.append(group)
        group.bars.append(bar)
    return Timeline(start=start, end=end, span_s=span, groups=groups, ticks=axis_ticks(span))


def axis_ticks(span_s: float, *, target: int = 5) -> list[tuple[float, str]]:
    """About ``target`` round tick marks over ``[0, span_s]``: ``(percent, label)``."""
    step = next((s for s in NICE_STEPS_S if span_s / s <= target), NICE_STEPS_S[-1])
    ticks = []
    t = 0.0
    while t <= span_s + 1e-9:
        ticks.append((100.0 * t / span_s, duration(t, short=True)))
        t += step
    return ticks


def duration(seconds: float | None, *, short: bool = False) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min`` (``short``: the axis form, ``4 min``)."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s" if short else f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.0f} s" if short else f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min" if short and s == 0 else f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"


def failing_stages(stages: Sequence[StageView]) -> list[StageView]:
    return [s for s in stages if s.status == "failed"]


def running_keys(stages: Sequence[Stage] | Sequence[StageView]) -> list[tuple[str, str]]:
    return [(s.name, s.item) for s in stages if s.status == "running"]

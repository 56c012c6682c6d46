"""A driver for the quality-gate engine tests: plays every worker, and answers gate stages with a given function."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from atelier_contracts.tasks import ArtifactRecord, StageResult, StageTask
from atelier_orchestrator import engine
from atelier_runtime.settings import Settings

GateFn = Callable[[StageTask], dict[str, Any]]


def gate_settings(**kw: Any) -> Settings:
    return Settings(**{"stage_max_attempts": 2, "retry_backoff_s": 0.0, "gate_max_attempts": 3,
                       "gate_max_regenerations": 4, **kw})


def attempt_name(t: StageTask) -> str:
    """A gated item's artifact name: ``s0`` first, then ``s0.r1``... (as the GPU stages name them)."""
    return t.item if not t.regeneration else f"{t.item}.r{t.regeneration}"


class GateDriver:
    """Runs a job to its end: each queued stage answers at once; ``produce`` says what a stage returns."""

    default_item = ""

    def __init__(self, db: Any, settings: Settings | None, gate: GateFn) -> None:
        self.db, self.settings, self.gate = db, settings, gate
        self.sent: list[tuple[str, list[Any], float | None]] = []
        self.ran: list[StageTask] = []

    def send(self, name: str, args: list[Any], countdown: float | None) -> None:
        self.sent.append((name, args, countdown))

    def produce(self, t: StageTask) -> tuple[dict[str, Any], list[ArtifactRecord]]:
        return {"done": t.stage}, []

    def finish(self, t: StageTask) -> None:
        now = datetime.now(UTC)
        output, arts = self.produce(t)
        res = StageResult(job_id=t.job_id, stage_id=t.stage_id, attempt=t.attempt, status="succeeded", output=output,
                          artifacts=arts, worker="w", started_at=now, finished_at=now + timedelta(milliseconds=5),
                          regeneration=t.regeneration)
        s = self.settings or Settings()
        engine.run_in_tx(self.db, self.send, lambda session, o: engine.stage_done(session, res, o, settings=s))

    def run(self, job_id: str) -> None:
        engine.run_in_tx(self.db, self.send, lambda s, o: engine.start_job(s, job_id, o, settings=self.settings))
        while True:
            tasks = [StageTask.model_validate(a[0]) for n, a, _ in self.sent if n.startswith("atelier.stage.")]
            self.sent.clear()
            if not tasks:
                return
            for t in tasks:
                self.ran.append(t)
                self.finish(t)

    def runs(self, stage: str, item: str | None = None) -> list[StageTask]:
        item = self.default_item if item is None else item
        return [t for t in self.ran if t.stage == stage and t.item == item]

"""The orchestrator's own cost per stage, in-process: `python bench/engine_bench.py [--jobs N]`.

What `make scale` reports as "orchestrator CPU per stage" is the whole orchestrator process: Celery's consumer and
trace, the broker messages, the reconciler, and the engine. This bench isolates the engine, for profiling and for
before/after comparisons of a change to it: a fresh PostgreSQL database at the latest migration, N jobs (campaigns
of 3 sizes x 2 variants and 4-page stories, alternately), and every stage item answered at once with a successful
result carrying one artifact, through the production ``engine.start_job`` / ``engine.stage_done`` in their own
transactions (``engine.run_in_tx``); the tasks it queues are serialised as the broker would, never sent.

Prints one JSON line: stage results handled, the engine's CPU per result (mean and p50, ms: process CPU time around
the result's validation and its transaction), SQL statements per result, and the wall time. Nothing is written to
bench/results.json: the figures belong in the notes of the change they measure. Profile it with
``py-spy record --gil -f raw -o engine.raw -- python bench/engine_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CAMPAIGN = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d"}, "taglines": ["t"],
            "sizes": ["1080x1080", "1200x628", "300x250"], "variants": 2}
STORY = {"premise": "p", "culture": "Japan", "pages": 4}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="a PostgreSQL server's maintenance database (a throwaway database is made beside it)")
    args = ap.parse_args()

    import psycopg
    from atelier_contracts.specs import CampaignSpec, StorySpec
    from atelier_contracts.tasks import ArtifactRecord, StageResult, StageTask
    from atelier_control.auth import create_tenant
    from atelier_control.db import make_engine, session_factory, session_scope
    from atelier_control.jobs import create_job
    from atelier_migrations import upgrade
    from atelier_orchestrator import engine
    from atelier_runtime.settings import Settings
    from sqlalchemy import event

    name = f"atelier_engine_bench_{uuid.uuid4().hex[:8]}"
    base = args.pg.rsplit("/", 1)[0]
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_engine = None
    try:
        url = f"{base}/{name}"
        upgrade(url)
        db_engine = make_engine(url)
        factory = session_factory(db_engine)
        settings = Settings()
        statements = [0]
        event.listen(db_engine, "before_cursor_execute", lambda *_a, **_k: statements.__setitem__(0, statements[0] + 1))
        sent: list[str] = []

        def send(task: str, task_args: list[Any], _countdown: float | None) -> None:
            if task.startswith("atelier.stage."):
                sent.append(json.dumps(task_args[0]))  # what the broker would carry

        with session_scope(factory) as s:
            tenant_id = create_tenant(s, "engine-bench")[0].id
        jobs = []
        for i in range(args.jobs):
            with session_scope(factory) as s:
                spec = CampaignSpec.model_validate(CAMPAIGN) if i % 2 == 0 else StorySpec.model_validate(STORY)
                jobs.append(create_job(s, tenant_id=tenant_id, kind="campaign" if i % 2 == 0 else "story",
                                       spec=spec)[0].id)
        cpu: list[float] = []
        counted = 0
        t0 = time.perf_counter()
        for job_id in jobs:
            engine.run_in_tx(factory, send, lambda s, o, j=job_id: engine.start_job(s, j, o, settings=settings))
        while sent:
            tasks = [StageTask.model_validate_json(m) for m in sent]
            sent.clear()
            for t in tasks:
                now = datetime.now(UTC)
                output: dict[str, Any] = {"done": t.stage, "item": t.item}
                if t.stage == "plan.characters":
                    output["characters"] = [{"id": "c0"}, {"id": "c1"}]
                art = ArtifactRecord(key=f"{t.key_prefix}/{t.stage}/{t.item or 'x'}.png", kind="asset",
                                     name=t.item or "x", content_type="image/png", size_bytes=1, sha256="0" * 64)
                payload = StageResult(job_id=t.job_id, stage_id=t.stage_id, attempt=t.attempt, status="succeeded",
                                      output=output, artifacts=[art], worker="bench", started_at=now,
                                      finished_at=now + timedelta(milliseconds=5),
                                      regeneration=t.regeneration).model_dump(mode="json")
                before = statements[0]
                c0 = time.process_time()
                result = StageResult.model_validate(payload)
                engine.run_in_tx(factory, send, lambda s, o, r=result: engine.stage_done(s, r, o, settings=settings))
                cpu.append(time.process_time() - c0)
                counted += statements[0] - before
        wall = time.perf_counter() - t0
        print(json.dumps({"jobs": args.jobs, "stage_results": len(cpu),
                          "cpu_ms_per_result": round(statistics.mean(cpu) * 1000, 3),
                          "cpu_ms_p50": round(statistics.median(cpu) * 1000, 3),
                          "sql_statements_per_result": round(counted / max(1, len(cpu)), 2),
                          "wall_s": round(wall, 2)}))
    finally:
        if db_engine is not None:
            db_engine.dispose()
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

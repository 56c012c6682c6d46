"""The small chaos run of `make test`: every worker role SIGKILLed once mid-run and restarted,
Redis restarted once (its AOF keeps the queues), while six mixed jobs run in services mode with SSE
clients and a webhook receiver attached. `make chaos` runs the full version (bench/chaos.py).

Nothing may be lost: every job succeeds, every artifact is in storage with the hash the database
records, no storage key is an orphan, no stage is left behind, every SSE client sees every event of its
job (resuming with Last-Event-ID), and every webhook message arrives; a second time only where the
dispatcher was killed with it in flight (webhooks are at least once: a receiver dedupes on ``webhook-id``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.chaos import ROLES, ChaosConfig, dump, run_chaos

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (make sysdeps)")]


def test_small_chaos_run_loses_nothing(tmp_path: Path, tiny_models: Path) -> None:
    cfg = ChaosConfig(jobs=6, kills=len(ROLES), redis_restart=True, pg_drop=False, api_restart=False, seed=1,
                      timeout_s=420)
    result = run_chaos(cfg, tmp_path / "chaos", tiny_models)
    report = dump(result)
    assert result["kills"] == len(ROLES), report  # each role once (the orchestrator included)
    assert any("restarted redis" in f for f in result["faults"]), report
    assert result["jobs_succeeded"] == cfg.jobs, report
    assert result["jobs_lost"] == 0, report
    assert result["artifacts_missing"] == 0, report
    assert result["orphan_keys"] == 0, report
    assert result["stages_stuck"] == 0, report
    assert result["sse_events_missed"] == 0, report
    assert result["webhooks_missing"] == 0, report
    # at least once: only a dispatcher SIGKILLed with a message in flight may send it twice (same webhook-id)
    assert result["duplicate_webhooks_unexplained"] == 0, report

"""A real diffusion worker process on Redis drains queued background tasks into one batch, and a SIGKILL
mid-batch loses none of them (the drained messages are redelivered like Celery's own)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.keys import job_prefix
from atelier_contracts.tasks import (
    Q_GPU_DIFFUSION,
    Q_ORCHESTRATOR,
    T_STAGE_DONE,
    T_STAGE_STARTED,
    StageTask,
    stage_task_name,
)
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from kombu import Connection

from tests.procs import Proc

pytestmark = pytest.mark.integration

PLANNER = {"backend": "rules", "model": "rules", "prompt_version": "1"}
LAYOUT = {"plan_id": "l", "seed": 3, "width": 1080, "height": 1080, "planner": PLANNER, "global_caption": "a table",
          "boxes": [{"bbox": [0.1, 0.4, 0.5, 0.95], "caption": "a vase", "role": "entity"}]}
PLAN = {"plan_id": "ad", "seed": 3, "width": 1080, "height": 1080, "planner": PLANNER, "product": {},
        "taglines": [{"text": "Hi", "level": "headline"}],
        "prompts": {"foreground": "a bottle", "background": "a marble table"},
        "variants": [{"target": {"w": 1080, "h": 1080, "name": "1080x1080"}, "layout": LAYOUT}]}


def _payload(job: str, variant: int) -> dict[str, Any]:
    return StageTask(job_id=job, tenant_id="t1", stage_id=f"{job}:{variant}", stage="gpu.background",
                     item=f"1080x1080-v{variant}", kind="campaign", spec={},
                     upstream={"plan.ad_layout": {"plan": PLAN}}, key_prefix=job_prefix("t1", job)
                     ).model_dump(mode="json")


def _collect(redis_url: str, until: Any, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """Orchestrator-queue messages (task name, payload) until ``until(messages)`` is true."""
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    with Connection(redis_url) as conn:
        ch = conn.default_channel
        while time.monotonic() < deadline and not until(got):
            msg = ch.basic_get(Q_ORCHESTRATOR, no_ack=True)
            if msg is None:
                time.sleep(0.05)
                continue
            got.append((msg.headers["task"], msg.decode()[0][0]))
    return got


@pytest.fixture()
def env(redis_url: str, tiny_models: Path, tmp_path: Path) -> dict[str, str]:
    with Connection(redis_url) as conn:
        for q in (Q_GPU_DIFFUSION, Q_ORCHESTRATOR):
            conn.default_channel.queue_declare(q)
            conn.default_channel.queue_purge(q)
    return dict(os.environ, PYTHONUNBUFFERED="1", ATELIER_HOME=str(tmp_path / "home"), ATELIER_BROKER_URL=redis_url,
                ATELIER_STORAGE="local", ATELIER_MODELS_FILE=str(tiny_models), ATELIER_GEN_MAX_SIDE="64",
                ATELIER_GPU_MAX_BATCH="4", ATELIER_VISIBILITY_TIMEOUT_S="6",
                ATELIER_UNACKED_RESTORE_INTERVAL_S="1", ATELIER_HEARTBEAT_INTERVAL_S="1",
                ATELIER_STALL_AFTER_S="4")


def _done(messages: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {p["stage_id"]: p for n, p in messages if n == T_STAGE_DONE and p["status"] == "succeeded"}


def test_worker_drains_four_queued_backgrounds_into_one_call(redis_url, env, tmp_path):
    app = make_celery(Settings(broker_url=redis_url))
    job = uuid.uuid4().hex[:10]
    for v in range(4):  # queued before the worker starts: all four wait in Redis
        app.send_task(stage_task_name("gpu.background"), args=[_payload(job, v)])
    worker = Proc("gpu-batch", ["worker", "--queues", "gpu.diffusion", "--loglevel", "WARNING"], env,
                  tmp_path).start()
    try:
        msgs = _collect(redis_url, lambda m: len(_done(m)) == 4, 120)
    finally:
        worker.stop()
    done = _done(msgs)
    assert len(done) == 4, worker.tail()
    assert {r["output"]["batch_size"] for r in done.values()} == {4}
    assert len({r["output"]["seed"] for r in done.values()}) == 4
    assert all(r["gpu_seconds"] > 0 and r["artifacts"][0]["kind"] == "background" for r in done.values())
    home = tmp_path / "home" / "artifacts"
    assert all((home / r["output"]["background_key"]).is_file() for r in done.values())


def test_sigkill_mid_batch_redelivers_every_drained_task(redis_url, env, tmp_path):
    app = make_celery(Settings(broker_url=redis_url))
    job = uuid.uuid4().hex[:10]
    # slow enough steps that the kill lands inside the batch
    env = dict(env, ATELIER_GEN_STEPS="150", ATELIER_GEN_MAX_SIDE="128")
    for v in range(3):
        app.send_task(stage_task_name("gpu.background"), args=[_payload(job, v)])
    victim = Proc("gpu-victim", ["worker", "--queues", "gpu.diffusion", "--loglevel", "WARNING"], env,
                  tmp_path).start()
    try:
        started = _collect(redis_url, lambda m: sum(n == T_STAGE_STARTED for n, _ in m) >= 2, 120)
        assert sum(n == T_STAGE_STARTED for n, _ in started) >= 2, victim.tail()  # the lead and a drained one
        time.sleep(1.0)
        victim.kill()
        assert not _done(started)
    finally:
        victim.kill()
    survivor = Proc("gpu-survivor", ["worker", "--queues", "gpu.diffusion", "--loglevel", "WARNING"],
                    dict(env, ATELIER_GEN_STEPS="2"), tmp_path).start()
    try:
        msgs = _collect(redis_url, lambda m: len(_done(m)) == 3, 150)
    finally:
        survivor.stop()
    assert set(_done(msgs)) == {f"{job}:{v}" for v in range(3)}, survivor.tail()


def test_a_message_it_cannot_batch_goes_back_to_the_head_of_the_redis_queue(redis_url, env, tmp_path):
    from atelier_gpu import serving
    from atelier_runtime.stage_runner import StageContext, WorkerResources

    settings = Settings(broker_url=redis_url, home=tmp_path / "h")
    app = make_celery(settings)
    job = uuid.uuid4().hex[:10]
    scene = StageTask(job_id=job, tenant_id="t1", stage_id=f"{job}:s0", stage="gpu.scene", item="s0", kind="story",
                      spec={}, upstream={}, key_prefix=job_prefix("t1", job)).model_dump(mode="json")
    app.send_task(stage_task_name("gpu.scene"), args=[scene])
    app.send_task(stage_task_name("gpu.background"), args=[_payload(job, 1)])
    ctx = StageContext(StageTask.model_validate(_payload(job, 0)), WorkerResources(settings), app)
    with app.connection_for_read() as conn:
        taken = serving.take(ctx, conn, 3, {"gpu.background": lambda c: None})
        assert taken == []  # the scene at the head stopped the drain, untouched
    with Connection(redis_url) as conn:
        ch = conn.default_channel
        first, second = ch.basic_get(Q_GPU_DIFFUSION, no_ack=True), ch.basic_get(Q_GPU_DIFFUSION, no_ack=True)
    assert first.headers["task"] == stage_task_name("gpu.scene")
    assert second.headers["task"] == stage_task_name("gpu.background")

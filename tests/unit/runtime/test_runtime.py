"""Runtime state (cancel flags, heartbeats, leases, done marks) in memory and in a real Redis; duplicate skips."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import run_stage
from atelier_runtime.state import MemoryRuntime, RedisRuntime


@pytest.fixture(params=["memory", "redis"])
def runtime(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryRuntime()
    url = request.getfixturevalue("redis_url")
    return RedisRuntime.from_url(url)


def test_lease_is_exclusive_until_released_or_expired(runtime: Any) -> None:
    sid = f"stg_{uuid.uuid4().hex}"
    assert runtime.acquire_lease(sid, "w1", 0.3)
    assert runtime.acquire_lease(sid, "w1", 0.3)  # re-entrant for its owner
    assert not runtime.acquire_lease(sid, "w2", 0.3)
    assert not runtime.renew_lease(sid, "w2", 0.3)
    assert runtime.renew_lease(sid, "w1", 0.3)
    runtime.release_lease(sid, "w2")  # not the owner: no effect
    assert not runtime.acquire_lease(sid, "w2", 0.3)
    runtime.release_lease(sid, "w1")
    assert runtime.acquire_lease(sid, "w2", 0.3)
    time.sleep(0.45)
    assert runtime.acquire_lease(sid, "w3", 0.3)  # w2 died: its lease expired


def test_done_marks_are_per_regeneration(runtime: Any) -> None:
    sid = f"stg_{uuid.uuid4().hex}"
    assert not runtime.is_done(sid)
    runtime.mark_done(sid)
    assert runtime.is_done(sid) and not runtime.is_done(sid, 1)
    assert not runtime.is_done(sid, 0, 2)  # a later attempt (a retried job runs the stage again) is not done


class _App:
    def __init__(self, settings: Settings) -> None:
        self.atelier_settings = settings
        self.sent: list[str] = []

    def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
        self.sent.append(name)


def _payload(stage_id: str) -> dict[str, Any]:
    return {"job_id": "job_x", "tenant_id": "ten_x", "stage_id": stage_id, "stage": "plan.ad_prompts", "kind": "campaign",
            "spec": {}, "key_prefix": "tenants/ten_x/jobs/job_x"}


def test_duplicate_deliveries_do_not_run(tmp_path: Path) -> None:
    app = _App(Settings(home=tmp_path))
    calls: list[int] = []

    def fn(_ctx: Any) -> dict[str, Any]:
        calls.append(1)
        return {"ok": True}

    sid = f"stg_{uuid.uuid4().hex}"
    res = run_stage(app, _payload(sid), fn)  # type: ignore[arg-type]
    assert res is not None and res.status == "succeeded"
    # it ended before its started notice was due: the result alone, carrying the start
    assert app.sent == ["atelier.orchestrator.stage_done"]
    assert res.started_at is not None and res.worker
    from atelier_runtime.stage_runner import resources

    runtime = resources(app).runtime  # type: ignore[arg-type]
    runtime.mark_done(sid)
    assert run_stage(app, _payload(sid), fn) is None  # type: ignore[arg-type]
    other = f"stg_{uuid.uuid4().hex}"
    assert runtime.acquire_lease(other, "someone-else", 30)
    assert run_stage(app, _payload(other), fn) is None  # type: ignore[arg-type]
    # the leased copy is not dropped: it is sent again for later (the holder may have died)
    assert len(calls) == 1 and app.sent[1:] == ["atelier.stage.plan.ad_prompts"]


def test_a_stage_still_running_after_the_notice_delay_is_announced_before_its_result(tmp_path: Path) -> None:
    app = _App(Settings(home=tmp_path, started_notice_after_s=0.01))

    def fn(_ctx: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while "atelier.orchestrator.stage_started" not in app.sent:  # runs until the notice has gone out
            assert time.monotonic() < deadline, "no started notice"
            time.sleep(0.005)
        return {"ok": True}

    res = run_stage(app, _payload(f"stg_{uuid.uuid4().hex}"), fn)  # type: ignore[arg-type]
    assert res is not None and res.status == "succeeded"
    assert app.sent == ["atelier.orchestrator.stage_started", "atelier.orchestrator.stage_done"]
    immediate = _App(Settings(home=tmp_path, started_notice_after_s=0))  # 0: always at once
    run_stage(immediate, _payload(f"stg_{uuid.uuid4().hex}"), lambda _ctx: {"ok": True})  # type: ignore[arg-type]
    assert immediate.sent == ["atelier.orchestrator.stage_started", "atelier.orchestrator.stage_done"]


def test_progress_is_reported_once_the_started_notice_is_due_and_carries_the_start(tmp_path: Path) -> None:
    from atelier_contracts.tasks import StageStarted, StageTask
    from atelier_runtime.stage_runner import StageContext, WorkerResources, _StartedNotice

    class Sent(_App):
        args: list[Any]

        def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
            self.sent.append(name)
            self.args.append((args or [None])[0])

    def context(delay: float) -> tuple[StageContext, Sent]:
        settings = Settings(home=tmp_path, started_notice_after_s=delay)
        app = Sent(settings)
        app.args = []
        task = StageTask.model_validate(_payload(f"stg_{uuid.uuid4().hex}"))
        ctx = StageContext(task, WorkerResources(settings), app)
        ctx.notice = _StartedNotice(app, StageStarted(job_id=task.job_id, stage_id=task.stage_id, attempt=1,
                                                      worker="w", started_at=datetime.now(UTC)), delay)
        return ctx, app

    ctx, app = context(3600.0)  # a stage younger than its notice delay reports nothing: its result says it all
    for step in range(1, 5):
        ctx.progress(step, 4)
    assert app.sent == []
    ctx._begun -= 3601  # the same stage, an hour in: the report is due and carries the start (no notice went out)
    ctx.progress(2, 4)
    assert app.sent == ["atelier.orchestrator.stage_progress"]
    assert app.args[0]["step"] == 2 and app.args[0]["started"]["stage_id"] == ctx.task.stage_id
    ctx._last_progress -= 1
    ctx.progress(4, 4)  # the last step never: the result follows at once
    assert len(app.sent) == 1
    ctx, app = context(0.0)  # 0: from the first step, as before the notice
    ctx.progress(1, 4)
    assert app.sent == ["atelier.orchestrator.stage_progress"] and app.args[0]["started"] is not None


def test_a_stage_reads_its_declared_inputs_and_its_parsed_item(tmp_path: Path) -> None:
    from atelier_contracts import items
    from atelier_contracts.errors import StageError
    from atelier_contracts.stage_io import BackgroundInputs, SheetInputs
    from atelier_contracts.tasks import StageTask
    from atelier_runtime.stage_runner import StageContext, WorkerResources

    task = StageTask.model_validate({**_payload("stg_io"), "stage": "gpu.background", "item": "300x250-v1"})
    ctx = StageContext(task, WorkerResources(Settings(home=tmp_path)), _App(Settings(home=tmp_path)))
    assert ctx.parsed_item(items.parse_size_variant) == ("300x250", 1)
    with pytest.raises(TypeError, match="reads BackgroundInputs, not SheetInputs"):
        ctx.inputs(SheetInputs)  # a handler reads the model its catalogue entry declares
    with pytest.raises(StageError, match="plan.ad_layout.plan is missing"):
        ctx.inputs(BackgroundInputs)
    ctx.task.item = "300x250"
    with pytest.raises(StageError, match="<size>-v<variant>") as err:
        ctx.parsed_item(items.parse_size_variant)
    assert err.value.field == "item" and err.value.retryable is False

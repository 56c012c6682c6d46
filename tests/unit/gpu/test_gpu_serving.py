"""Batching compatible requests into one pipeline call, and draining queued stage tasks across Celery tasks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.errors import JobCanceled
from atelier_contracts.keys import job_prefix
from atelier_contracts.tasks import (
    Q_GPU_DIFFUSION,
    Q_ORCHESTRATOR,
    T_STAGE_DONE,
    T_STAGE_STARTED,
    StageTask,
    stage_task_name,
)
from atelier_gpu import serving
from atelier_gpu.registry import ModelRegistry
from atelier_gpu.serving import GenRequest
from atelier_gpu.stages.background import background as background_stage
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources

from .test_gpu_tasks import AD_PLAN, TENANT, AppStub


@pytest.fixture()
def res(tmp_path: Path, models_dir: Path, registry: ModelRegistry) -> WorkerResources:
    resources = WorkerResources(Settings(home=tmp_path, models_dir=models_dir, worker_name="test-gpu",
                                         gpu_max_batch=4))
    resources.extras["atelier_gpu.registry"] = registry
    return resources


def _task(stage: str, item: str, upstream: dict[str, Any], job: str | None = None, **kw: Any) -> StageTask:
    job = job or uuid.uuid4().hex[:12]
    return StageTask(job_id=job, tenant_id=TENANT, stage_id=f"{job}:{stage}:{item}", stage=stage, item=item,
                     kind=kw.pop("kind", "campaign"), spec=kw.pop("spec", {}), upstream=upstream,
                     key_prefix=job_prefix(TENANT, job))


def _t2i(res: WorkerResources, prompt: str, seed: int, size: int = 64, job: str | None = None) -> GenRequest:
    ctx = StageContext(_task("gpu.character_sheet", f"c{seed}", {}, job=job), res, AppStub())
    return GenRequest(ctx=ctx, recipe="text_to_image", model="sdxl-tiny", width=size, height=size, steps=2,
                      guidance=5.0, seed=seed, prompt=prompt)


def test_compatible_requests_share_one_call_and_split_its_gpu_seconds(res, registry):
    reqs = [_t2i(res, "a red bottle", 1), _t2i(res, "a green tree", 2), _t2i(res, "a cat", 3),
            _t2i(res, "a cat", 4, size=48)]
    outcomes = serving.execute(registry, reqs, max_batch=4)
    assert [outcomes[id(r)].info["batch_size"] for r in reqs] == [3, 3, 3, 1]
    assert all(outcomes[id(r)].image.size == (r.width, r.height) for r in reqs)
    shares = [r.ctx.gpu_seconds for r in reqs[:3]]
    assert min(shares) > 0 and max(shares) == pytest.approx(min(shares))
    solo = serving.execute(registry, [_t2i(res, "a green tree", 2)], max_batch=4)
    solo_image = next(iter(solo.values())).image
    assert np.abs(np.asarray(solo_image).astype(int) - np.asarray(outcomes[id(reqs[1])].image)).max() <= 1


def test_max_batch_splits_a_group(res, registry):
    reqs = [_t2i(res, "a cat", s) for s in range(3)]
    outcomes = serving.execute(registry, reqs, max_batch=2)
    assert [outcomes[id(r)].info["batch_size"] for r in reqs] == [2, 2, 1]


def test_cancelling_one_job_reruns_the_rest_of_its_group(res, registry):
    reqs = [_t2i(res, "a cat", 1), _t2i(res, "a cat", 2), _t2i(res, "a cat", 3)]
    res.runtime.cancel(reqs[1].ctx.task.job_id)
    outcomes = serving.execute(registry, reqs, max_batch=4)
    assert isinstance(outcomes[id(reqs[1])].error, JobCanceled)
    assert outcomes[id(reqs[0])].error is None and outcomes[id(reqs[0])].info["batch_size"] == 2
    assert outcomes[id(reqs[2])].image.size == (64, 64)


def test_batch_key_ignores_seed_and_t2i_prompt_only():
    ctx = None
    a = GenRequest(ctx=ctx, recipe="layout", model="m", width=64, height=64, steps=2, guidance=5.0, seed=1,
                   prompt="p", params={"plan": {"a": 1}})
    assert a.batch_key() == GenRequest(**{**a.__dict__, "seed": 9}).batch_key()
    assert a.batch_key() != GenRequest(**{**a.__dict__, "prompt": "q"}).batch_key()
    assert a.batch_key() != GenRequest(**{**a.__dict__, "params": {"plan": {"a": 2}}}).batch_key()
    t = GenRequest(**{**a.__dict__, "recipe": "text_to_image"})
    assert t.batch_key() == GenRequest(**{**t.__dict__, "prompt": "q"}).batch_key()


def test_a_worker_drains_compatible_queued_tasks_into_one_call(tmp_path, models_dir, registry):
    settings = Settings(home=tmp_path, models_dir=models_dir, worker_name="drainer", gpu_max_batch=4)
    app = make_celery(settings)
    res = WorkerResources(settings)
    res.extras["atelier_gpu.registry"] = registry
    app.atelier_resources = res
    with app.connection_for_write() as conn:
        for q in (Q_GPU_DIFFUSION, Q_ORCHESTRATOR):
            conn.default_channel.queue_declare(q)
            conn.default_channel.queue_purge(q)
    upstream = {"plan.ad_layout": {"plan": AD_PLAN}}
    job = uuid.uuid4().hex[:12]
    queued = [_task("gpu.background", f"1080x1080-v{v}", upstream, job=job) for v in (1, 2, 3)]
    for t in queued:
        app.send_task(stage_task_name("gpu.background"), args=[t.model_dump(mode="json")])
    scene = _task("gpu.scene", "s0", {}, job=job, kind="story")
    app.send_task(stage_task_name("gpu.scene"), args=[scene.model_dump(mode="json")])
    lead = StageContext(_task("gpu.background", "1080x1080-v0", upstream, job=job), res, app)

    out = background_stage.stage_fn(lead)

    assert out["batch_size"] == 4 and out["recipe"] == "layout"
    with app.connection_for_read() as conn:
        ch = conn.default_channel
        sent = []
        while (msg := ch.basic_get(Q_ORCHESTRATOR, no_ack=True)) is not None:
            sent.append((msg.headers["task"], msg.decode()[0][0]))
        head = ch.basic_get(Q_GPU_DIFFUSION, no_ack=True)
        assert head is not None and head.headers["task"] == stage_task_name("gpu.scene")  # left at the head
        assert ch.basic_get(Q_GPU_DIFFUSION, no_ack=True) is None
    started = {p["stage_id"] for n, p in sent if n == T_STAGE_STARTED}
    done = {p["stage_id"]: p for n, p in sent if n == T_STAGE_DONE}
    assert started == {t.stage_id for t in queued} == set(done)
    seeds = {out["seed"]}
    for t in queued:
        result = done[t.stage_id]
        assert result["status"] == "succeeded", result["error"]
        assert result["output"]["batch_size"] == 4 and result["gpu_seconds"] > 0
        assert result["output"]["background_key"] == f"{t.key_prefix}/gpu.background/{t.item}.png"
        assert res.store.get(result["output"]["background_key"])[:4] == b"\x89PNG"
        seeds.add(result["output"]["seed"])
    assert len(seeds) == 4  # one seed per image


def test_drained_task_with_bad_input_fails_alone(tmp_path, models_dir, registry):
    settings = Settings(home=tmp_path, models_dir=models_dir, worker_name="drainer", gpu_max_batch=3)
    app = make_celery(settings)
    res = WorkerResources(settings)
    res.extras["atelier_gpu.registry"] = registry
    with app.connection_for_write() as conn:
        for q in (Q_GPU_DIFFUSION, Q_ORCHESTRATOR):
            conn.default_channel.queue_declare(q)
            conn.default_channel.queue_purge(q)
    upstream = {"plan.ad_layout": {"plan": AD_PLAN}}
    bad = _task("gpu.background", "720x720-v0", upstream)
    app.send_task(stage_task_name("gpu.background"), args=[bad.model_dump(mode="json")])
    lead = StageContext(_task("gpu.background", "1080x1080-v0", upstream), res, app)
    out = background_stage.stage_fn(lead)
    assert out["batch_size"] == 1
    with app.connection_for_read() as conn:
        msgs = []
        while (m := conn.default_channel.basic_get(Q_ORCHESTRATOR, no_ack=True)) is not None:
            msgs.append((m.headers["task"], m.decode()[0][0]))
    [result] = [p for n, p in msgs if n == T_STAGE_DONE]
    assert result["status"] == "failed" and result["error"]["retryable"] is False
    assert "no variant for size '720x720'" in result["error"]["message"]


def test_two_threads_on_one_warm_pipeline_take_turns(res, registry):
    """The embedded worker runs GPU tasks on a thread pool: calls on a shared pipeline must not interleave
    (its scheduler and attention processors are shared state)."""
    import threading

    errors: list[BaseException] = []
    outs: list[dict[int, Any]] = []

    def work(seed: int) -> None:
        try:
            reqs = [_t2i(res, "a cat", seed)]
            layout_req = GenRequest(ctx=reqs[0].ctx, recipe="layout", model="sdxl-tiny", width=64, height=64, steps=3,
                                    guidance=5.0, seed=seed, prompt="a kitchen",
                                    params={"plan": {**AD_PLAN["variants"][0]["layout"], "width": 64, "height": 64}})
            outs.append(serving.execute(registry, [*reqs, layout_req], max_batch=4))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert all(o.error is None for out in outs for o in out.values()) and len(outs) == 2
